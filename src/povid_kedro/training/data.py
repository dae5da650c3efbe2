"""Preference pairs → checked token ids, processed images, and batches for few forwards.

Each pair is rendered with the processor's chat template exactly as generation renders a prompt
(:func:`povid_kedro.modeling.generate.render_prompt`), then checked before any training: the
template renders the prompt as a prefix of prompt+answer, the image tokens survive ``max_length``,
the answers are non-empty and differ. A failing pair is reported as an :class:`InvalidPair` (id,
reason code, message) and never trained on; if no pair is left the encoder raises and says why.

:class:`PairCollator` lays a micro-batch out so that a step needs as few forwards as possible:
rows ``[chosen; rejected]`` (stage 1) or ``[chosen; rejected; noisy_rejected]`` (stage 2,
``generated``) share one clean-image forward, and the noisy image of each sample comes along for the
one extra teacher-forcing forward of stage 2 (``teacher_forced``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import pandas as pd
import torch
from PIL import Image

from povid_kedro.modeling.generate import render_prompt, to_messages
from povid_kedro.schema import IGNORE_INDEX
from povid_kedro.training.noise import GENERATED, TEACHER_FORCED, NoiseConfig, noisy_image

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "image", "prompt", "chosen", "rejected")
NOISY_REJECTED = "noisy_rejected"

# Which DPO branches a batch feeds: stage 1 (y+ vs y_h-, clean image) or stage 2 with its
# noise branch built one of the two ways (``NoiseConfig.mode``).
STAGE1: Final = "stage1"
Branches = Literal["stage1", "teacher_forced", "generated"]
BRANCHES: tuple[Branches, ...] = (STAGE1, TEACHER_FORCED, GENERATED)

# Why a pair is not trained on (``InvalidPair.reason``), so that reports can count them.
PAIR_DUPLICATE_ID = "duplicate_id"
PAIR_NO_IMAGE = "no_image"
PAIR_IMAGE_UNREADABLE = "image_unreadable"
PAIR_IMAGE_TOKENS = "image_tokens"
PAIR_EMPTY_PROMPT = "empty_prompt"
PAIR_EMPTY_ANSWER = "empty_answer"
PAIR_IDENTICAL = "identical_answers"
PAIR_TEMPLATE = "template_not_prefix"
PAIR_PROMPT_TOO_LONG = "prompt_too_long"
PAIR_IDENTICAL_AFTER_CUT = "identical_after_cut"


class InvalidPair(NamedTuple):
    """A pair left out of training: its id, a reason code (``PAIR_*``) and a message."""

    id: str
    reason: str
    message: str


ImageLoader = Callable[[str], Image.Image]
"""``load_image(relative_path) -> PIL.Image``."""


@dataclass
class EncodedPairs:
    """Checked, tokenized preference pairs (answers cut so that prompt + answer fit ``max_length``).

    Attributes:
        ids: Pair ids.
        images: Image path of each pair (as given to ``load_image``).
        prompt_ids: Prompt token ids, image placeholder expanded into image tokens.
        chosen_ids: Answer token ids of ``y+`` (end-of-turn token included).
        rejected_ids: Answer token ids of ``y_h-``.
        noisy_rejected_ids: Answer token ids of a generated ``y_n-``, when asked for.
        invalid: An :class:`InvalidPair` for every pair that was dropped.
        n_truncated: Valid pairs with at least one answer cut at ``max_length``.
    """

    ids: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    noisy_rejected_ids: list[list[int]] | None = None
    invalid: list[InvalidPair] = field(default_factory=list)
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: Sequence[int]) -> EncodedPairs:
        """The pairs at positions ``keep`` (``invalid`` and ``n_truncated`` carried over)."""
        return EncodedPairs(
            ids=[self.ids[i] for i in keep],
            images=[self.images[i] for i in keep],
            prompt_ids=[self.prompt_ids[i] for i in keep],
            chosen_ids=[self.chosen_ids[i] for i in keep],
            rejected_ids=[self.rejected_ids[i] for i in keep],
            noisy_rejected_ids=(
                None
                if self.noisy_rejected_ids is None
                else [self.noisy_rejected_ids[i] for i in keep]
            ),
            invalid=list(self.invalid),
            n_truncated=self.n_truncated,
        )


def _text(value: Any) -> str | None:
    """An answer as text: a string or the text of trl-style messages; ``None`` if absent."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence | Mapping) or hasattr(value, "tolist"):
        messages = value.tolist() if hasattr(value, "tolist") else value
        messages = [messages] if isinstance(messages, Mapping) else list(messages)
        parts: list[str] = []
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                parts.append(content)
            elif content is not None:
                parts.extend(
                    p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("text")
                )
        return "".join(parts)
    return str(value)


class ImageTokenCounter:
    """How many image tokens the processor expands one image into.

    LLaVA-1.5's processor resizes every image to one shape, so one count serves all; LLaVA-NeXT's
    tiles an image into a grid chosen by its size and aspect ratio, so the count is per size.
    Counts come from the processor itself (a blank image of the size), cached per size.

    Args:
        processor: A processor with ``image_token`` and ``image_token_id``.
    """

    # A square, a wide and a tall image: one count for all three means the count is fixed.
    _PROBES = ((224, 224), (448, 224), (224, 448))

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._by_size: dict[tuple[int, int], int] = {}
        counts = {self.count(size) for size in self._PROBES}
        self.fixed: int | None = counts.pop() if len(counts) == 1 else None

    def count(self, size: tuple[int, int]) -> int:
        """Image tokens for an image of ``size`` (width, height)."""
        if size not in self._by_size:
            probe = Image.new("RGB", size, (127, 127, 127))
            out = self.processor(
                text=[self.processor.image_token], images=[probe], add_special_tokens=False
            )
            image_id = self.processor.image_token_id
            self._by_size[size] = sum(1 for t in out["input_ids"][0] if t == image_id)
        return self._by_size[size]


def count_image_tokens(processor: Any) -> int:
    """How many image tokens the processor expands one image placeholder into (processors with
    one count for every image size; see :class:`ImageTokenCounter` for the others)."""
    counter = ImageTokenCounter(processor)
    if counter.fixed is None:
        raise ValueError("this processor's image-token count depends on the image's size")
    return counter.fixed


class _Invalid(Exception):
    """A pair that fails a check: its reason code and a message for the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def encode_pairs(
    processor: Any,
    pairs: pd.DataFrame,
    max_length: int,
    *,
    with_noisy_rejected: bool = False,
    image_size: Callable[[str], tuple[int, int]] | None = None,
) -> EncodedPairs:
    """Check and tokenize preference pairs; report each bad pair by id instead of training on it.

    Checks, per pair: id unique; prompt, chosen and rejected present and non-empty (and
    ``noisy_rejected`` when asked for); chosen differs from each rejection (also after cutting to
    ``max_length``); the chat template renders the prompt as a prefix of prompt+answer; the prompt
    holds exactly one image's tokens and leaves room for at least one answer token.

    Args:
        processor: A LLaVA-style processor with a chat template and an image token.
        pairs: Columns ``id, image, prompt, chosen, rejected`` (and ``noisy_rejected`` with
            ``with_noisy_rejected``); extra columns are ignored.
        max_length: Longest sequence, image tokens included.
        with_noisy_rejected: Also encode the generated image-side rejection ``noisy_rejected``.
        image_size: ``(width, height)`` of an image by its path; needed where the image-token
            count depends on the size (LLaVA-NeXT), e.g. :meth:`ImageBank.size`.

    Returns:
        The valid pairs, encoded, and ``invalid``: an :class:`InvalidPair` for each other one.

    Raises:
        ValueError: If columns are missing.
    """
    answer_columns = ["chosen", "rejected"] + ([NOISY_REJECTED] if with_noisy_rejected else [])
    _require_columns(pairs, [*REQUIRED_COLUMNS, *answer_columns[2:]])
    encoder = _PairEncoder(processor, max_length, answer_columns, image_size)
    out = EncodedPairs(noisy_rejected_ids=[] if with_noisy_rejected else None)
    seen: set[str] = set()
    for record in pairs.to_dict("records"):
        pair_id = str(record["id"])
        try:
            if pair_id in seen:
                raise _Invalid(
                    PAIR_DUPLICATE_ID, "duplicate id (noise seed and cache entry would collide)"
                )
            seen.add(pair_id)
            image, prompt_ids, cut, truncated = encoder.encode(record)
        except _Invalid as bad:
            out.invalid.append(InvalidPair(pair_id, bad.reason, bad.message))
            continue
        out.n_truncated += truncated
        out.ids.append(pair_id)
        out.images.append(image)
        out.prompt_ids.append(prompt_ids)
        out.chosen_ids.append(cut["chosen"])
        out.rejected_ids.append(cut["rejected"])
        if out.noisy_rejected_ids is not None:
            out.noisy_rejected_ids.append(cut[NOISY_REJECTED])
    if out.n_truncated:
        logger.warning(
            "%d of %d pairs had an answer cut at max_length=%d",
            out.n_truncated,
            len(out),
            max_length,
        )
    return out


def _require_columns(pairs: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in pairs.columns]
    if missing:
        raise ValueError(
            f"preference pairs lack columns {missing}"
            + (
                f"; '{NOISY_REJECTED}' holds the answers generated under the noisy image "
                "(noise_trigger in 'generated' mode)"
                if NOISY_REJECTED in missing
                else ""
            )
        )


class _PairEncoder:
    """The checks and the tokenization of one pair, in the order :func:`encode_pairs` lists."""

    def __init__(
        self,
        processor: Any,
        max_length: int,
        answer_columns: list[str],
        image_size: Callable[[str], tuple[int, int]] | None,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.counter = ImageTokenCounter(processor)
        if self.counter.fixed is None and image_size is None:
            raise ValueError(
                "this processor's image-token count depends on the image's size (LLaVA-NeXT "
                "tiling); encode_pairs needs image_size=..."
            )
        self.image_size = image_size
        self.max_length = max_length
        self.answer_columns = answer_columns

    def _image_tokens(self, image: str) -> int:
        if self.counter.fixed is not None:
            return self.counter.fixed
        assert self.image_size is not None
        try:
            size = self.image_size(image)
        except Exception as err:  # a broken image must name the pair, whatever the loader raises
            raise _Invalid(
                PAIR_IMAGE_UNREADABLE,
                f"image {image!r} cannot be loaded: {type(err).__name__}: {err}",
            ) from err
        return self.counter.count(size)

    def encode(
        self, record: Mapping[str, Any]
    ) -> tuple[str, list[int], dict[str, list[int]], bool]:
        """``(image, prompt ids, answer ids cut to fit, whether any was cut)``; raises
        :class:`_Invalid`."""
        image = self._image(record)
        prompt = self._prompt(record)
        answers = self._answers(record)
        prompt_text, answer_texts = self._render(prompt, answers)
        prompt_ids = self._prompt_ids(prompt_text, self._image_tokens(image))
        room = self.max_length - len(prompt_ids)
        if room < 1:
            raise _Invalid(
                PAIR_PROMPT_TOO_LONG,
                f"prompt is {len(prompt_ids)} tokens (image tokens included); "
                f"max_length={self.max_length} leaves no room for the answer",
            )
        encoded = {
            c: self.tokenizer(text, add_special_tokens=False)["input_ids"]
            for c, text in answer_texts.items()
        }
        cut = {c: ids[:room] for c, ids in encoded.items()}
        if same := [c for c in self.answer_columns[1:] if cut[c] == cut["chosen"]]:
            raise _Invalid(
                PAIR_IDENTICAL_AFTER_CUT,
                f"chosen and {same[0]} are identical after cutting to max_length",
            )
        return image, prompt_ids, cut, any(len(ids) > room for ids in encoded.values())

    @staticmethod
    def _image(record: Mapping[str, Any]) -> str:
        image = record.get("image")
        image = os.fspath(image) if isinstance(image, os.PathLike) else image
        if not isinstance(image, str) or not image:
            raise _Invalid(PAIR_NO_IMAGE, "no image path")
        return image

    def _prompt(self, record: Mapping[str, Any]) -> Any:
        prompt, token = record["prompt"], self.image_token
        if isinstance(prompt, str) and prompt.count(token) > 1:
            raise _Invalid(PAIR_IMAGE_TOKENS, f"prompt has {prompt.count(token)} {token}")
        if _text(prompt) is None or (
            isinstance(prompt, str) and not prompt.replace(token, "").strip()
        ):
            raise _Invalid(PAIR_EMPTY_PROMPT, "empty prompt")
        if not isinstance(prompt, str):  # trl conversational messages
            prompt = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)
        return prompt

    def _answers(self, record: Mapping[str, Any]) -> dict[str, str]:
        answers = {c: _text(record.get(c)) for c in self.answer_columns}
        if empty := [c for c, text in answers.items() if not text or not text.strip()]:
            raise _Invalid(PAIR_EMPTY_ANSWER, f"empty {', '.join(empty)}")
        texts = {c: str(text) for c, text in answers.items()}
        chosen = texts["chosen"].strip()
        if same := [c for c in self.answer_columns[1:] if texts[c].strip() == chosen]:
            raise _Invalid(PAIR_IDENTICAL, f"chosen and {same[0]} are identical")
        return texts

    def _render(self, prompt: Any, answers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The prompt as generation renders it, and each answer as the text that follows it."""
        messages = to_messages(prompt, self.image_token)
        prompt_text = render_prompt(self.processor, prompt)
        answer_texts: dict[str, str] = {}
        for column, answer in answers.items():
            full_text = self.processor.apply_chat_template(
                [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                tokenize=False,
            )
            if not full_text.startswith(prompt_text):
                raise _Invalid(
                    PAIR_TEMPLATE,
                    "chat template does not render the prompt as a prefix of prompt+answer",
                )
            answer_texts[column] = full_text[len(prompt_text) :]
        return prompt_text, answer_texts

    def _prompt_ids(self, prompt_text: str, n_image_tokens: int) -> list[int]:
        # Templates that write the BOS themselves (ours) must not get a second one; llava-hf's
        # leaves it to the tokenizer. Same rule as generation.
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompt_text.startswith(bos))
        expanded = prompt_text.replace(self.image_token, self.image_token * n_image_tokens)
        prompt_ids = self.tokenizer(expanded, add_special_tokens=add_special)["input_ids"]
        n_found = sum(1 for t in prompt_ids if t == self.processor.image_token_id)
        if n_found != n_image_tokens:
            raise _Invalid(
                PAIR_IMAGE_TOKENS,
                f"prompt has {n_found} image tokens, expected {n_image_tokens}",
            )
        return prompt_ids


def log_invalid_pairs(invalid: Sequence[InvalidPair], where: str, shown: int = 20) -> None:
    """Log the pairs left out of training once: a count per reason, then the first few."""
    if not invalid:
        return
    counts = Counter(pair.reason for pair in invalid)
    logger.warning(
        "%s: %d pairs not trained on (%s)",
        where,
        len(invalid),
        ", ".join(f"{reason} {n}" for reason, n in counts.most_common()),
    )
    for pair in invalid[:shown]:
        logger.warning("%s: pair %s not trained on: %s", where, pair.id, pair.message)
    if len(invalid) > shown:
        logger.warning("%s: ... and %d more", where, len(invalid) - shown)


def require_pairs(encoded: EncodedPairs, n_given: int, what: str = "training") -> None:
    """Raise ``ValueError`` naming why when no valid pair is left.

    Args:
        encoded: The encoded pairs.
        n_given: Pairs before checking.
        what: Which split, for the message.
    """
    if n_given == 0:
        raise ValueError(f"no {what} preference pairs were given (is the 'split' column right?)")
    if len(encoded) == 0:
        reasons = sorted({pair.message for pair in encoded.invalid})
        raise ValueError(
            f"all {n_given} {what} preference pairs are invalid; reasons: {reasons[:5]}"
            + (f" (+{len(reasons) - 5} more)" if len(reasons) > 5 else "")
        )


ImageInputs = dict[str, torch.Tensor]
"""What the image processor makes of images, batched: ``pixel_values`` and, for LLaVA-NeXT,
``image_sizes`` (its ``pixel_values`` are ``(n, crops, 3, H, W)``, zero-padded to the most
crops)."""

NOISY_PREFIX = "noisy_"
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "labels", "pair_index"})


def _pad_to(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``tensor`` with zero rows appended along dim 0 up to ``n`` (LLaVA-NeXT's crop padding:
    the model reads each image's real crop count from ``image_sizes``)."""
    if tensor.shape[0] == n:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(n - tensor.shape[0], *tensor.shape[1:])])


def stack_images(items: Sequence[Mapping[str, torch.Tensor]]) -> ImageInputs:
    """One image's processor outputs each → a batch (crop counts padded to the largest)."""
    out: ImageInputs = {}
    for key in items[0]:
        tensors = [item[key] for item in items]
        if len({t.shape for t in tensors}) > 1:
            n = max(t.shape[0] for t in tensors)
            tensors = [_pad_to(t, n) for t in tensors]
        out[key] = torch.stack(tensors)
    return out


def concat_images(*parts: Mapping[str, torch.Tensor]) -> ImageInputs:
    """Batches of image inputs → one batch, rows in order (crop counts padded alike)."""
    out: ImageInputs = {}
    for key in parts[0]:
        tensors = [part[key] for part in parts]
        if tensors[0].dim() > 2 and len({t.shape[1] for t in tensors}) > 1:
            n = max(t.shape[1] for t in tensors)
            tensors = [_pad_to(t.transpose(0, 1), n).transpose(0, 1) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


def repeat_images(images: Mapping[str, torch.Tensor], times: int) -> ImageInputs:
    """Each row of every image input repeated ``times`` over, as blocks (a view-free repeat)."""
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in images.items()}


def image_inputs(batch: Mapping[str, torch.Tensor], prefix: str = "") -> ImageInputs:
    """The clean image inputs of a :class:`PairCollator` batch, or the noisy ones
    (``prefix=NOISY_PREFIX``), keyed as the model's forward takes them."""
    if prefix:
        return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
    return {
        k: v
        for k, v in batch.items()
        if k not in _TEXT_KEYS and not k.startswith(("ref_", NOISY_PREFIX))
    }


class ImageBank:
    """Processed pixel values of the pairs' clean and noisy images, optionally kept in memory.

    Clean images are processed once per path, noisy ones once per pair id (each pair's noise is
    seeded by its id, see :func:`povid_kedro.training.noise.noisy_image`, so it is the same every
    epoch and every run). Each image is processed on its own, so its tensors do not depend on
    the batch it first came in (LLaVA-NeXT pads crops to the batch's largest count).

    Args:
        processor: The processor (its ``image_processor`` is used).
        load_image: Loads an image by its path.
        noise: Noise settings (needed for noisy images only).
        cache: Keep processed tensors in memory after first use.
    """

    def __init__(
        self,
        processor: Any,
        load_image: ImageLoader,
        noise: NoiseConfig | None = None,
        cache: bool = True,
    ) -> None:
        self.image_processor = processor.image_processor
        self.load_image = load_image
        self.noise = noise
        self.cache = cache
        self._clean: dict[str, dict[str, torch.Tensor]] = {}
        self._noisy: dict[str, dict[str, torch.Tensor]] = {}

    def _open(self, path: str) -> Image.Image:
        image = self.load_image(path)
        return image if image.mode == "RGB" else image.convert("RGB")

    def size(self, path: str) -> tuple[int, int]:
        """``(width, height)`` of the image at ``path`` (for per-size image-token counts)."""
        return self.load_image(path).size

    def _process(self, image: Image.Image) -> dict[str, torch.Tensor]:
        out = self.image_processor(images=[image], return_tensors="pt")
        if "image_grid_thw" in out:
            raise ValueError(
                f"{type(self.image_processor).__name__} flattens images into patch rows "
                "(Qwen2-VL's layout); POVID's trainer batches one tensor row per image "
                "(LLaVA-1.5, LLaVA-NeXT): README, 'Model families'"
            )
        return {k: v[0] for k, v in out.items() if isinstance(v, torch.Tensor)}

    def check(self, encoded: EncodedPairs) -> list[InvalidPair]:
        """Open every image once (processing and caching it when caching); report failures by id.

        Args:
            encoded: The pairs.

        Returns:
            The pairs whose image cannot be loaded.
        """
        failed: dict[str, str] = {}
        for path in dict.fromkeys(encoded.images):
            try:
                image = self._open(path)
                if self.cache and path not in self._clean:
                    self._clean[path] = self._process(image)
            except (
                Exception
            ) as err:  # a broken image must name the pair, whatever the loader raises
                failed[path] = f"image {path!r} cannot be loaded: {type(err).__name__}: {err}"
        return [
            InvalidPair(i, PAIR_IMAGE_UNREADABLE, failed[p])
            for i, p in zip(encoded.ids, encoded.images, strict=True)
            if p in failed
        ]

    def clean(self, paths: Sequence[str]) -> ImageInputs:
        """The processed clean images, one row each (``pixel_values`` ``(n, 3, H, W)`` for
        LLaVA-1.5)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._clean]
        fresh = {p: self._process(self._open(p)) for p in todo}
        if self.cache:
            self._clean.update(fresh)
        return stack_images([self._clean[p] if p in self._clean else fresh[p] for p in paths])

    def noisy(self, ids: Sequence[str], paths: Sequence[str]) -> ImageInputs:
        """The processed noisy images, one row each, noise seeded per pair id."""
        if self.noise is None:
            raise ValueError("noisy images need a NoiseConfig")
        noise = self.noise
        fresh = {
            i: self._process(noisy_image(self._open(p), i, noise))
            for i, p in zip(ids, paths, strict=True)
            if i not in self._noisy
        }
        if self.cache:
            self._noisy.update(fresh)
        return stack_images([self._noisy[i] if i in self._noisy else fresh[i] for i in ids])


class PairCollator:
    """Batches pair indices into the inputs of one POVID step.

    Rows of ``input_ids`` are laid out in blocks of ``B`` (the pairs of the micro-batch):
    ``[chosen; rejected]`` (``branches="stage1"`` and ``"teacher_forced"``) or
    ``[chosen; rejected; noisy_rejected]`` (``"generated"``), right-padded to one width, so every
    block goes through the model in one forward. ``pixel_values`` holds each pair's clean image once
    (``(B, 3, H, W)`` for LLaVA-1.5; with the processor's other image inputs, e.g. LLaVA-NeXT's
    ``image_sizes``; the trainer repeats them per block); ``noisy_pixel_values`` (and
    ``noisy_<input>``) hold the noisy image for the ``teacher_forced`` forward of the chosen
    rows. When a reference cache is
    set, its values for the micro-batch come along as ``ref_<name>`` ``(B,)`` tensors.

    Args:
        pairs: The encoded pairs.
        bank: Their images.
        pad_token_id: Padding id (masked by the attention mask and the labels).
        branches: ``"stage1"``, ``"teacher_forced"`` or ``"generated"``.
    """

    def __init__(
        self,
        pairs: EncodedPairs,
        bank: ImageBank,
        pad_token_id: int,
        branches: Branches = STAGE1,
    ) -> None:
        if branches not in BRANCHES:
            raise ValueError(f"unknown branches {branches!r}")
        if branches == GENERATED and pairs.noisy_rejected_ids is None:
            raise ValueError("branches='generated' needs pairs encoded with noisy_rejected")
        self.pairs = pairs
        self.bank = bank
        self.pad_token_id = pad_token_id
        self.branches = branches
        self.reference: dict[str, torch.Tensor] | None = None

    @property
    def n_blocks(self) -> int:
        """Row blocks per micro-batch (2 or 3)."""
        return 3 if self.branches == GENERATED else 2

    def __call__(self, examples: Sequence[Mapping[str, Any] | int]) -> dict[str, torch.Tensor]:
        """Build the batch for ``examples`` (the trainer's ``{"pair": i}`` rows, or ints)."""
        index = [int(e["pair"]) if isinstance(e, Mapping) else int(e) for e in examples]
        p = self.pairs
        answers = [p.chosen_ids, p.rejected_ids]
        if self.branches == GENERATED:
            answers.append(p.noisy_rejected_ids)  # type: ignore[arg-type]
        rows = [(p.prompt_ids[i], block[i]) for block in answers for i in index]
        width = max(len(prompt) + len(answer) for prompt, answer in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (prompt, answer) in enumerate(rows):
            n_prompt, n = len(prompt), len(prompt) + len(answer)
            input_ids[r, :n] = torch.tensor(prompt + answer)
            labels[r, n_prompt:n] = torch.tensor(answer)
            attention_mask[r, :n] = 1
        paths = [p.images[i] for i in index]
        batch = {
            "input_ids": input_ids,  # (n_blocks·B, T)
            "attention_mask": attention_mask,  # (n_blocks·B, T)
            "labels": labels,  # (n_blocks·B, T), -100 off-answer
            "pair_index": torch.tensor(index, dtype=torch.long),  # (B,)
            **self.bank.clean(paths),  # pixel_values (B, 3, H, W) for LLaVA-1.5
        }
        if self.branches == TEACHER_FORCED:
            noisy = self.bank.noisy([p.ids[i] for i in index], paths)
            batch.update({NOISY_PREFIX + k: v for k, v in noisy.items()})
        if self.reference is not None:
            for name, values in self.reference.items():
                batch[f"ref_{name}"] = values[index]  # (B,)
        return batch
