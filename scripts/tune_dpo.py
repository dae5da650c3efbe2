"""Run POVID's two DPO stages with overrides and score every model on the embedded world.

An experiment driver for choosing ``dpo_training`` defaults, without Kedro: it reads the base
model, the preference pairs and the images a ``kedro run`` left in ``data/`` (embedded default),
trains stage 1 and stage 2 with ``conf/base/parameters_dpo_training.yml`` plus the overrides given
here, and scores the base, stage-1 and stage-2 models the way ``scripts/tune_base_model.py`` scores
a base model: CHAIR_s/CHAIR_i/Recall/objects per image on every evaluation image, the
co-occurrence rates, and POPE per split. It answers the question every DPO result here raises:
does CHAIR fall because the model hallucinates less, or only because it names fewer objects?

    .venv/bin/python scripts/tune_dpo.py --stage1 '{"sft_weight": 0.5}' \\
        --stage2 '{"ld_alpha": 0.5}' --out /tmp/dpo.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tune_base_model import EVAL_PROMPT, POPE_TEMPLATE, deep_merge, evaluate, pope_scores  # noqa: E402

from povid_kedro.images import ImageFolder  # noqa: E402
from povid_kedro.modeling import generate, load_model_dir  # noqa: E402
from povid_kedro.noise import NoiseConfig  # noqa: E402
from povid_kedro.training import train_stage1, train_stage2  # noqa: E402
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "base"
KEYS = ("CHAIRs", "CHAIRi", "Recall", "objects_per_image", "cooccurrence_ratio")


def score(world: Any, model: Any, processor: Any) -> dict[str, Any]:
    """CHAIR, objects per image, co-occurrence and POPE of one model on the evaluation split."""
    files = sorted(world.eval_images)
    answers = generate(
        model,
        processor,
        [world.eval_images[f] for f in files],
        [EVAL_PROMPT] * len(files),
        max_new_tokens=96,
        batch_size=64,
        progress=False,
    )
    metrics = evaluate(world, answers, files)
    out = {k: round(float(metrics[k]), 4) for k in KEYS if k in metrics}
    out["chair_s_se"] = round((metrics["CHAIRs"] * (1 - metrics["CHAIRs"]) / len(files)) ** 0.5, 4)
    out["pope"] = pope_scores(world, model, processor, POPE_TEMPLATE)
    out["pope_f1_mean"] = round(sum(v["f1"] for v in out["pope"].values()) / 3, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train both stages with the overrides, score the three models, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1", default="{}", help="JSON overrides of dpo_training.stage1")
    parser.add_argument("--stage2", default="{}", help="JSON overrides of dpo_training.stage2")
    parser.add_argument("--noise", default="{}", help="JSON overrides of noise_trigger")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="a kedro run's data/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-base", action="store_true", help="do not score the base model")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    world_params = yaml.safe_load((CONF / "parameters_embedded_world.yml").read_text())
    world = generate_world(WorldConfig.from_dict(world_params["embedded_world"]))
    dpo = yaml.safe_load((CONF / "parameters_dpo_training.yml").read_text())["dpo_training"]
    stage1 = deep_merge(dpo["stage1"], json.loads(args.stage1))
    stage2 = deep_merge(dpo["stage2"], json.loads(args.stage2))
    noise_params = yaml.safe_load((CONF / "parameters_noise_trigger.yml").read_text())
    noise = deep_merge(noise_params["noise_trigger"], json.loads(args.noise))
    noise.pop("figure", None)

    pairs = pd.read_parquet(args.data / "05_model_input" / "trl_preferences.parquet")
    images = ImageFolder(args.data / "01_raw" / "world" / "train2014")
    model, processor = load_model_dir(args.data / "06_models" / "base_model")
    report: dict[str, Any] = {"stage1": stage1, "stage2": stage2, "noise": noise}
    if not args.skip_base:
        report["base"] = score(world, model, processor)
    start = time.perf_counter()
    model, r1 = train_stage1(model, processor, pairs, images.open, stage1)
    report["stage1_seconds"] = round(time.perf_counter() - start, 1)
    report["stage1_model"] = score(world, model, processor)
    start = time.perf_counter()
    model, r2 = train_stage2(
        model, processor, pairs, images.open, stage2, NoiseConfig.from_dict(noise)
    )
    report["stage2_seconds"] = round(time.perf_counter() - start, 1)
    report["stage2_model"] = score(world, model, processor)
    report["train_summary"] = {"stage1": r1.summary(), "stage2": r2.summary()}
    text = json.dumps(report, indent=2)
    print(text)  # noqa: T201
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
