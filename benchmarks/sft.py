"""Benchmark: one base-model training step, the plain way against the way ``train_sft`` takes it.

All three modes train the default tiny model (``conf/base/parameters_base_model.yml``) on the
same rows of a small default world, with the same loss (descriptions + one-word VQA answers,
VQA weight and rows per step from the config), in one process:

- ``plain``: the step's rows padded into one batch, logits over every position (the model's own
  ``forward``), the weighted loss on them: what a Hugging Face training loop does;
- ``by-task``: each task padded on its own and logits only where a target follows
  (``povid_kedro.modeling.train.accumulate_step``); the one-word questions one row per turn;
- ``by-task+packed``: the same with each image's questions in one sequence (``pack_turns``).

Reported: the median step time of each and its ratio to ``plain``, and the tokens a step feeds
the language model (padding included).

Usage::

    .venv/bin/python benchmarks/sft.py              # 2 threads, 30 timed steps per mode
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.modeling import (  # noqa: E402
    ModelConfig,
    SFTRow,
    TokenizerConfig,
    TrainConfig,
    build_model_and_processor,
    rows_from_llava_instruct,
    train_tokenizer,
)
from povid_kedro.modeling.data import SFTCollator, encode_rows  # noqa: E402
from povid_kedro.modeling.train import (  # noqa: E402
    _by_task,
    _optimizer,
    _task_stream,
    accumulate_step,
    weighted_lm_loss,
)
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402

FILES = {"description": "detail", "vqa": "vqa"}  # task type -> the world's instruction file


def _rows(world: object, weights: dict[str, float], pack: bool) -> list[SFTRow]:
    rows = []
    for task, name in FILES.items():
        for row in rows_from_llava_instruct(
            world.instructions[name], world.train_images, pack_turns=pack
        ):
            row.task, row.weight = task, float(weights.get(task, 1.0))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Time the three modes and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="training images in the world")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    params = project_parameters()
    world_params = params["embedded_world"] | {"n_train_images": args.images}
    world_params["n_eval_images"] = 10
    world = generate_world(WorldConfig.from_dict(world_params))
    base = params["base_model"]
    weights = base.get("task_weights") or {}
    # Rows per step as the config has them (task_batch counts sequences: with packing, one
    # sequence holds all of an image's questions).
    turns = world_params["text"]["short_qa_turns"]
    packed_batch = dict(base["train"]["task_batch"])
    unpacked_batch = dict(packed_batch)
    if base.get("pack_turns"):
        unpacked_batch["vqa"] = packed_batch["vqa"] * turns
    else:
        packed_batch["vqa"] = max(1, unpacked_batch["vqa"] // turns)

    texts = [
        t["value"]
        for f in FILES.values()
        for r in world.instructions[f]
        for t in r["conversations"]
    ]
    tokenizer = train_tokenizer(texts, TokenizerConfig.from_dict(base["tokenizer"]))
    train_cfg = TrainConfig.from_dict(base["train"])
    modes = {
        "plain": (False, unpacked_batch),
        "by-task": (False, unpacked_batch),
        "by-task+packed": (True, packed_batch),
    }
    results = {}
    for mode, (pack, task_batch) in modes.items():
        torch.manual_seed(0)
        model, processor = build_model_and_processor(
            ModelConfig.from_dict(base["model"]), tokenizer
        )
        rows = _rows(world, weights, pack)
        features = encode_rows(processor, rows, train_cfg.max_length)
        collate = SFTCollator(features, processor.tokenizer.pad_token_id)
        tasks = [r.task for r in rows]
        stream = _task_stream(tasks, task_batch, torch.Generator().manual_seed(0))
        optimizer = _optimizer(model, train_cfg, 1e-4)
        model.train()
        times, tokens = [], []
        for step in range(args.warmup + args.steps):
            indices = next(stream)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if mode == "plain":
                batch = collate(indices)
                labels, w = batch.pop("labels"), batch.pop("loss_weights", None)
                weighted_lm_loss(model(**batch).logits, labels, w).backward()
                width = [batch["input_ids"].numel()]
            else:
                batches = [collate(g) for g in _by_task(indices, tasks)]
                width = [b["input_ids"].numel() for b in batches]
                accumulate_step(model, batches)
            optimizer.step()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
                tokens.append(sum(width))
        results[mode] = (statistics.median(times), statistics.mean(tokens), task_batch)

    plain = results["plain"][0]
    print(f"{'mode':16s} {'rows/step':>22s} {'ms/step':>8s} {'vs plain':>9s} {'LM tokens':>10s}")  # noqa: T201
    for mode, (seconds, tokens, task_batch) in results.items():
        print(  # noqa: T201
            f"{mode:16s} {str(task_batch):>22s} {1000 * seconds:8.1f} {plain / seconds:8.2f}x "
            f"{tokens:10.0f}"
        )
    if args.json:
        rows = [
            {
                "measure": f"base-model SFT step, {mode} vs plain",
                "result": f"{1000 * seconds:.1f} ms/step, {tokens:.0f} LM tokens",
                "ratio": plain / seconds,
            }
            for mode, (seconds, tokens, _) in results.items()
            if mode != "plain"
        ]
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
