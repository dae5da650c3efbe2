"""Batched answer generation for LLaVA-style models, used by every pipeline that decodes.

Prompts are rendered with the processor's chat template, batched with left padding (so that every
row's last prompt token sits at the same position and the KV cache appends in step) and decoded by
``model.generate``, which derives position ids from the attention mask. Only the new text comes
back, without special tokens and cut at the first stop string.

Rows that pass the same image object (POPE's questions about one image, on-policy samples) share
its preprocessing and vision-tower pass within a batch, where the model accepts precomputed
encoder outputs (``mm_encoder_outputs``); otherwise each row goes through the processor.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from povid_kedro.schema import IMAGE_TOKEN

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Prompt = str | Sequence[Message]


def to_messages(prompt: Prompt, image_token: str = IMAGE_TOKEN) -> list[Message]:
    """Turn a prompt into conversational messages for the chat template.

    Args:
        prompt: Either a list of chat messages (used as is), or the user's text as in
            LLaVA-Instruct, e.g. ``"<image>\\nDescribe the image."``; the image placeholder is
            moved into an image part (added when missing, since every prompt here has one image).
        image_token: The processor's image placeholder.

    Returns:
        A one-message user conversation, or the given messages.
    """
    if not isinstance(prompt, str):
        return list(prompt)
    text = prompt.replace(image_token, "").strip()
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def render_prompt(processor: Any, prompt: Prompt) -> str:
    """Render one prompt with the chat template, ending with the generation prompt.

    Args:
        processor: A LLaVA-style processor with a chat template.
        prompt: See :func:`to_messages`.

    Returns:
        The prompt text, e.g. ``"<s>USER: <image>\\nDescribe the image. ASSISTANT:"``.
    """
    messages = to_messages(prompt, getattr(processor, "image_token", IMAGE_TOKEN))
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """Cut ``text`` before the earliest stop string.

    Args:
        text: Decoded answer.
        stop_strings: Strings that end an answer; ``None`` or empty keeps the text.

    Returns:
        The text before the first stop string, stripped of surrounding white space.
    """
    cut = len(text)
    for stop in stop_strings or ():
        at = text.find(stop)
        if 0 <= at < cut:
            cut = at
    return text[:cut].strip()


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state after it."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def generate(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    stop_strings: Sequence[str] | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Generate one answer per (image, prompt), in batches with left padding and a KV cache.

    Args:
        model: A ``LlavaForConditionalGeneration`` (or another image-text-to-text model).
        processor: Its processor, with a chat template.
        images: One PIL image per prompt.
        prompts: One prompt per image: the user's text (``"<image>\\n..."``) or chat messages.
        max_new_tokens: Longest answer in tokens.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature (ignored when greedy).
        top_p: Nucleus sampling mass (ignored when greedy).
        batch_size: Prompts decoded together.
        stop_strings: Strings that end an answer; decoding of a row stops once one appears and
            the answer is cut before it.
        seed: Seeds sampling; the caller's RNG state is restored afterwards.
        progress: Show a tqdm bar over batches.

    Returns:
        The new text of each answer, decoded without special tokens, in input order.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    tokenizer = processor.tokenizer
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    texts = [render_prompt(processor, p) for p in prompts]
    # Templates that write the BOS themselves (ours) must not get a second one from the tokenizer;
    # llava-hf's template leaves it to the tokenizer.
    bos = tokenizer.bos_token
    add_special = not (bos and texts and texts[0].startswith(bos))
    device = model.device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
        "use_cache": True,
    }
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        # Unset the sampling knobs a saved generation_config may carry, so greedy is plain greedy.
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop_strings:
        gen_kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)

    share = _can_share_images(model, processor)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with _seeded(seed):
            for rows in tqdm(
                list(_batches(len(texts), batch_size)),
                desc="generate",
                unit="batch",
                disable=not progress,
            ):
                batch_texts = [texts[i] for i in rows]
                batch_images = [images[i] for i in rows]
                if share:
                    batch = _shared_image_batch(
                        model, processor, batch_texts, batch_images, add_special, dtype
                    )
                else:
                    batch = processor(
                        text=batch_texts,
                        images=[_rgb(im) for im in batch_images],
                        return_tensors="pt",
                        padding=True,
                        padding_side="left",
                        add_special_tokens=add_special,
                    )
                encoded = batch.pop("mm_encoder_outputs", None)
                batch = {
                    k: v.to(device, dtype=dtype) if k == "pixel_values" else v.to(device)
                    for k, v in batch.items()
                }
                if encoded is not None:
                    batch["mm_encoder_outputs"] = encoded
                out = model.generate(**batch, **gen_kwargs)
                # Left padding puts every prompt's end at the same column: the rest is new text.
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                answers.extend(cut_at_stop(t, stop_strings) for t in decoded)
    finally:
        model.train(was_training)
    return answers


def _can_share_images(model: Any, processor: Any) -> bool:
    """Whether rows with the same image can share one encoding: the model takes precomputed
    image features, its tower needs nothing but the pixels (LLaVA-NeXT's also needs
    ``image_sizes`` and packs its features, so it takes the per-row path), and the processor
    says how a preprocessed image expands in the text."""
    base = _unwrapped(model)
    replace = getattr(type(processor), "replace_image_token", None)
    encode = getattr(base, "get_image_features", None)
    if encode is None or "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
        return False
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [
        p.name
        for p in inspect.signature(encode).parameters.values()
        if p.kind in kinds and p.default is inspect.Parameter.empty
    ]
    return (
        required == ["pixel_values"]
        and getattr(processor, "image_token", None) is not None
        and replace is not None
        and getattr(replace, "__qualname__", "").split(".")[0] != "ProcessorMixin"
    )


def _shared_image_batch(
    model: Any,
    processor: Any,
    texts: Sequence[str],
    images: Sequence[Image.Image],
    add_special: bool,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The processor's tokenisation of ``texts`` with each distinct image object preprocessed and
    encoded once; its features go to every row that shows it, as ``mm_encoder_outputs``."""
    slot: dict[int, int] = {}
    distinct: list[Image.Image] = []
    for image in images:
        if id(image) not in slot:
            slot[id(image)] = len(distinct)
            distinct.append(_rgb(image))
    pixels = processor.image_processor(distinct, return_tensors="pt")
    expanded = [processor.replace_image_token(pixels, image_idx=i) for i in range(len(distinct))]
    token = processor.image_token
    rows = [
        t.replace(token, expanded[slot[id(im)]], 1) for t, im in zip(texts, images, strict=True)
    ]
    batch = dict(
        processor.tokenizer(
            rows,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=add_special,
        )
    )
    base = _unwrapped(model)
    device = base.device
    encoded = base.get_image_features(
        pixel_values=pixels["pixel_values"].to(device, dtype=dtype), return_dict=True
    )
    features = list(encoded.pooler_output)
    # One feature tensor per row, the form get_image_features returns and forward reads back
    # (the dataclass annotates a single tensor).
    per_row = [features[slot[id(im)]] for im in images]
    batch["mm_encoder_outputs"] = {
        "image": BaseModelOutputWithPooling(pooler_output=per_row)  # type: ignore[arg-type]
    }
    return batch


def _unwrapped(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (its encoder and forward signature)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
