"""Load a Hugging Face image-text-to-text model directory, validated before the weights load.

Works for the tiny model this project trains and for a real ``llava-hf/llava-1.5-7b-hf``
directory alike: nothing here assumes a size. The checks run on the config and the processor
first, so a broken directory fails in a second with a message naming it and the fix, instead of
after minutes of loading weights or deep inside a forward pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

logger = logging.getLogger(__name__)


class ModelDirError(ValueError):
    """A model directory that cannot be used, with the directory and the fix in the message."""


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'")
    return value


def expected_image_tokens(config: Any) -> int:
    """Image features the model's vision tower yields per image (what the LM expects).

    Args:
        config: A LLaVA-style config with ``vision_config`` and ``vision_feature_select_strategy``.

    Returns:
        ``(image_size / patch_size)²``, plus the CLS feature when the strategy is ``"full"``
        (LeViT: its grid after the subsamplings before the feature layer, no CLS).
    """
    vision = config.vision_config
    size, patch = vision.image_size, vision.patch_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    rows, cols = height // patch_h, width // patch_w
    if getattr(vision, "model_type", None) == "levit":
        # Each stage before the feature layer that ends in a subsampling divides the grid by
        # its stride (transformers' LevitStage: (resolution - 1) // stride + 1).
        layer = config.vision_feature_layer
        stages = layer if layer >= 0 else len(vision.depths) + 1 + layer
        for op in vision.down_ops[:stages]:
            if op and op[0] == "Subsample":
                rows, cols = (rows - 1) // op[5] + 1, (cols - 1) // op[5] + 1
        return rows * cols  # no CLS token
    n = rows * cols
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        n += 1
    return n


def validate_processor(processor: Any, config: Any, path: str | os.PathLike[str]) -> None:
    """Check that a processor fits a model config; raise :class:`ModelDirError` otherwise.

    Checks: the processor has an image token that the tokenizer keeps whole and that matches the
    config's image token id; a chat template exists; an image goes through the image processor
    at the size the vision tower was built for and expands into as many image tokens as the
    vision tower yields features.

    Args:
        processor: The loaded processor.
        config: The model config.
        path: The directory, for the messages.
    """
    where = f"model directory {str(path)!r}"
    tokenizer = getattr(processor, "tokenizer", None)
    image_token = getattr(processor, "image_token", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise ModelDirError(
            f"{where}: the processor ({type(processor).__name__}) has no tokenizer or no image "
            "processor; save a multimodal processor there (processor.save_pretrained(dir))"
        )
    if not image_token:
        raise ModelDirError(
            f"{where}: the processor has no image token; set 'image_token' (e.g. '<image>') in "
            "processor_config.json and add it to the tokenizer as a special token"
        )
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    config_id = getattr(config, "image_token_id", None)
    if len(ids) != 1 or (config_id is not None and ids[0] != config_id):
        raise ModelDirError(
            f"{where}: the tokenizer encodes the image token {image_token!r} as {ids}, but the "
            f"model expects the single id {config_id}; add {image_token!r} to the tokenizer as a "
            "special token with that id (tokenizer.json 'added_tokens')"
        )
    template = getattr(processor, "chat_template", None) or getattr(
        tokenizer, "chat_template", None
    )
    if not template:
        raise ModelDirError(
            f"{where}: neither the processor nor the tokenizer has a chat template; save one as "
            "chat_template.jinja in the directory (LLaVA-1.5: 'USER: <image>\\n... ASSISTANT:')"
        )

    vision = getattr(config, "vision_config", None)
    if vision is None:
        return
    size = vision.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    probe = Image.new("RGB", (width, height), (127, 127, 127))
    pixels = processor.image_processor(images=[probe], return_tensors="pt")["pixel_values"]
    got_h, got_w = int(pixels.shape[-2]), int(pixels.shape[-1])
    if (got_h, got_w) != (height, width):
        raise ModelDirError(
            f"{where}: the image processor makes {got_w}x{got_h} images but the vision tower "
            f"was built for {width}x{height}; set 'size' and 'crop_size' in the image processor "
            f"config (preprocessor_config.json or processor_config.json) to {width}x{height}"
        )
    if getattr(config, "image_grid_pinpoints", None):
        # LLaVA-NeXT: the count follows each image's size (its tiling); the model checks it
        # against its features in every forward.
        return
    expected = expected_image_tokens(config)
    text = processor(text=[image_token], images=[probe], add_special_tokens=False)
    got = sum(1 for t in text["input_ids"][0] if t == ids[0])
    if got != expected:
        raise ModelDirError(
            f"{where}: the processor expands one image into {got} image tokens but the model "
            f"yields {expected} image features; set 'patch_size' ({vision.patch_size}), "
            "'vision_feature_select_strategy' and 'num_additional_image_tokens' (1 for CLIP's "
            "CLS token) in processor_config.json to match config.json"
        )


def load_model_dir(
    path: str | os.PathLike[str],
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """Load and validate a model directory saved with ``save_pretrained``.

    Args:
        path: Directory with ``config.json``, the weights and the processor files.
        dtype: Weight dtype (``"float32"``, ``"bfloat16"``, ``"auto"``, a ``torch.dtype``);
            ``None`` keeps transformers' default.
        device: Device to move the model to (``None`` leaves it on the CPU).

    Returns:
        ``(model, processor)``, the model in eval mode.

    Raises:
        ModelDirError: If the directory is missing or its parts do not fit together.
    """
    directory = Path(path)
    where = f"model directory {str(path)!r}"
    if not directory.is_dir():
        raise ModelDirError(
            f"{where} does not exist; train the base model first (kedro run) or point the "
            "catalog entry at a local copy of the model"
        )
    if not (directory / "config.json").is_file():
        raise ModelDirError(
            f"{where} has no config.json; it must be saved with model.save_pretrained(dir) and "
            "processor.save_pretrained(dir)"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as err:
        raise ModelDirError(f"{where}: config.json cannot be read ({err})") from err
    try:
        processor = AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelDirError(
            f"{where}: no usable processor ({err}); save it with processor.save_pretrained(dir)"
        ) from err
    validate_processor(processor, config, directory)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelDirError(
            f"{where}: the weights cannot be loaded as an image-text-to-text model ({err})"
        ) from err
    if device is not None:
        # transformers' decorated ``to`` is typed as taking the model itself.
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    logger.info(
        "loaded %s from %s (%s, %.1f M parameters)",
        type(model).__name__,
        directory,
        next(model.parameters()).dtype,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, processor


def save_model_dir(model: Any, processor: Any, path: str | os.PathLike[str]) -> Path:
    """Save a model and its processor into one directory that :func:`load_model_dir` accepts.

    Args:
        model: The model (``save_pretrained``-able).
        processor: Its processor.
        path: Target directory (created; existing files with the same names are replaced).

    Returns:
        The directory.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def weights_digest(model: Any) -> str:
    """SHA-256 of a model's weights as they are in memory: names, dtypes, shapes and bytes.

    The same weights give the same digest whether just trained or loaded from a directory (in
    the dtype they were saved in), so it proves which model a registry version holds.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


COMPLETE_FILE = "povid_model.json"
"""Written last into a model directory this project saves: without it a directory is partial."""


def save_model_dir_atomic(
    model: Any, processor: Any, path: str | os.PathLike[str], record: dict[str, Any]
) -> Path:
    """Save into a sibling temporary directory, then swap it in: a kill at any moment leaves
    either the previous model or the new one at ``path``, never a mix or a half-written one.

    Args:
        model: The model.
        processor: Its processor.
        path: Target directory (replaced whole).
        record: Written as :data:`COMPLETE_FILE` with the weights digest (``weights_sha256``).

    Returns:
        The directory.
    """
    import json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while saving
    tag = uuid.uuid4().hex[:8]
    partial = target.parent / f".{target.name}.partial-{tag}"
    save_model_dir(model, processor, partial)
    complete = {**record, "weights_sha256": weights_digest(model)}
    (partial / COMPLETE_FILE).write_text(json.dumps(complete, indent=2))
    old = target.parent / f".{target.name}.old-{tag}"
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target
