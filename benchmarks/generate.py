"""Benchmark: describe N evaluation images one at a time vs. in batches, in one process.

Batched decoding (left padding, KV cache) must be at least 4× faster than one prompt at a time
for 64 descriptions on a 2-core CPU. Both runs decode greedily with the same settings; the script
also checks that they return the same answers.

Usage::

    .venv/bin/python benchmarks/generate.py                      # untrained default model
    .venv/bin/python benchmarks/generate.py --model-dir data/06_models/base_model
    .venv/bin/python benchmarks/generate.py --model-dir data/06_models/base_model -n 128 \\
        --sample-batch-sizes 64 256 512      # on-policy sampling (k per image) by batch size

Without ``--model-dir`` it builds the default tiny model (untrained, so every answer runs to
``--max-new-tokens``: the same work in both modes) with a tokenizer trained on a small world.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.hallucination.onpolicy import (  # noqa: E402
    OnPolicyConfig,
    sample_descriptions,
)
from povid_kedro.modeling import (  # noqa: E402
    ModelConfig,
    build_model_and_processor,
    generate,
    load_model_dir,
    train_tokenizer,
)
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time both modes and print the times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a saved model directory (default: tiny)")
    parser.add_argument("-n", type=int, default=64, help="descriptions to generate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sample-batch-sizes",
        type=int,
        nargs="+",
        help="also sample the on_policy parameters' k descriptions per image at these batch "
        "sizes (each against the first)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    project = project_parameters()
    params = project["embedded_world"]
    params.update(n_train_images=200, n_eval_images=args.n)
    world = generate_world(WorldConfig.from_dict(params))
    images = [world.eval_images[name] for name in sorted(world.eval_images)][: args.n]
    if args.model_dir:
        model, processor = load_model_dir(args.model_dir)
    else:
        texts = [c["value"] for r in world.instructions["detail"] for c in r["conversations"]]
        model, processor = build_model_and_processor(ModelConfig(), train_tokenizer(texts))
    prompts = [project["evaluate"]["description_prompt"]] * len(images)
    kwargs = {"max_new_tokens": args.max_new_tokens, "progress": False}

    generate(model, processor, images[:2], prompts[:2], **kwargs)  # warm-up
    start = time.perf_counter()
    single = [generate(model, processor, [im], [p], **kwargs)[0] for im, p in zip(images, prompts)]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = generate(model, processor, images, prompts, batch_size=args.batch_size, **kwargs)
    batched_s = time.perf_counter() - start

    new_tokens = sum(len(processor.tokenizer(a)["input_ids"]) for a in batched)
    print(f"model: {args.model_dir or 'untrained default tiny model'}")  # noqa: T201
    shape = f"{len(images)} descriptions, max_new_tokens={args.max_new_tokens}"
    print(f"{shape}, {new_tokens} new tokens in all")  # noqa: T201
    print(f"one at a time:    {single_s:7.2f} s")  # noqa: T201
    print(f"batched (bs={args.batch_size:>3}): {batched_s:7.2f} s")  # noqa: T201
    print(f"speed-up:         {single_s / batched_s:7.1f}x")  # noqa: T201
    same = sum(a == b for a, b in zip(single, batched))
    print(f"identical answers: {same}/{len(images)}")  # noqa: T201
    rows = [
        {
            "measure": f"{len(images)} descriptions: batched (bs {args.batch_size}) vs one "
            "at a time",
            "result": f"{batched_s:.2f} s vs {single_s:.2f} s; identical {same}/{len(images)}",
            "ratio": single_s / batched_s,
        }
    ]
    if args.sample_batch_sizes:
        rows += _sampling(model, processor, images, prompts, project, args.sample_batch_sizes)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


def _sampling(
    model: Any,
    processor: Any,
    images: list[Any],
    prompts: list[str],
    project: dict[str, Any],
    batch_sizes: list[int],
) -> list[dict[str, Any]]:
    """On-policy sampling with the pairs nodes' own function (k samples of each image, which
    share its encoding) at each batch size; rows of each batch size against the first."""
    policy = OnPolicyConfig.from_dict(project["on_policy"])
    rows = [{"image": i, "prompt": prompt} for i, prompt in enumerate(prompts)]
    n = len(rows) * policy.samples_per_image
    seconds = {}
    for size in batch_sizes:
        cfg = dataclasses.replace(policy, batch_size=size)
        start = time.perf_counter()
        sample_descriptions(model, processor, rows, lambda i: images[int(i)], cfg)
        seconds[size] = time.perf_counter() - start
        rate = n / seconds[size]
        print(f"sampling {n} (k={cfg.samples_per_image}), bs {size:>3}: {rate:6.1f} descriptions/s")  # noqa: T201
    first = batch_sizes[0]
    return [
        {
            "measure": f"on-policy sampling, {n} descriptions: bs {size} vs {first}",
            "result": f"{n / seconds[size]:.0f} vs {n / seconds[first]:.0f} descriptions/s",
            "ratio": seconds[first] / seconds[size],
        }
        for size in batch_sizes[1:]
    ]


if __name__ == "__main__":
    sys.exit(main())
