"""Nodes of the base_model pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from povid_kedro.datasets.hf_model import ModelReference
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.metrics.chair import ObjectExtractor
from povid_kedro.modeling import load_model_dir
from povid_kedro.modeling.scratch import loss_figure, loss_history, train_scratch_model

logger = logging.getLogger(__name__)


def build_base_model_node(
    ground_truth_train: pd.DataFrame,
    train_images: ImageFolder,
    object_synonyms: str,
    base_params: dict[str, Any],
    evaluate_params: dict[str, Any],
) -> tuple[Any, dict[str, list[dict[str, float]]], Figure]:
    """Train the base model from scratch, or validate a pretrained directory.

    Args:
        ground_truth_train: Canonical ground truth, train split.
        train_images: Its image root.
        object_synonyms: CHAIR's synonym list: the object words of the descriptions the vision
            tower is pretrained to name (``base_model.vision_pretraining``).
        base_params: The ``base_model`` parameters (``source`` picks the branch).
        evaluate_params: The ``evaluate`` parameters: their prompts go into the tokenizer's
            training text so that evaluation questions tokenize like training text.

    Returns:
        ``(model, processor)`` to save (or a reference to the pretrained directory), the loss
        curves for MLflow, and a loss figure.
    """
    source = base_params["source"]
    if source == "pretrained":
        path = base_params["pretrained_path"]
        if not path:
            raise ValueError(
                "base_model.source is 'pretrained' but base_model.pretrained_path is empty"
            )
        load_model_dir(path)  # validates; the weights stay where they are
        logger.info("base model: pretrained directory %s (not copied)", path)
        return ModelReference(path), {}, _note_figure(f"pretrained model {path}: not trained here")
    if source != "scratch":
        raise ValueError(f"base_model.source must be 'scratch' or 'pretrained', not {source!r}")
    model, processor, result = train_scratch_model(
        ground_truth_train,
        train_images.open,
        tasks=base_params["tasks"],
        text_warmup=base_params["text_warmup"],
        tokenizer=base_params["tokenizer"],
        model=base_params["model"],
        train=base_params["train"],
        extra_texts=[evaluate_params["description_prompt"], evaluate_params["pope_template"]],
        task_weights=base_params.get("task_weights"),
        pack_turns=bool(base_params.get("pack_turns", False)),
        vision_pretraining=base_params.get("vision_pretraining"),
        objects=ObjectExtractor(object_synonyms).objects,
    )
    every = int(base_params["train"].get("log_every", 100))
    return (model, processor), loss_history(result, every), loss_figure(result)


def _note_figure(text: str) -> Figure:
    fig = Figure(figsize=(6, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig
