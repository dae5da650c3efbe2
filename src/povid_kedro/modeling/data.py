"""Supervised fine-tuning data: (image, prompt, answer) rows → token ids with answer-only labels.

Rows are rendered with the processor's chat template (the same one generation uses), so the model
is trained on exactly the context it later sees. Each distinct image is run through the image
processor once and kept as a tensor; text is tokenized once. The collator then only pads.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from povid_kedro.modeling.generate import Message, Prompt, to_messages
from povid_kedro.schema import IGNORE_INDEX, IMAGE_TOKEN

logger = logging.getLogger(__name__)


@dataclass
class SFTRow:
    """One supervised example.

    Attributes:
        image: The image, or ``None`` for a text-only row (language-model warm-up).
        prompt: The user's turn (``"<image>\\n..."`` or chat messages); ``None`` for text-only rows,
            where the whole ``answer`` is the training text.
        answer: The target text; the loss is computed on its tokens (and the end-of-sequence).
        weight: Loss weight of the row's tokens (e.g. per task type; 1 is plain SFT).
        task: The row's task type, for per-task batch composition (``TrainConfig.task_batch``).
        history: Earlier ``(question, answer)`` turns of the same conversation, before
            ``prompt`` (which then carries the image placeholder in its first question); they
            are trained in the same sequence, every answer a target, as LLaVA trains multi-turn
            conversations: the image tokens are paid once instead of once per turn.
    """

    image: Image.Image | None
    prompt: Prompt | None
    answer: str
    weight: float = 1.0
    task: str = ""
    history: Sequence[tuple[str, str]] = ()


@dataclass
class SFTFeatures:
    """Tokenized rows and the processed pixels of their distinct images.

    Attributes:
        input_ids: Token ids per row (image placeholders expanded).
        labels: Targets per row, ``-100`` on prompt tokens.
        image_index: Row → index into ``pixel_values``, ``-1`` for text-only rows.
        pixel_values: ``(n_images, 3, H, W)`` processed images.
        weights: Loss weight per row.
    """

    input_ids: list[list[int]]
    labels: list[list[int]]
    image_index: list[int]
    pixel_values: torch.Tensor
    weights: list[float] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def rows_from_llava_instruct(
    records: Iterable[Mapping[str, Any]],
    images: Mapping[str, Image.Image],
    image_token: str = IMAGE_TOKEN,
    pack_turns: bool = False,
) -> list[SFTRow]:
    """Turn LLaVA-Instruct records into SFT rows.

    Args:
        records: ``{id, image, conversations: [{from: human, value}, {from: gpt, value}, ...]}``.
        images: Image file name → image.
        image_token: The placeholder in human turns.
        pack_turns: One row per record, its earlier turns in ``SFTRow.history`` (LLaVA's
            multi-turn sequence); otherwise one row per (human, gpt) turn, later turns given the
            image placeholder too so that every row is trained with its image (as ingest does).

    Returns:
        The rows, in record order.

    Raises:
        KeyError: If a record names an image that is not in ``images``.
    """
    rows: list[SFTRow] = []
    for record in records:
        image = images[record["image"]]
        turns = record["conversations"]
        pairs = [(h["value"], g["value"]) for h, g in zip(turns[0::2], turns[1::2], strict=False)]
        if pack_turns:
            *history, (prompt, answer) = pairs
            rows.append(SFTRow(image=image, prompt=prompt, answer=answer, history=history))
            continue
        for question, answer in pairs:
            prompt = question if image_token in question else f"{image_token}\n{question}"
            rows.append(SFTRow(image=image, prompt=prompt, answer=answer))
    return rows


def _num_image_tokens(processor: Any, image: Image.Image) -> int:
    """How many placeholder tokens the processor expands one ``<image>`` into for this image."""
    out = processor(text=[processor.image_token], images=[image], add_special_tokens=False)
    return sum(1 for t in out["input_ids"][0] if t == processor.image_token_id)


class _ChatRenderer:
    """The processor's chat template, each conversation prefix rendered once while it is in use:
    rows that open with the same turns (one question asked about many images, one prompt before
    many descriptions) share those renders, which were most of the time spent encoding the rows.
    The least recently used renders are dropped past ``size``, so that a corpus of long, unique
    conversations does not keep every prefix of every one of them."""

    def __init__(self, processor: Any, size: int = 4096) -> None:
        self.processor = processor
        self.size = size
        self._rendered: OrderedDict[tuple[Any, ...], str] = OrderedDict()

    def __call__(
        self, key: tuple[Any, ...], messages: list[Message], add_generation_prompt: bool
    ) -> str:
        """Render ``messages``; ``key`` identifies them (and the generation prompt flag)."""
        key = (*key, add_generation_prompt)
        text = self._rendered.get(key)
        if text is None:
            text = self.processor.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            self._rendered[key] = text
            if len(self._rendered) > self.size:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return text


def _segments(processor: Any, row: SFTRow, render: _ChatRenderer) -> list[tuple[str, bool]]:
    """The row's text as ``(piece, trained)`` pieces: prompts untrained, answers (with the
    template's end of turn) trained; text-only rows are one trained piece after the BOS."""
    tokenizer = processor.tokenizer
    if row.prompt is None:
        return [(tokenizer.bos_token or "", False), (row.answer + tokenizer.eos_token, True)]
    image_token = processor.image_token
    turns = [*row.history, (row.prompt, row.answer)]
    messages: list[Message] = []
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    prefix: tuple[Any, ...] = ()
    for i, (question, answer) in enumerate(turns):
        if i == 0:
            messages += to_messages(question, image_token)
        else:
            if not isinstance(question, str):
                raise TypeError(f"turn {i} of a multi-turn row is chat messages; give it as text")
            text = question.replace(image_token, "").strip()
            messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        prefix += (question if isinstance(question, str) else repr(question),)
        prompt_text = render(prefix, messages, True)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        prefix += (answer,)
        full_text = render(prefix, messages, False)
        if not (prompt_text.startswith(rendered) and full_text.startswith(prompt_text)):
            raise ValueError(
                "the chat template does not render each turn as a prefix of the full "
                f"conversation: {prompt_text!r} vs {full_text!r}"
            )
        pieces += [(prompt_text[len(rendered) :], False), (full_text[len(prompt_text) :], True)]
        rendered = full_text
    return pieces


def encode_rows(processor: Any, rows: Sequence[SFTRow], max_length: int) -> SFTFeatures:
    """Tokenize rows once and process each distinct image once.

    Args:
        processor: A LLaVA-style processor whose chat template ends assistant turns with EOS.
        rows: The examples.
        max_length: Longest sequence kept; longer ones are cut at the end (of the answer).

    Returns:
        The features the collator batches.

    Raises:
        ValueError: If the prompt alone (image tokens included) is longer than ``max_length``,
            or the chat template does not render the prompt as a prefix of the conversation.
    """
    tokenizer = processor.tokenizer
    image_token = processor.image_token
    image_ids: dict[int, int] = {}
    distinct: list[Image.Image] = []
    for row in rows:
        if row.image is not None and id(row.image) not in image_ids:
            image_ids[id(row.image)] = len(distinct)
            distinct.append(row.image)
    n_image_tokens = _num_image_tokens(processor, distinct[0]) if distinct else 0
    expanded = image_token * n_image_tokens

    # Rows repeat (one-word VQA answers to the same questions): each is rendered once, and
    # each distinct piece of text is kept once and tokenized once, all of them in one batch.
    render = _ChatRenderer(processor)
    distinct_texts: dict[str, str] = {}
    row_keys: list[tuple[Any, ...]] = []
    segments: dict[tuple[Any, ...], list[tuple[str, bool]]] = {}
    for row in rows:
        key = (
            row.prompt if isinstance(row.prompt, str | None) else repr(row.prompt),
            row.answer,
            tuple(row.history),
        )
        if key not in segments:
            segments[key] = []
            for piece, trained in _segments(processor, row, render):
                text = piece.replace(image_token, expanded)
                segments[key].append((distinct_texts.setdefault(text, text), trained))
        row_keys.append(key)
    texts = list(distinct_texts)
    token_ids = dict(
        zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    )
    encoded: dict[tuple[Any, ...], tuple[list[int], list[int]]] = {}
    for key, pieces in segments.items():
        ids: list[int] = []
        targets: list[int] = []
        for text, trained in pieces:
            piece_ids = token_ids[text]
            ids += piece_ids
            targets += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
        encoded[key] = (ids, targets)

    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    image_index: list[int] = []
    n_cut = 0
    for row, key in zip(rows, row_keys, strict=True):
        ids, targets = encoded[key]
        n_prompt = next((i for i, t in enumerate(targets) if t != IGNORE_INDEX), len(targets))
        if n_prompt >= max_length:
            raise ValueError(
                f"a prompt is {n_prompt} tokens (image tokens included), not below "
                f"max_length={max_length}; raise max_length"
            )
        n_cut += len(ids) > max_length
        input_ids.append(ids[:max_length])
        labels.append(targets[:max_length])
        image_index.append(image_ids[id(row.image)] if row.image is not None else -1)
    if n_cut:
        logger.warning("%d of %d rows were cut to max_length=%d", n_cut, len(rows), max_length)

    if distinct:
        pixel_values = torch.cat(
            [
                processor.image_processor(
                    images=[im if im.mode == "RGB" else im.convert("RGB") for im in chunk],
                    return_tensors="pt",
                )["pixel_values"]
                for chunk in (distinct[i : i + 256] for i in range(0, len(distinct), 256))
            ]
        )
    else:
        pixel_values = torch.empty(0)
    return SFTFeatures(input_ids, labels, image_index, pixel_values, [r.weight for r in rows])


class SFTCollator:
    """Pads a list of row indices of :class:`SFTFeatures` into a model batch (right padding).

    Args:
        features: The encoded rows.
        pad_token_id: Id used for padding (masked out by the attention mask and labels).
    """

    def __init__(self, features: SFTFeatures, pad_token_id: int) -> None:
        self.features = features
        self.pad_token_id = pad_token_id

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Build ``input_ids``, ``attention_mask``, ``labels`` and (if any) ``pixel_values``."""
        f = self.features
        width = max(len(f.input_ids[i]) for i in indices)
        input_ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(f.input_ids[i])
            input_ids[row, :n] = torch.tensor(f.input_ids[i])
            labels[row, :n] = torch.tensor(f.labels[i])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if f.weights is not None and any(f.weights[i] != 1.0 for i in indices):
            batch["loss_weights"] = torch.tensor([f.weights[i] for i in indices])
        # LLaVA scatters image features into the image-token positions in order, so a batch
        # mixing text-only rows and image rows passes the images of the image rows only.
        with_image = [f.image_index[i] for i in indices if f.image_index[i] >= 0]
        if with_image:
            batch["pixel_values"] = f.pixel_values[with_image]
        return batch
