"""Pretraining the tiny LLaVA's vision tower on the objects its images' descriptions name.

LLaVA-1.5 starts from a CLIP tower trained apart from the language model and keeps it frozen;
its hallucinations are then the language model's, not blindness. The tiny model's tower, learnt
from the caption loss alone, does not find a partner's glyph that a small detector finds
(docs/experiments.md, "Can the base model see the absent partner at all?"). This stage gives it
the CLIP-like start: the tower, with a linear head on its max-pooled image tokens (read at the
layer the model reads), is trained to name the objects each training image's descriptions name
(multi-label, CHAIR's object parser), then the head is dropped and the tower optionally frozen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from povid_kedro.config_reader import read_dataclass

logger = logging.getLogger(__name__)


@dataclass
class VisionPretrainConfig:
    """How the tower is pretrained (``epochs: 0`` skips the stage).

    Attributes:
        epochs: Passes over the labelled images.
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, one-cycle schedule).
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of steps the one-cycle schedule warms up over.
        freeze: Keep the tower's weights fixed while the language model learns (LLaVA's
            frozen CLIP).
        freeze_norm_statistics: With ``freeze``, also keep its BatchNorm layers (LeViT's stem)
            in eval mode while the language model learns: fixed running statistics, so every
            image gives the features it gives at inference. ``False``: they normalise each
            training batch with its own statistics and keep updating their running ones. With
            ``True`` the base model's one-word-answer skill formed less (docs/experiments.md, "A
            base model that sees").
        seed: Initialisation of the head and the order of the images.
    """

    epochs: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    freeze: bool = True
    freeze_norm_statistics: bool = False
    seed: int = 0

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "base_model.vision_pretraining"
    ) -> VisionPretrainConfig:
        """Build from a parameters mapping; unknown keys are errors."""
        return read_dataclass(cls, values, where)


def presence_labels(
    answers: Mapping[str, Sequence[str]], objects: Callable[[str], set[str]]
) -> tuple[list[str], list[str], torch.Tensor]:
    """Multi-label targets from descriptions: an object is present where a description names it.

    Args:
        answers: Image path -> its description answers.
        objects: Caption -> object categories it names (CHAIR's parser).

    Returns:
        ``(paths, categories, labels)``: ``labels[i, j]`` is 1.0 where image ``i``'s descriptions
        name category ``j``.
    """
    named = {path: set().union(*(objects(a) for a in texts)) for path, texts in answers.items()}
    categories = sorted(set().union(*named.values())) if named else []
    index = {c: j for j, c in enumerate(categories)}
    paths = sorted(named)
    labels = torch.zeros(len(paths), len(categories))
    for i, path in enumerate(paths):
        for category in named[path]:
            labels[i, index[category]] = 1.0
    return paths, categories, labels


def image_tokens(tower: nn.Module, config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tower``'s image tokens at the layer a LLaVA model with ``config`` reads,
    ``(n, tokens, width)``."""
    layer = config.vision_feature_layer
    skip = 1 if config.vision_feature_select_strategy == "default" else 0  # CLIP's CLS

    def tokens(pixels: torch.Tensor) -> torch.Tensor:
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        return hidden[:, skip:]

    return tokens


def pretrain_vision_tower(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    labels: torch.Tensor,
    cfg: VisionPretrainConfig,
) -> dict[str, Any]:
    """Train ``model``'s vision tower in place to name each image's objects, then freeze it if
    asked.

    Args:
        model: A ``LlavaForConditionalGeneration`` (CLIP or LeViT tower).
        processor: Its processor (the image processor prepares the pixels).
        images: The labelled images.
        labels: ``(len(images), n_categories)`` 0/1 targets (:func:`presence_labels`).
        cfg: The stage's settings.

    Returns:
        ``losses`` (one per step), ``seconds``, ``steps``.
    """
    start = time.perf_counter()
    pixels = torch.cat(
        [
            processor.image_processor(images=list(images[i : i + 256]), return_tensors="pt")[
                "pixel_values"
            ]
            for i in range(0, len(images), 256)
        ]
    )
    tower = model.model.vision_tower
    tokens = image_tokens(tower, model.config)
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = nn.Linear(model.config.vision_config.hidden_size, labels.shape[1])
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = max(1, len(images) // cfg.batch_size)
    steps = cfg.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.lr, total_steps=steps, pct_start=cfg.warmup_ratio
    )
    bce = nn.BCEWithLogitsLoss()
    losses: list[float] = []
    tower.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=generator)[: per_epoch * cfg.batch_size]
        for batch in order.split(cfg.batch_size):
            optimizer.zero_grad()
            loss = bce(head(tokens(pixels[batch]).amax(1)), labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    tower.eval()
    if cfg.freeze:
        tower.requires_grad_(False)
    seconds = time.perf_counter() - start
    logger.info(
        "vision tower pretrained on %d images, %d categories: %d steps in %.0f s, final loss "
        "%.4f%s",
        len(images),
        labels.shape[1],
        steps,
        seconds,
        sum(losses[-50:]) / max(1, len(losses[-50:])),
        ", frozen" if cfg.freeze else "",
    )
    return {"losses": losses, "seconds": seconds, "steps": steps}
