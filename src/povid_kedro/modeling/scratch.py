"""The base model POVID starts from: a tiny LLaVA trained from scratch on the ground truth, or
a pretrained model directory (LLaVA-1.5-7B) used where it lies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from povid_kedro.modeling import (
    ModelConfig,
    SFTRow,
    TokenizerConfig,
    TrainConfig,
    TrainResult,
    build_model_and_processor,
    train_sft,
    train_tokenizer,
)
from povid_kedro.modeling.vision import (
    VisionPretrainConfig,
    presence_labels,
    pretrain_vision_tower,
)

logger = logging.getLogger(__name__)


def train_scratch_model(
    ground_truth: pd.DataFrame,
    load_image: Callable[[str], Image.Image],
    *,
    tasks: Sequence[str],
    text_warmup: bool,
    tokenizer: Mapping[str, Any],
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    extra_texts: Sequence[str] = (),
    task_weights: Mapping[str, float] | None = None,
    pack_turns: bool = False,
    vision_pretraining: Mapping[str, Any] | None = None,
    objects: Callable[[str], set[str]] | None = None,
    prepare: Callable[[Any], None] | None = None,
) -> tuple[Any, Any, TrainResult]:
    """Train a tokenizer and a tiny LLaVA on ground-truth rows.

    Args:
        ground_truth: Canonical rows (``image``, ``task_type``, ``prompt``, ``answer``).
        load_image: Relative path -> image.
        tasks: Task types to train on (``description``, ``reasoning``).
        text_warmup: Warm the language model up on the description answers first (its
            language prior, like LLaVA's LLM brings from text pre-training).
        tokenizer: :class:`TokenizerConfig` fields.
        model: :class:`ModelConfig` fields.
        train: :class:`TrainConfig` fields.
        extra_texts: More text for the tokenizer (e.g. evaluation prompts), not trained on.
        task_weights: Loss weight of each task type's rows (default 1): a one-word VQA answer
            has one informative token against a description's dozens.
        pack_turns: Train the turns of a multi-turn record as one sequence (LLaVA's way, the
            image tokens paid once) instead of one sequence per turn.
        vision_pretraining: :class:`~povid_kedro.modeling.vision.VisionPretrainConfig` fields:
            first train the vision tower to name the objects of each training image's
            descriptions (and freeze it), as LLaVA starts from a separately trained CLIP.
        objects: Caption -> the object categories it names (CHAIR's parser); needed when
            ``vision_pretraining`` has epochs.
        prepare: Called on the newly built model before training (an experiment's hook, e.g.
            loading or freezing a pretrained vision tower).

    Returns:
        ``(model, processor, result)``.
    """
    rows = ground_truth[ground_truth["task_type"].isin(list(tasks))]
    if rows.empty:
        raise ValueError(
            f"no ground-truth row of task type {list(tasks)} to train the base model on; "
            f"the table has {sorted(ground_truth['task_type'].unique())}"
        )
    weights = dict(task_weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ValueError(
            f"base_model.task_weights names task types {unknown} that are not in "
            f"base_model.tasks {list(tasks)}"
        )
    images = {path: load_image(path).convert("RGB") for path in rows["image"].unique()}
    texts = [*rows["prompt"], *rows["answer"], *extra_texts]
    tok = train_tokenizer(texts, TokenizerConfig.from_dict(dict(tokenizer)))
    net, processor = build_model_and_processor(ModelConfig.from_dict(dict(model)), tok)
    vision_cfg = VisionPretrainConfig.from_dict(dict(vision_pretraining or {}))
    vision: dict[str, Any] = {"losses": [], "seconds": 0.0}
    if vision_cfg.epochs > 0:
        if objects is None:
            raise ValueError("vision_pretraining needs `objects` (a caption's object categories)")
        described = rows[rows["task_type"] == "description"]
        paths, categories, labels = presence_labels(
            described.groupby("image")["answer"].apply(list).to_dict(), objects
        )
        if not categories:
            raise ValueError(
                "vision_pretraining: the training descriptions name no object of the synonym "
                "list; check object_synonyms or set base_model.vision_pretraining.epochs to 0"
            )
        vision = pretrain_vision_tower(
            net, processor, [images[p] for p in paths], labels, vision_cfg
        )
    if prepare is not None:
        prepare(net)
    sft_rows = [
        SFTRow(
            image=images[turns[-1].image],
            prompt=turns[-1].prompt,
            answer=turns[-1].answer,
            weight=float(weights.get(turns[-1].task_type, 1.0)),
            task=turns[-1].task_type,
            history=[(t.prompt, t.answer) for t in turns[:-1]],
        )
        for turns in _conversations(rows, pack_turns)
    ]
    warmup = rows.loc[rows["task_type"] == "description", "answer"].tolist()
    result = train_sft(
        net,
        processor,
        sft_rows,
        TrainConfig.from_dict(dict(train)),
        text_rows=warmup if text_warmup else None,
        frozen_norms=vision_cfg.epochs > 0
        and vision_cfg.freeze
        and vision_cfg.freeze_norm_statistics,
    )
    result.vision_losses = vision["losses"]
    result.seconds += vision["seconds"]
    logger.info(
        "base model trained on %d rows as %d sequences (%d images) in %.0f s, final loss %.3f",
        len(rows),
        len(sft_rows),
        len(images),
        result.seconds,
        sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
    )
    return net, processor, result


def _conversations(rows: pd.DataFrame, pack: bool) -> list[list[Any]]:
    """Rows as conversations: each row alone, or (``pack``) the turns of each record in order.

    Ingest names turn ``t`` of a multi-turn record ``<record id>_<t>``; a record's turns share
    its image, task type and source.
    """
    if not pack:
        return [[r] for r in rows.itertuples(index=False)]
    records: dict[tuple[str, ...], list[Any]] = {}
    for r in rows.itertuples(index=False):
        record = r.id.removesuffix(f"_{r.turn}")
        records.setdefault((r.source, r.image, r.task_type, record), []).append(r)
    # A sampled table may hold some of a record's turns only: they are packed in turn order.
    return [sorted(turns, key=lambda t: t.turn) for turns in records.values()]


def loss_history(result: TrainResult, every: int) -> dict[str, list[dict[str, float]]]:
    """Loss curves averaged over windows of ``every`` steps, as MLflow metric histories."""
    every = max(1, every)

    def windows(values: Sequence[float]) -> list[dict[str, float]]:
        return [
            {"step": i + len(values[i : i + every]), "value": sum(chunk) / len(chunk)}
            for i in range(0, len(values), every)
            if (chunk := values[i : i + every])
        ]

    history = {"sft_loss": windows(result.losses)}
    for task, values in sorted(result.task_losses.items()):
        history[f"sft_loss_{task}"] = windows(values)
    if result.text_losses:
        history["text_warmup_loss"] = windows(result.text_losses)
    if result.vision_losses:
        history["vision_pretraining_loss"] = windows(result.vision_losses)
    history["train_seconds"] = [{"step": 0, "value": result.seconds}]
    return history


def loss_figure(result: TrainResult) -> Figure:
    """The training loss curves."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    if result.text_losses:
        ax.plot(result.text_losses, label="text warm-up", alpha=0.7)
    offset = len(result.text_losses)
    ax.plot(range(offset, offset + len(result.losses)), result.losses, label="image SFT")
    if len(result.task_losses) > 1:
        for task, values in sorted(result.task_losses.items()):
            ax.plot(range(offset, offset + len(values)), values, label=task, lw=0.6, alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(f"base model training ({result.seconds:.0f} s)")
    ax.legend()
    fig.tight_layout()
    return fig
