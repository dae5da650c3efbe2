"""The ablation (the paper's component table): POVID's parts switched on and off.

Every row starts from the same base model, trains the DPO stages it names with the library
functions the ``dpo_training`` nodes call, once per seed, and is scored by a caller-supplied
function (the ``ablation`` pipeline passes the ``evaluate`` pipeline's own node functions, so
each metric has one definition). Rows are scored on a validation split, never on the
evaluation split. The table reports, per row and metric, the mean over seeds, the standard
deviation over seeds and the standard error of that mean; beside CHAIR_s and the absent-partner
rate it also reports each run's own sampling standard error (from the images scored).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from povid_kedro.hallucination.onpolicy import OnPolicyConfig, source_id
from povid_kedro.modeling.generate import generate
from povid_kedro.params import deep_merge
from povid_kedro.training import DPOTrainingConfig, train_stage1, train_stage2
from povid_kedro.training.noise import GENERATED, NoiseConfig, noisy_image

logger = logging.getLogger(__name__)

ROW_KEYS = ("stages", "stage1", "stage2", "noise", "on_policy")
BASE_ROW = "base"
# Metric -> its sampling standard error in the evaluate pipeline's row.
SAMPLING_SE = {"chair_s": "chair_s_se", "cooc_partner_rate": "cooc_partner_rate_se"}
# The report's columns, in the order (metric key, header).
COLUMNS = (
    ("chair_s", "CHAIR_s"),
    ("chair_i", "CHAIR_i"),
    ("recall", "Recall"),
    ("objects_per_image", "objects / image"),
    ("words_per_caption", "words"),
    ("degenerate_share", "degenerate"),
    ("cooc_partner_rate", "absent-partner"),
    ("cooc_control_rate", "control"),
    ("present_partner_recall", "present-partner recall"),
    *(
        (f"pope_{split}_{key}", f"POPE {split[:3]} {label}")
        for split in ("random", "popular", "adversarial")
        for key, label in (("accuracy", "acc"), ("f1", "F1"), ("yes_ratio", "yes"))
    ),
)

Model = tuple[Any, Any]
Scorer = Callable[[Model], dict[str, float]]
ImageLoader = Callable[[str], Any]
# (the model a stage starts from, the injected pairs, settings) -> the stage's on-policy pairs
OnPolicyMaker = Callable[[Model, pd.DataFrame, OnPolicyConfig], pd.DataFrame]


@dataclass(frozen=True)
class AblationRow:
    """One row: which DPO stages run and what they override.

    Attributes:
        name: Row name (the report's first column, the MLflow metric prefix).
        stages: DPO stages trained, in order (``(2,)``: stage 2 directly on the base model).
        dpo: Overrides of the ``dpo_training`` parameters (``stage1`` / ``stage2`` keys).
        noise: Overrides of the ``noise_trigger`` parameters (``step``, ``mode``, ...).
        on_policy: Overrides of the ``on_policy`` parameters, which a row that names them
            turns on unless it says ``enabled: false`` (``None``: the run's ``on_policy``
            parameters as they are, so that the rows train on what ``kedro run`` trains on).
    """

    name: str
    stages: tuple[int, ...] = (1, 2)
    dpo: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=dict)
    on_policy: dict[str, Any] | None = None


def ablation_rows(
    rows: Mapping[str, Any], noise_steps: Sequence[int] = (), only: Sequence[str] | None = None
) -> list[AblationRow]:
    """The rows of ``ablation.rows``, then one full-POVID row per swept noise step.

    Args:
        rows: Row name -> ``{stages, stage1, stage2, noise, on_policy}`` (each optional; ``{}``
            is full POVID with the configured defaults).
        noise_steps: Noise steps ``k`` swept with full POVID (rows ``povid_k<k>``).
        only: Run just these rows, in the configured order (``None``: all).

    Returns:
        The rows in order.

    Raises:
        ValueError: Naming the row and key, for an unknown key, a stage other than 1 or 2, or
            a row name used twice.
    """
    out: list[AblationRow] = []
    for name, given in rows.items():
        spec = dict(given or {})
        unknown = sorted(set(spec) - set(ROW_KEYS))
        if unknown:
            raise ValueError(
                f"ablation.rows.{name}: unknown keys {unknown}; a row takes {list(ROW_KEYS)}"
            )
        stages = tuple(int(s) for s in spec.get("stages", (1, 2)))
        if not stages or set(stages) - {1, 2} or list(stages) != sorted(set(stages)):
            raise ValueError(f"ablation.rows.{name}.stages: {list(stages)}; use [1], [2] or [1, 2]")
        dpo = {k: dict(spec[k]) for k in ("stage1", "stage2") if k in spec}
        policy = dict(spec["on_policy"] or {}) if "on_policy" in spec else None
        out.append(AblationRow(name, stages, dpo, dict(spec.get("noise") or {}), policy))
    out += [AblationRow(f"povid_k{int(k)}", noise={"step": int(k)}) for k in noise_steps]
    names = [row.name for row in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or BASE_ROW in names:
        raise ValueError(
            f"ablation rows {repeated or [BASE_ROW]} are named twice (`{BASE_ROW}` is the "
            "base model's row); rename them in ablation.rows or drop the step from noise_steps"
        )
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"ablation.only names no row {unknown}; the rows are {names}")
        out = [row for row in out if row.name in only]
    return out


def free_answers_under_noise(
    model: Model, pairs: pd.DataFrame, load_image: ImageLoader, noise: NoiseConfig
) -> pd.DataFrame:
    """``y_n-`` of the ``generated`` mode: the model's free answers under each pair's noisy image
    (seeded per pair id, as the ``noise_trigger`` pipeline makes them).

    Returns:
        ``id``, ``noisy_rejected``.
    """
    clean: dict[str, Any] = {}
    images = []
    for sample_id, path in zip(pairs["id"], pairs["image"], strict=True):
        if path not in clean:
            clean[path] = load_image(path).convert("RGB")
        images.append(noisy_image(clean[path], sample_id, noise))
    answers = generate(*model, images, list(pairs["prompt"]), **noise.generate)
    return pd.DataFrame({"id": pairs["id"].tolist(), "noisy_rejected": answers})


def _stage2_pairs(
    pairs: pd.DataFrame,
    stage_pairs: pd.DataFrame,
    row_noise: NoiseConfig,
    model: Model,
    load_image: ImageLoader,
    cfg: DPOTrainingConfig,
    cache: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """``stage_pairs`` with ``noisy_rejected`` in ``generated`` mode: the base model's free answers
    to the injected ``pairs`` of the stage's task types, decoded once per noise setting and shared
    by the rows and seeds (an on-policy pair takes the answer of the pair it replaced)."""
    if row_noise.mode != GENERATED:
        return stage_pairs
    key = repr((row_noise.step, row_noise.seed, sorted(row_noise.generate.items())))
    if key not in cache:
        task_mix = cfg.stage2.task_mix
        wanted = pairs
        if task_mix is not None and "task_type" in pairs.columns:
            wanted = pairs[pairs["task_type"].isin([t for t, w in task_mix.items() if w > 0])]
        start = time.perf_counter()
        cache[key] = free_answers_under_noise(model, wanted, load_image, row_noise)
        logger.info(
            "ablation: %d free answers under noise k=%d in %.0f s",
            len(wanted),
            row_noise.step,
            time.perf_counter() - start,
        )
    answers = cache[key].rename(columns={"id": "source_id"})
    keyed = stage_pairs.assign(source_id=stage_pairs["id"].map(source_id))
    merged = keyed.merge(answers, on="source_id", how="inner", validate="one_to_one")
    return merged.drop(columns="source_id")


def run_ablation(
    base: Model,
    pairs: pd.DataFrame,
    load_image: ImageLoader,
    score: Scorer,
    rows: Sequence[AblationRow],
    seeds: Sequence[int],
    dpo_params: Mapping[str, Any],
    noise_params: Mapping[str, Any],
    on_policy: tuple[Mapping[str, Any], OnPolicyMaker] | None = None,
) -> dict[str, Any]:
    """Train and score every row for every seed, each from a fresh copy of the base model.

    Args:
        base: ``(model, processor)`` of the base model (left untouched).
        pairs: The preference pairs (``trl_preferences``).
        load_image: Loads a pair's image by its ``image`` path.
        score: The headline metrics of a ``(model, processor)`` on the validation split.
        rows: The rows (see :func:`ablation_rows`).
        seeds: DPO seeds (each stage's ``seed``: data order, LoRA initialisation).
        dpo_params: The ``dpo_training`` parameters the rows override.
        noise_params: The ``noise_trigger`` parameters the rows override.
        on_policy: The ``on_policy`` parameters the rows override and the function that makes
            a stage's pairs (the ``dpo_training`` pairs nodes' function); needed by rows that
            name ``on_policy`` (see :func:`row_policy`). With the parameters enabled, every
            row that does not turn them off trains on on-policy pairs, its SFT-only control
            included.

    Returns:
        ``{"seeds", "base": metrics, "rows": {name: {"stages", "overrides", "runs": [{"seed",
        "train_seconds", "metrics"}]}}}``.
    """
    results: dict[str, Any] = {"seeds": list(seeds), "base": score(base), "rows": {}}
    free_answers: dict[str, pd.DataFrame] = {}
    made: dict[str, pd.DataFrame] = {}  # on-policy pairs of the base model, per settings
    for row in rows:
        runs = []
        noise = NoiseConfig.from_dict(deep_merge(dict(noise_params), row.noise))
        for seed in seeds:
            stage_seeds = {stage: {"seed": seed} for stage in ("stage1", "stage2")}
            cfg = DPOTrainingConfig.from_dict(
                deep_merge(deep_merge(dict(dpo_params), row.dpo), stage_seeds)
            )
            policy = row_policy(row, seed, on_policy)
            model, processor = copy.deepcopy(base[0]), base[1]
            start = time.perf_counter()
            if 1 in row.stages:
                stage1 = _on_policy(1, True, policy, (model, processor), pairs, on_policy, made)
                model, _ = train_stage1(model, processor, stage1, load_image, cfg.stage1)
            if 2 in row.stages:
                from_base = 1 not in row.stages
                stage2 = _on_policy(
                    2, from_base, policy, (model, processor), pairs, on_policy, made
                )
                stage2 = _stage2_pairs(pairs, stage2, noise, base, load_image, cfg, free_answers)
                model, _ = train_stage2(model, processor, stage2, load_image, cfg.stage2, noise)
            seconds = round(time.perf_counter() - start, 1)
            metrics = score((model, processor))
            runs.append({"seed": seed, "train_seconds": seconds, "metrics": metrics})
            logger.info(
                "ablation %s seed %d: CHAIR_s %.3f, recall %.3f, absent-partner %.3f (%.0f s)",
                row.name,
                seed,
                metrics["chair_s"],
                metrics["recall"],
                metrics.get("cooc_partner_rate", math.nan),
                seconds,
            )
        results["rows"][row.name] = {
            "stages": list(row.stages),
            "overrides": {
                **row.dpo,
                **({"noise": row.noise} if row.noise else {}),
                **({"on_policy": row.on_policy} if row.on_policy is not None else {}),
            },
            "runs": runs,
        }
    return results


def row_policy(
    row: AblationRow, seed: int, on_policy: tuple[Mapping[str, Any], OnPolicyMaker] | None
) -> OnPolicyConfig | None:
    """The row's on-policy settings (the run's seed draws the samples), or ``None`` for the
    injected pairs: the run's ``on_policy`` parameters with the row's overrides, which turn
    them on unless the row sets ``enabled: false``."""
    if on_policy is None:
        if row.on_policy is not None:
            raise ValueError(
                f"ablation row {row.name!r} names on_policy, but no pair maker was given"
            )
        return None
    values = dict(on_policy[0])
    if row.on_policy is not None:
        values = deep_merge(values | {"enabled": True}, row.on_policy)
    if not values.get("enabled", False):
        return None
    return OnPolicyConfig.from_dict(values | {"seed": seed})


def _on_policy(
    stage: int,
    from_base: bool,
    policy: OnPolicyConfig | None,
    model: Model,
    pairs: pd.DataFrame,
    on_policy: tuple[Mapping[str, Any], OnPolicyMaker] | None,
    made: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """The pairs a stage trains on: on-policy ones sampled from ``model`` when the row asks for
    them in this stage, else the injected ones. Samples of the base model (``from_base``) are
    made once per settings and seed and shared by rows."""
    if policy is None or stage not in policy.stages or on_policy is None:
        return pairs
    if not from_base:
        return on_policy[1](model, pairs, policy)
    key = repr(sorted(dataclasses.asdict(policy).items()))
    if key not in made:
        made[key] = on_policy[1](model, pairs, policy)
    return made[key]


def summarise(results: Mapping[str, Any]) -> pd.DataFrame:
    """One line per row (the base model first): per metric the mean over seeds (``<m>``), the
    standard deviation over seeds (``<m>_std``) and the standard error of the mean
    (``<m>_se``); for CHAIR_s and the absent-partner rate also the mean sampling standard error
    of one run (``<m>_sampling_se``). The base model is one run: no spread (NaN), and its
    standard error is its sampling error where the metric has one."""
    lines = [{"row": BASE_ROW, "stages": "", "n_seeds": 1, **_stats([results["base"]])}]
    for name, row in results["rows"].items():
        metrics = [run["metrics"] for run in row["runs"]]
        stages = "+".join(str(s) for s in row["stages"])
        lines.append({"row": name, "stages": stages, "n_seeds": len(metrics), **_stats(metrics)})
    return pd.DataFrame(lines)


def _stats(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    keys = [k for k, _ in COLUMNS if all(k in run for run in runs)]
    for key in keys:
        values = [float(run[key]) for run in runs]
        # One run has no spread over seeds; its standard error is its images' sampling error
        # where the metric has one, unknown elsewhere.
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = std
        out[f"{key}_se"] = std / math.sqrt(len(values))
        if key in SAMPLING_SE and all(SAMPLING_SE[key] in run for run in runs):
            sampling = statistics.fmean(float(r[SAMPLING_SE[key]]) for r in runs)
            out[f"{key}_sampling_se"] = sampling
            if len(values) == 1:
                out[f"{key}_se"] = sampling
    return out


def ablation_markdown(table: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The table as markdown: ``mean ± std`` over seeds per cell, then the standard errors of
    the mean (and, for CHAIR_s and the absent-partner rate, of one run's images)."""
    columns = [(k, h) for k, h in COLUMNS if k in table.columns]
    head = ["row", "stages", "seeds", *(h for _, h in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in table.to_dict("records"):
        cells = [str(line["row"]), str(line["stages"] or "–"), str(line["n_seeds"])]
        for key, _ in columns:
            mean, std = line.get(key), line.get(f"{key}_std")
            text = "–" if _missing(mean) else f"{mean:.3f}"
            cells.append(text if _missing(std) else f"{text} ± {std:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    se_cols = [(k, h) for k, h in columns if f"{k}_se" in table.columns]
    lines += [
        "",
        "Standard errors of the mean over seeds (in brackets: one run's sampling error over its "
        "images; a single run's standard error is that sampling error):",
        "",
        "| row | " + " | ".join(h for _, h in se_cols) + " |",
        "|" + "---|" * (len(se_cols) + 1),
    ]
    for line in table.to_dict("records"):
        cells = []
        for key, _ in se_cols:
            se, sampling = line.get(f"{key}_se"), line.get(f"{key}_sampling_se")
            text = "–" if _missing(se) else f"{se:.4f}"
            if not _missing(sampling):
                text += f" ({sampling:.4f})"
            cells.append(text)
        lines.append(f"| {line['row']} | " + " | ".join(cells) + " |")
    return "\n".join(["# Ablation (validation split)", "", *notes, "", *lines, ""])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def ablation_mlflow_metrics(results: Mapping[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Every run's headline metrics in kedro-mlflow's history format: ``<row>.<metric>`` with
    the seed as the step (the base model's row at step 0), so a user filters a row by name."""
    history: dict[str, list[dict[str, float]]] = {
        f"{BASE_ROW}.{k}": [{"step": 0, "value": float(v)}] for k, v in results["base"].items()
    }
    for name, row in results["rows"].items():
        for run in row["runs"]:
            for key, value in run["metrics"].items():
                history.setdefault(f"{name}.{key}", []).append(
                    {"step": int(run["seed"]), "value": float(value)}
                )
    return history
