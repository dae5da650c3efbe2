"""Nodes of the dpo_training pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from povid_kedro.hallucination.onpolicy import OnPolicyConfig, PairSources, source_id
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.training import DPOTrainingConfig, TrainReport, train_stage1, train_stage2
from povid_kedro.training.launch import train_stage_processes
from povid_kedro.training.noise import GENERATED, NoiseConfig, noise_fields

_CURVES = ("loss", "margins", "accuracy")

logger = logging.getLogger(__name__)


def pair_sources_node(
    train_images: ImageFolder,
    train_instances: Callable[[], dict[str, Any]],
    object_synonyms: str,
    cooccurrence_partners: dict[str, str | None],
    description_grammar: dict[str, list[str]],
) -> PairSources:
    """What on-policy pairs are made from besides the model: the training images, their objects
    (read only if pairs are made), CHAIR's synonyms, the partner map and the sentence forms."""
    return PairSources(
        train_images.open,
        train_instances,
        object_synonyms,
        cooccurrence_partners,
        description_grammar["sentence_forms"],
    )


def _stage_pairs(
    stage: int,
    model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    sources: PairSources,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, list[dict[str, float]]]]:
    cfg = OnPolicyConfig.from_dict(params)
    if not cfg.enabled or stage not in cfg.stages:
        return trl_preferences, {}
    logger.info("stage %d: on-policy pairs sampled from the model it starts from", stage)
    pairs, stats = sources(model, trl_preferences, cfg)
    return pairs, {k: [{"step": 0, "value": v}] for k, v in stats.items()}


def stage1_pairs_node(
    base_model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    on_policy_sources: PairSources,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, list[dict[str, float]]]]:
    """The pairs stage 1 trains on: the injected ones, or with ``on_policy`` enabled for stage 1
    the base model's own sampled descriptions, paired by their errors against the training
    images' objects.

    Args:
        base_model: ``(model, processor)``, the sampler.
        trl_preferences: The injected pairs.
        on_policy_sources: The images and their truth.
        params: The ``on_policy`` parameters.

    Returns:
        The pairs and the on-policy counts as MLflow metrics (none when disabled).
    """
    return _stage_pairs(1, base_model, trl_preferences, on_policy_sources, params)


def stage2_pairs_node(
    stage1_model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    on_policy_sources: PairSources,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, list[dict[str, float]]]]:
    """The pairs stage 2 trains on: as :func:`stage1_pairs_node`, sampled from the stage-1
    model when ``on_policy.stages`` includes 2 (a second on-policy round)."""
    return _stage_pairs(2, stage1_model, trl_preferences, on_policy_sources, params)


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
    stage1_preferences: pd.DataFrame,
    train_images: ImageFolder,
    params: dict[str, Any],
) -> tuple[tuple[Any, Any], dict[str, list[dict[str, float]]], Figure]:
    """Stage 1: DPO on (ground truth, injected hallucination) with the clean image, then merge.

    Args:
        base_model: ``(model, processor)``.
        stage1_preferences: Pairs ``id, image, prompt, chosen, rejected, split``.
        train_images: Their image root.
        params: The ``dpo_training`` parameters.

    Returns:
        The merged stage-1 model, its per-step metrics for MLflow, and its training curves.
    """
    cfg = DPOTrainingConfig.from_dict(params)
    model, processor = base_model
    merged, report = _train("stage1", model, processor, stage1_preferences, train_images, cfg, None)
    return (merged, processor), _history(report), _curves(report, "stage 1: DPO (y+ vs y_h-)")


def train_stage2_node(
    stage1_model: tuple[Any, Any],
    stage2_preferences: pd.DataFrame,
    noisy_responses: pd.DataFrame,
    train_images: ImageFolder,
    params: dict[str, Any],
    noise_params: dict[str, Any],
) -> tuple[tuple[Any, Any], tuple[Any, Any], dict[str, list[dict[str, float]]], Figure]:
    """Stage 2 (POVID): w_h·DPO(y+ vs y_h-) + w_n·DPO(y+ vs y_n-) on the merged stage-1 model.

    Args:
        stage1_model: ``(model, processor)`` after stage 1.
        stage2_preferences: The pairs.
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
    pairs = stage2_preferences
    if noise.mode == GENERATED:
        # On-policy pairs take the free answer of the injected pair they replaced (same image,
        # same prompt).
        answers = noisy_responses.rename(columns={"id": "source_id"})
        pairs = pairs.assign(source_id=pairs["id"].map(source_id))
        pairs = pairs.merge(answers, on="source_id", how="left", validate="one_to_one")
        pairs = pairs.drop(columns="source_id")
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
