"""Nodes of the dpo_training pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.training import DPOTrainingConfig, TrainReport, train_stage1, train_stage2
from povid_kedro.training.launch import train_stage_processes
from povid_kedro.training.noise import GENERATED, NoiseConfig, noise_fields

_CURVES = ("loss", "margins", "accuracy")


def _history(report: TrainReport) -> dict[str, list[dict[str, float]]]:
    return {
        name: [{"step": step, "value": value} for step, value in series]
        for name, series in report.history().items()
    } | {f"final.{k}": [{"step": report.steps, "value": v}] for k, v in report.summary().items()}


def _curves(report: TrainReport, title: str) -> Figure:
    """Training curves of each branch: loss, reward margin, reward accuracy."""
    history = report.history()
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, len(_CURVES))
    for ax, curve in zip(axes, _CURVES, strict=True):
        for name, series in sorted(history.items()):
            if name.endswith(f"/{curve}") or name == curve:
                steps, values = zip(*series, strict=True) if series else ((), ())
                ax.plot(steps, values, label=name)
        ax.set_title(curve)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title} ({report.seconds:.0f} s, {report.steps} steps)")
    fig.tight_layout()
    return fig


def _train(
    stage: str,
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    images: ImageFolder,
    cfg: DPOTrainingConfig,
    noise: NoiseConfig | None,
) -> tuple[Any, TrainReport]:
    """One stage in this process, or in ``cfg.processes.num_processes`` launched ones."""
    stage_cfg = cfg.stage1 if stage == "stage1" else cfg.stage2
    if cfg.processes.num_processes > 1:
        return train_stage_processes(
            stage, model, processor, pairs, images, stage_cfg, noise, cfg.processes
        )
    if stage == "stage1":
        return train_stage1(model, processor, pairs, images.open, stage_cfg, progress=True)
    return train_stage2(model, processor, pairs, images.open, stage_cfg, noise, progress=True)


def train_stage1_node(
    base_model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    train_images: ImageFolder,
    params: dict[str, Any],
) -> tuple[tuple[Any, Any], dict[str, list[dict[str, float]]], Figure]:
    """Stage 1: DPO on (ground truth, injected hallucination) with the clean image, then merge.

    Args:
        base_model: ``(model, processor)``.
        trl_preferences: Pairs ``id, image, prompt, chosen, rejected, split``.
        train_images: Their image root.
        params: The ``dpo_training`` parameters.

    Returns:
        The merged stage-1 model, its per-step metrics for MLflow, and its training curves.
    """
    cfg = DPOTrainingConfig.from_dict(params)
    model, processor = base_model
    merged, report = _train("stage1", model, processor, trl_preferences, train_images, cfg, None)
    return (merged, processor), _history(report), _curves(report, "stage 1: DPO (y+ vs y_h-)")


def train_stage2_node(
    stage1_model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    noisy_responses: pd.DataFrame,
    train_images: ImageFolder,
    params: dict[str, Any],
    noise_params: dict[str, Any],
) -> tuple[tuple[Any, Any], tuple[Any, Any], dict[str, list[dict[str, float]]], Figure]:
    """Stage 2 (POVID): w_h·DPO(y+ vs y_h-) + w_n·DPO(y+ vs y_n-) on the merged stage-1 model.

    Args:
        stage1_model: ``(model, processor)`` after stage 1.
        trl_preferences: The pairs.
        noisy_responses: ``id, noisy_rejected`` (used in ``generated`` mode).
        train_images: Their image root.
        params: The ``dpo_training`` parameters.
        noise_params: The ``noise_trigger`` parameters (step, seed, y_n- mode).

    Returns:
        The stage-2 model (twice: the model directory and the registry candidate), its
        per-step metrics, and its training curves.
    """
    cfg = DPOTrainingConfig.from_dict(params)
    noise = NoiseConfig.from_dict(noise_fields(noise_params))
    pairs = trl_preferences
    if noise.mode == GENERATED:
        pairs = pairs.merge(noisy_responses, on="id", how="left", validate="one_to_one")
        missing = pairs["noisy_rejected"].isna().sum()
        if missing:
            raise ValueError(
                f"{missing} pairs have no free answer under noise; run "
                "`kedro run --pipeline noise_trigger` with noise_trigger.mode: generated"
            )
    model, processor = stage1_model
    merged, report = _train("stage2", model, processor, pairs, train_images, cfg, noise)
    curves = _curves(report, "stage 2: POVID (y_h- and y_n- branches)")
    return (merged, processor), (merged, processor), _history(report), curves
