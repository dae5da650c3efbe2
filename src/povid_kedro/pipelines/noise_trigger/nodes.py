"""Nodes of the noise_trigger pipeline."""

from __future__ import annotations

import functools
import logging
import textwrap
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.modeling import generate
from povid_kedro.training.noise import (
    GENERATED,
    NoiseConfig,
    add_diffusion_noise,
    noise_fields,
    noise_scales,
    noise_seed,
    noisy_image_file,
)

logger = logging.getLogger(__name__)


def _noise_config(params: dict[str, Any]) -> NoiseConfig:
    return NoiseConfig.from_dict(noise_fields(params))


def _noisy_name(sample_id: str) -> str:
    return f"{sample_id}.png"


def make_noisy_images_node(
    preference_pairs: pd.DataFrame, train_images: ImageFolder, params: dict[str, Any]
) -> dict[str, Callable[[], Image.Image]]:
    """Each pair's image under diffusion noise, seeded by (run seed, sample id).

    Args:
        preference_pairs: The pairs (``id``, ``image``).
        train_images: Their image root.
        params: The ``noise_trigger`` parameters.

    Returns:
        ``<sample id>.png`` -> a callable that makes the noisy image: the image folder's writer
        runs it in the process that encodes and writes the file.
    """
    cfg = _noise_config(params)
    noisy: dict[str, Callable[[], Image.Image]] = {
        _noisy_name(sample_id): functools.partial(
            noisy_image_file, train_images, path, sample_id, cfg
        )
        for sample_id, path in zip(preference_pairs["id"], preference_pairs["image"], strict=True)
    }
    signal, noise = noise_scales(cfg.step)
    logger.info(
        "noise_trigger: %d noisy images at k=%d (signal %.3f, noise %.3f)",
        len(noisy),
        cfg.step,
        signal,
        noise,
    )
    return noisy


def noisy_responses_node(
    base_model: tuple[Any, Any],
    noisy_images: ImageFolder,
    preference_pairs: pd.DataFrame,
    params: dict[str, Any],
) -> pd.DataFrame:
    """The paper-text variant of y_n-: the base model's free answers under the noisy images.

    Decoded only in ``generated`` mode; in the default ``teacher_forced`` mode stage 2 builds
    y_n- on the fly and the table is empty (with a log line saying so).

    Returns:
        ``id``, ``noisy_rejected``.
    """
    cfg = _noise_config(params)
    if cfg.mode != GENERATED:
        logger.info("noise_trigger: mode %s, no free answers decoded", cfg.mode)
        return pd.DataFrame({"id": pd.Series(dtype="string"), "noisy_rejected": []})
    images = [noisy_images.open(_noisy_name(i)) for i in preference_pairs["id"]]
    answers = generate(*base_model, images, list(preference_pairs["prompt"]), **cfg.generate)
    return pd.DataFrame({"id": preference_pairs["id"].tolist(), "noisy_rejected": answers})


def noise_figure_node(
    base_model: tuple[Any, Any],
    train_images: ImageFolder,
    preference_pairs: pd.DataFrame,
    params: dict[str, Any],
) -> Figure:
    """Like the paper's Figure 4: one image at increasing noise steps, the model's answer under
    each, with the ground truth for reference.

    Args:
        params: The ``noise_trigger`` parameters (``figure``: ``steps``, ``sample``).
    """
    cfg = _noise_config(params)
    figure = params["figure"]
    descriptions = preference_pairs[preference_pairs["task_type"] == "description"]
    row = descriptions.iloc[int(figure["sample"]) % len(descriptions)]
    clean = train_images.open(row["image"]).convert("RGB")
    steps = [int(s) for s in figure["steps"]]
    images = [
        clean if s == 0 else add_diffusion_noise(clean, s, noise_seed(cfg.seed, row["id"]))
        for s in steps
    ]
    answers = generate(
        *base_model, images, [row["prompt"]] * len(images), **cfg.generate, progress=False
    )
    fig = Figure(figsize=(2.6 * len(steps), 4.6))
    axes = fig.subplots(1, len(steps))
    for ax, step, image, answer in zip(axes, steps, images, answers, strict=True):
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        scale = 0.0 if step == 0 else noise_scales(step)[1]
        ax.set_title(f"k = {step} (noise {scale:.2f})", fontsize=9)
        ax.set_xlabel(textwrap.fill(answer, 34), fontsize=7, loc="left")
    fig.suptitle("Ground truth: " + textwrap.shorten(row["answer"], 160), fontsize=8, wrap=True)
    fig.tight_layout()
    return fig
