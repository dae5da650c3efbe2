"""Benchmark: how a POVID stage-2 step's time and memory grow with batch size and answer length.

The step is stage 2 with teacher-forced ``y_n-`` and the cached reference (the default
``dpo_training`` settings) on the compute-bound ``large`` model of ``benchmarks/dpo.py``. Two
sweeps from one point: pairs per step (answers as long as the world's descriptions), and answer
length (the same pairs with every answer said 1, 2 and 4 times over). At each point: the median
step time, the step's ideal time (its arithmetic as bare model calls, as in ``dpo.py``) and the
peak resident memory during a step above the memory before it. A plot of both sweeps goes to
``--plot``.

Usage::

    .venv/bin/python benchmarks/cost.py [--batches 1 2 4] [--repeats 1 2 4] [--plot cost.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

# benchmarks/ is the script's directory, hence on sys.path: the step and its ideal are dpo.py's.
from dpo import S2, Bench, _timed, peak_above_start_mb

from povid_kedro.training.data import encode_pairs


def point(bench: Bench, pairs: int, answer_repeats: int, steps: int) -> dict[str, Any]:
    """Time one stage-2 step configuration: median step, median ideal, peak memory, tokens."""
    bench.use_pairs(pairs, answer_repeats)
    variant = bench.povid(S2, "stage2", "teacher_forced", cached=True)
    variant.step()  # warm-up
    assert variant.ideal is not None
    step, ideal = [], []
    for _ in range(steps):  # interleaved, so a slow moment spoils both alike
        step += _timed(variant.step, 1)
        ideal += _timed(variant.ideal, 1)
    encoded = encode_pairs(bench.processor, bench.frame, bench.max_length)
    answer = statistics.mean(len(c) for c in encoded.chosen_ids)
    return {
        "pairs": pairs,
        "answer_repeats": answer_repeats,
        "answer_tokens": answer,
        "step_s": statistics.median(step),
        "ideal_s": statistics.median(ideal),
        "peak_mb": peak_above_start_mb(variant.step),
    }


def plot(by_batch: list[dict], by_length: list[dict], path: Path, title: str) -> None:
    """Step time (with the ideal line) and peak memory against both sweeps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, (points, key, xlabel) in enumerate(
        (
            (by_batch, "pairs", "pairs per step"),
            (by_length, "answer_tokens", "answer tokens (chosen, mean)"),
        )
    ):
        x = [p[key] for p in points]
        ax = axes[0][col]
        ax.plot(x, [p["step_s"] for p in points], "o-", label="step")
        ax.plot(x, [p["ideal_s"] for p in points], "s--", label="ideal (bare model calls)")
        ax.set_ylabel("seconds per step")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
        ax = axes[1][col]
        ax.plot(x, [p["peak_mb"] or 0 for p in points], "o-", color="tab:red")
        ax.set_ylabel("peak memory above start (MB)")
        ax.set_xlabel(xlabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Sweep batch size and answer length; print, plot and write the points."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "large"), default="large")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--length-batch", type=int, default=1, help="pairs/step of length sweep")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per point")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    # Room for the longest answers: the description is at most ~110 tokens.
    bench = Bench(args.model, max(args.batches), 1000, answer_room=128 * max(args.repeats) + 64)
    by_batch = [point(bench, b, 1, args.steps) for b in args.batches]
    by_length = [point(bench, args.length_batch, r, args.steps) for r in args.repeats]

    n_params = sum(p.numel() for p in bench.model.parameters()) / 1e6
    settings = (
        f"{args.model} model ({n_params:.1f} M params, {bench.model_cfg.num_image_tokens} image "
        f"tokens), stage 2 teacher-forced with the cached reference, {args.steps} timed steps "
        f"per point, {args.threads} threads"
    )
    print(settings)  # noqa: T201
    print(f"{'pairs':>5s} {'answer tok':>10s} {'step s':>7s} {'ideal s':>7s} {'peak MB':>8s}")  # noqa: T201
    for p in by_batch + by_length:
        print(  # noqa: T201
            f"{p['pairs']:5d} {p['answer_tokens']:10.0f} {p['step_s']:7.2f} {p['ideal_s']:7.2f} "
            f"{p['peak_mb'] or 0:8.0f}"
        )
    if args.plot:
        plot(by_batch, by_length, args.plot, settings)

    def describe(points: list[dict], key: str, unit: str) -> str:
        return "; ".join(
            f"{p[key]:.0f} {unit}: {p['step_s']:.2f} s (ideal {p['ideal_s']:.2f}), "
            f"+{p['peak_mb'] or 0:,.0f} MB"
            for p in points
        )

    first_b, last_b = by_batch[0], by_batch[-1]
    first_l, last_l = by_length[0], by_length[-1]
    per_pair = (last_b["step_s"] / last_b["pairs"]) / (first_b["step_s"] / first_b["pairs"])
    rows = [
        {
            "measure": f"stage-2 step against pairs per step ({args.model} model)",
            "result": describe(by_batch, "pairs", "pairs")
            + f". Time per pair at {last_b['pairs']} pairs: {per_pair:.2f}× that at "
            f"{first_b['pairs']}",
            "ratio": None,
        },
        {
            "measure": f"stage-2 step against answer length, {args.length_batch} pair(s)/step",
            "result": describe(by_length, "answer_tokens", "answer tokens")
            + f". Time grew {last_l['step_s'] / first_l['step_s']:.2f}× for "
            f"{last_l['answer_tokens'] / first_l['answer_tokens']:.2f}× the answer tokens",
            "ratio": None,
        },
    ]
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "settings": settings,
                    "rows": rows,
                    "points": {"by_batch": by_batch, "by_length": by_length},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
