"""Nodes of the ingest_ground_truth pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from povid_kedro.ingest import IngestConfig, ingest
from povid_kedro.ingest.images import ImageFolder


def ingest_ground_truth_node(
    instructions: Mapping[str, Callable[[], Any]],
    train_images: ImageFolder,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Validate instruction records, sample them and split them by image.

    Args:
        instructions: Input JSON files (LLaVA-Instruct or POVID preference format), by name.
        train_images: The image root that the records' ``image`` paths are relative to.
        params: The ``ingest_ground_truth`` parameters.

    Returns:
        The train and eval ground-truth tables, the quarantine table, and the counts as
        MLflow metrics.
    """
    train, evaluation, quarantine, counts = ingest(
        instructions, train_images, IngestConfig.from_dict(params)
    )
    metrics = {name: {"value": value, "step": 0} for name, value in counts.items()}
    return train, evaluation, quarantine, metrics
