"""Nodes of the inject_hallucinations pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from povid_kedro.hallucination import (
    ClientConfig,
    InjectConfig,
    InjectionCache,
    diff_report,
    make_injector,
    to_povid_json,
    to_trl_rows,
)
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.schema import TASK_TYPES

logger = logging.getLogger(__name__)


def inject_hallucinations_node(
    ground_truth_train: pd.DataFrame,
    ground_truth_eval: pd.DataFrame,
    train_images: ImageFolder,
    object_synonyms: str,
    openai_client: ClientConfig,
    injection_cache: InjectionCache,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Give every ground-truth sample a rejected answer, or a recorded failure.

    Both splits are injected (the eval pairs measure held-out reward accuracy in training);
    samples that already have a rejected answer (POVID's published data) pass through.

    Args:
        ground_truth_train: Canonical table, train split.
        ground_truth_eval: Canonical table, eval split.
        train_images: Image root of both splits (the API injector sends the image).
        object_synonyms: The object vocabulary (``canonical, syn, ...`` lines) of the rules.
        openai_client: Endpoint and key, used only by the ``openai`` injector.
        injection_cache: On-disk cache of paid-for answers, used only by ``openai``.
        params: The ``inject_hallucinations`` parameters.

    Returns:
        The pairs (with a ``split`` column), the failures, and the stats as MLflow metrics.
    """
    samples = pd.concat(
        [ground_truth_train.assign(split="train"), ground_truth_eval.assign(split="eval")],
        ignore_index=True,
    )
    # POVID builds pairs from descriptions and reasoning answers; one-word VQA answers only
    # when type_mix lists the task (their rejection is the answer turned around).
    config = InjectConfig.from_dict(params)
    tasks = [t for t in TASK_TYPES if t in config.type_mix]
    injectable = samples["task_type"].isin(tasks)
    left_out = samples.loc[~injectable, "task_type"].value_counts().to_dict()
    if left_out:
        logger.info(
            "inject_hallucinations: %d ground-truth rows of task types %s are not made into "
            "pairs (only %s are)",
            int((~injectable).sum()),
            left_out,
            tasks,
        )
    samples = samples[injectable].reset_index(drop=True)
    injector = make_injector(
        config, client_config=openai_client, cache=injection_cache, synonyms=object_synonyms
    )
    result = injector.inject(samples.drop(columns="split"), train_images.open)
    splits = dict(zip(samples["id"], samples["split"], strict=True))
    pairs = result.pairs.assign(split=result.pairs["id"].map(splits))
    if len(pairs) + len(result.failures) != len(samples):
        raise RuntimeError(
            f"injection lost samples: {len(samples)} in, {len(pairs)} pairs + "
            f"{len(result.failures)} failures out"
        )
    if pairs.empty:
        # The failures output is not written when the node fails: the message carries it.
        reasons = result.failures["reason"].value_counts().to_dict()
        first = "; ".join(
            f"{f.id}: {f.reason} ({f.detail})" for f in result.failures.head(3).itertuples()
        )
        raise ValueError(
            f"no preference pair could be made from {len(samples)} samples, by reason "
            f"{reasons}; first failures: {first}"
        )
    if len(result.failures):
        logger.warning(
            "inject_hallucinations: %d samples got no rejected answer; each is listed with its "
            "reason in injection_failures",
            len(result.failures),
        )
    logger.info(
        "inject_hallucinations: %d pairs (%d train / %d eval), %d failures",
        len(pairs),
        int((pairs["split"] == "train").sum()),
        int((pairs["split"] == "eval").sum()),
        len(result.failures),
    )
    metrics = {name: {"value": float(v), "step": 0} for name, v in result.stats.items()}
    for task, n in left_out.items():
        metrics[f"not_injected_{task}"] = {"value": float(n), "step": 0}
    return pairs, result.failures, metrics


def export_pairs_node(
    pairs: pd.DataFrame, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], pd.DataFrame, str]:
    """The pairs in POVID's published JSON, in trl's DPO format, and as a readable report.

    Args:
        pairs: The preference pairs.
        params: The ``inject_hallucinations`` parameters (``report_samples``).

    Returns:
        POVID-format records, trl rows (``image, prompt, chosen, rejected`` + ``id, split,
        task_type``), and a markdown sample report with the changed words highlighted.
    """
    trl = to_trl_rows(pairs).assign(
        id=pairs["id"].to_numpy(),
        split=pairs["split"].to_numpy(),
        task_type=pairs["task_type"].astype(str).to_numpy(),
    )
    return to_povid_json(pairs), trl, diff_report(pairs, n=int(params["report_samples"]))
