"""Benchmark: answering POPE's three splits, as the evaluate pipeline does against the plain way.

The plain way answers each split on its own, in file order, opening and encoding the question's
image for every question. The pipeline's way (``answer_pope_splits``) asks a question shared by
several splits once, in image order, and encodes each image once per batch. Both run greedily
with the project's POPE settings, interleaved over repetitions after a warm-up, in one process;
the script checks that every answer is the same.

Usage::

    .venv/bin/python benchmarks/pope.py                        # untrained default model
    .venv/bin/python benchmarks/pope.py --model-dir data/06_models/base_model
    .venv/bin/python benchmarks/pope.py --env pretrained_tower --model-dir <that run's base_model>

Without ``--model-dir`` it builds the default tiny model (untrained, so every answer runs to
``max_new_tokens``: the same work for both) with a tokenizer trained on the world's texts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from povid_kedro.datasets.image_folder import ImageFolderDataset  # noqa: E402
from povid_kedro.evaluation import answer_pope_splits  # noqa: E402
from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.ingest.images import ImageFolder  # noqa: E402
from povid_kedro.modeling import (  # noqa: E402
    ModelConfig,
    build_model_and_processor,
    load_model_dir,
    train_tokenizer,
)
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402

# The module, not the function the package exports under the same name.
generation = importlib.import_module("povid_kedro.modeling.generate")


@contextlib.contextmanager
def per_row_images() -> Iterator[None]:
    """Every row through the processor and the vision tower, as before images were shared."""
    shared = generation._can_share_images
    generation._can_share_images = lambda _model, _processor: False
    try:
        yield
    finally:
        generation._can_share_images = shared


def plain(model: Any, processor: Any, images: ImageFolder, splits: dict, ev: dict) -> dict:
    """Each split alone, in file order, each question's image opened and encoded for it."""
    out = {}
    with per_row_images():
        for split, questions in splits.items():
            texts = generation.generate(
                model,
                processor,
                [images.open(q["image"]).convert("RGB") for q in questions],
                [ev["pope_template"].format(question=q["text"]) for q in questions],
                **{**ev["pope_generation"], "progress": False},
            )
            out[split] = [
                {"question_id": q["question_id"], "text": t}
                for q, t in zip(questions, texts, strict=True)
            ]
    return out


def main(argv: list[str] | None = None) -> int:
    """Time both ways and print the times, their ratio and the identical answers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a saved model directory (default: tiny)")
    parser.add_argument("--env", help="Kedro environment whose world the model was trained on")
    parser.add_argument("--questions", type=int, help="per split (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    project = project_parameters(args.env)
    ev = project["evaluate"]
    limit = args.questions or ev["max_pope_questions"]
    # The pipeline's questions are about the first images; 1,200 of them give 5,600 per split.
    n_images = max(1, min(1200, limit // 4))
    world_params = {**project["embedded_world"], "n_train_images": 1, "n_eval_images": n_images}
    world = generate_world(WorldConfig.from_dict(world_params))
    with tempfile.TemporaryDirectory(prefix="bench-pope-") as tmp:
        folder = ImageFolderDataset(str(Path(tmp) / "val2014"))
        folder.save(world.eval_images)
        images = folder.load()
        splits = {split: qs[:limit] for split, qs in world.pope.items()}
        if args.model_dir:
            model, processor = load_model_dir(args.model_dir)
        else:
            texts = [c["value"] for r in world.instructions["detail"] for c in r["conversations"]]
            model, processor = build_model_and_processor(ModelConfig(), train_tokenizer(texts))

        def ours() -> dict:
            return answer_pope_splits(
                model,
                processor,
                images,
                splits,
                template=ev["pope_template"],
                generation={**ev["pope_generation"], "progress": False},
            )

        ways = {"plain": lambda: plain(model, processor, images, splits, ev), "ours": ours}
        answers = {name: way() for name, way in ways.items()}  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                answers[name] = way()
                seconds[name].append(time.perf_counter() - start)

    n = sum(len(qs) for qs in splits.values())
    same = sum(
        a == b for split in splits for a, b in zip(answers["plain"][split], answers["ours"][split])
    )
    asked = len({(q["image"], q["text"]) for qs in splits.values() for q in qs})
    ratios = [p / o for p, o in zip(seconds["plain"], seconds["ours"], strict=True)]
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"model: {args.model_dir or 'untrained default tiny model'}")  # noqa: T201
    print(f"{n} questions in 3 splits, {asked} distinct; {args.threads} threads")  # noqa: T201
    for name, s in seconds.items():
        print(f"{name:>6}: median {median[name]:6.2f} s  ({', '.join(f'{x:.2f}' for x in s)})")  # noqa: T201
    spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
    print(f"speed-up: median {statistics.median(ratios):.2f}x, {spread}")  # noqa: T201
    print(f"identical answers: {same}/{n}")  # noqa: T201
    if args.json:
        row = {
            "measure": f"POPE, 3 splits x {limit} questions ({asked} distinct) per model: "
            "shared questions and images vs each split alone",
            "result": f"{median['ours']:.2f} s vs {median['plain']:.2f} s (median of "
            f"{args.repeats}, ratio {min(ratios):.2f}-{max(ratios):.2f}); identical {same}/{n}",
            "ratio": statistics.median(ratios),
        }
        args.json.write_text(json.dumps({"threads": args.threads, "rows": [row]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
