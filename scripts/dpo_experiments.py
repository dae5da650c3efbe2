"""Compare DPO-stage variants on the embedded world's validation split, over seeds.

An experiment driver for choosing ``dpo_training`` defaults. It reads the project's parameters
with Kedro's own config loader (``conf/base`` + ``conf/local``, or ``--env``), the base model,
pairs and images a ``kedro run`` left in ``data/``, and for every variant (a name -> parameter
overrides) and seed trains the stages with the library functions the ``dpo_training`` nodes
call, then scores the model with the ``evaluate`` pipeline's own node functions (CHAIR, POPE,
co-occurrence, degenerate descriptions) on a **validation split**: the evaluation scenes of the
world's validation seed (``povid_kedro.world.validation_config``), never the evaluation split
itself.

    .venv/bin/python scripts/dpo_experiments.py --seeds 0 1 2 \\
        --variant 'sft_only={"stage1": {"hallucination_weight": 0}, "stage2": \\
        {"hallucination_weight": 0, "noise_weight": 0}}' --variant 'default={}' \\
        --out data/08_reporting/dpo_experiments.json

A variant's overrides are ``{"stage1": {...}, "stage2": {...}, "noise": {...}, "stages": [1, 2],
"on_policy": {...}}`` (``stages``: which stages run; ``[2]`` trains stage 2 on the base model
directly; ``on_policy``: overrides of the ``on_policy`` parameters, which it enables — the
stages whose description pairs are replaced by the model's own scored samples, made by the
``dpo_training`` pairs nodes' function; the seed is the run's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from povid_kedro.experiments import deep_merge, project_parameters  # noqa: E402
from povid_kedro.hallucination.onpolicy import OnPolicyConfig, PairSources  # noqa: E402
from povid_kedro.ingest.images import ImageFolder  # noqa: E402
from povid_kedro.modeling import load_model_dir  # noqa: E402
from povid_kedro.pipelines.ablation.nodes import (  # noqa: E402
    score_on_split,
    validation_split_node,
)
from povid_kedro.training import DPOTrainingConfig, train_stage1, train_stage2  # noqa: E402
from povid_kedro.training.noise import NoiseConfig, noise_fields  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = (
    "chair_s",
    "chair_i",
    "recall",
    "present_partner_recall",
    "objects_per_image",
    "words_per_caption",
    "degenerate_share",
    "cooc_partner_rate",
    "cooc_partner_rate_se",
    "cooc_control_rate",
    "pope_random_f1",
    "pope_popular_f1",
    "pope_adversarial_f1",
    "pope_random_accuracy",
    "pope_random_yes_ratio",
    "pope_adversarial_yes_ratio",
)


class ValidationSplit:
    """The validation world's evaluation scenes (the ablation pipeline's split), written once
    as images."""

    def __init__(self, world_params: dict[str, Any], n_images: int, root: Path) -> None:
        images, self.truth = validation_split_node(world_params, {"validation_images": n_images})
        root.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            image.save(root / name)
        self.images = ImageFolder(root)

    def score(self, model: Any, processor: Any, params: dict[str, Any]) -> dict[str, float]:
        """The evaluate pipeline's headline row for one model on this split."""
        chair, row = score_on_split((model, processor), self.images, self.truth, params)
        self.last_degenerate = chair["degenerate"]["examples"][:5]
        return row


_ON_POLICY: dict[str, tuple[pd.DataFrame, dict[str, float]]] = {}


def on_policy(
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    cfg: OnPolicyConfig,
    data: Path,
    cache_key: str | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The ``dpo_training`` pairs node's function on a run's data; with ``cache_key`` made once
    in this process (stage-1 pairs from the base model: variants that differ only in training
    share them)."""
    if cache_key is not None and cache_key in _ON_POLICY:
        made, stats = _ON_POLICY[cache_key]
        return made, dict(stats)
    world = data / "01_raw" / "world"
    sources = PairSources(
        ImageFolder(world / "train2014").open,
        lambda: json.loads((world / "annotations" / "instances_train2014.json").read_text()),
        (world / "synonyms.txt").read_text(),
        json.loads((world / "partners.json").read_text()),
        json.loads((world / "description_grammar.json").read_text())["sentence_forms"],
    )
    start = time.perf_counter()
    made, stats = sources((model, processor), pairs, cfg)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    if cache_key is not None:
        _ON_POLICY[cache_key] = made, stats
    return made, dict(stats)


def run_variant(
    overrides: dict[str, Any],
    seed: int,
    params: dict[str, Any],
    data: Path,
    split: ValidationSplit,
    pairs_path: Path | None = None,
) -> dict[str, Any]:
    """Train one variant with one seed from the base model and score it."""
    dpo = deep_merge(
        params["dpo_training"],
        {k: v for k, v in overrides.items() if k not in ("noise", "on_policy")},
    )
    stages = dpo.pop("stages", [1, 2])
    for stage in ("stage1", "stage2"):
        dpo[stage]["seed"] = seed
    cfg = DPOTrainingConfig.from_dict(dpo)
    noise_params = deep_merge(params["noise_trigger"], overrides.get("noise", {}))
    noise = NoiseConfig.from_dict(noise_fields(noise_params))
    # A variant that names on_policy turns it on; the run's seed draws the samples.
    policy = OnPolicyConfig.from_dict(
        deep_merge(params["on_policy"], overrides.get("on_policy", {}))
        | ({"enabled": True, "seed": seed} if "on_policy" in overrides else {})
    )
    pairs = pd.read_parquet(pairs_path or data / "05_model_input" / "trl_preferences.parquet")
    out: dict[str, Any] = {"seed": seed}
    images = ImageFolder(data / "01_raw" / "world" / "train2014")
    model, processor = load_model_dir(data / "06_models" / "base_model")
    start = time.perf_counter()
    if 1 in stages:
        stage_pairs = pairs
        if policy.enabled and 1 in policy.stages:
            key = json.dumps([dataclasses.asdict(policy)], sort_keys=True)
            stage_pairs, out["on_policy"] = on_policy(model, processor, pairs, policy, data, key)
        model, report = train_stage1(model, processor, stage_pairs, images.open, cfg.stage1)
        out["stage1_final"] = report.summary()
    if 2 in stages:
        stage_pairs = pairs
        if policy.enabled and 2 in policy.stages:
            # From the model stage 2 starts from (the base model when stage 1 is skipped).
            key = None if 1 in stages else json.dumps([dataclasses.asdict(policy)], sort_keys=True)
            stage_pairs, out["on_policy_stage2"] = on_policy(
                model, processor, pairs, policy, data, key
            )
        model, report = train_stage2(model, processor, stage_pairs, images.open, cfg.stage2, noise)
        out["stage2_final"] = report.summary()
    out["train_seconds"] = round(time.perf_counter() - start, 1)
    out["metrics"] = split.score(model, processor, params["evaluate"])
    out["degenerate_examples"] = split.last_degenerate
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Mean and standard deviation over seeds of each headline metric."""
    table: dict[str, list[float]] = {}
    for key in HEADLINE:
        values = [r["metrics"][key] for r in runs if key in r["metrics"]]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[key] = [round(statistics.fmean(values), 4), round(spread, 4)]
    return table


def main(argv: list[str] | None = None) -> int:
    """Run every variant for every seed; print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-images", type=int, default=1200)
    parser.add_argument(
        "--pope-questions", type=int, default=None, help="answer only the first N per split"
    )
    parser.add_argument("--base", action="store_true", help="also score the base model")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="a kedro run's data/")
    parser.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="preference pairs to train on (default: the run's trl_preferences.parquet)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--env", default=None, help="Kedro environment over conf/base (default: conf/local)"
    )
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    params = project_parameters(args.env)
    if args.pope_questions:
        params["evaluate"]["max_pope_questions"] = args.pope_questions
    with tempfile.TemporaryDirectory(prefix="povid-val-") as tmp:
        split = ValidationSplit(params["embedded_world"], args.val_images, Path(tmp))
        results: dict[str, Any] = {"val_images": args.val_images, "variants": {}}
        if args.base:
            model, processor = load_model_dir(args.data / "06_models" / "base_model")
            results["base"] = split.score(model, processor, params["evaluate"])
        for spec in args.variant:
            name, _, text = spec.partition("=")
            overrides = json.loads(text or "{}")
            runs = [
                run_variant(overrides, s, params, args.data, split, args.pairs) for s in args.seeds
            ]
            results["variants"][name] = {
                "overrides": overrides,
                "runs": runs,
                "mean_std": summarise(runs),
            }
            logging.info("%s: %s", name, results["variants"][name]["mean_std"])
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "variants"}, indent=2))  # noqa: T201
    for name, variant in results["variants"].items():
        print(name, json.dumps(variant["mean_std"]))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
