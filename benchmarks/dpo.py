"""Benchmark: per-step time of POVID stage 1 and stage 2 next to trl's stock DPOTrainer, one run.

All variants train the same LoRA (r 16 on the LM's q/v) on copies of the same default tiny model
(``ModelConfig()``: 96×96 images, 36 image tokens) and one fixed batch of ``--batch`` preference
pairs from the embedded world (every step sees the same pairs). Two numbers per variant:

- ``step``: wall time of a full trainer step inside ``trainer.train()`` (data collation included:
  trl re-processes the images and re-tokenizes every step, the POVID collator pads cached ids);
- ``compute``: ``training_step`` + optimiser step on a pre-collated batch (forwards and backward
  only), the same trainer machinery for every variant.

Variants: stock trl (stage 1 only: stage 2 cannot be expressed in stock trl); POVID stage 1 with
the reference recomputed every step and cached; POVID stage 2 (teacher-forced ``y_n-``) uncached
and cached; stage 2 with generated ``y_n-``; and an emulation of the official code's stage 2
(per sample at batch 1: 3 policy forwards and 3 reference forwards).

Usage::

    .venv/bin/python benchmarks/dpo.py [--batch 8] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.modeling import ModelConfig, build_model_and_processor, train_tokenizer  # noqa: E402
from povid_kedro.training import StageConfig, train_stage1, train_stage2  # noqa: E402
from povid_kedro.training.config import Stage2Config  # noqa: E402
from povid_kedro.training.data import ImageBank, PairCollator, encode_pairs  # noqa: E402
from povid_kedro.training.losses import (  # noqa: E402
    dpo_loss,
    noisy_argmax_labels,
    sequence_logps,
)
from povid_kedro.training.noise import NoiseConfig  # noqa: E402
from povid_kedro.training.trainer import POVIDTrainer, dpo_args, lora_config  # noqa: E402
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402

LORA = {"r": 16, "alpha": 32}
STOCK = "trl DPOTrainer, stage 1 (stock)"
NOISE = NoiseConfig(step=350, seed=0)
SCRATCH = tempfile.mkdtemp(prefix="bench-dpo-")  # trainers create their output_dir eagerly


def _world_pairs(n: int) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    params = project_parameters()["embedded_world"]
    params.update(n_train_images=max(40, n), n_eval_images=8)
    world = generate_world(WorldConfig.from_dict(params))
    rows, texts = [], []
    for record in world.instructions["detail"][:n]:
        human, gpt = record["conversations"][:2]
        chosen = gpt["value"]
        rows.append(
            {
                "id": record["id"],
                "image": record["image"],
                "prompt": human["value"],
                "chosen": chosen,
                "rejected": chosen + " There is also a red umbrella next to it.",
                "noisy_rejected": "The picture shows a kitchen table with a cup and a fork.",
                "split": "train",
            }
        )
        texts += [human["value"], chosen]
    texts += ["There is also a red umbrella next to it.", rows[0]["noisy_rejected"]]
    return pd.DataFrame(rows), world.train_images, texts


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def _compute_time(trainer: Any, batch: dict[str, Any], warmup: int, steps: int) -> list[float]:
    """``training_step`` + optimiser step on one pre-collated batch."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    batch = trainer._prepare_inputs(batch)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _stage_cfg(cls: type, batch: int, steps: int, **extra: Any) -> Any:
    return cls.from_dict(
        {
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.0,
            "logging_steps": 1000,
            "max_length": 512,
            "lora": dict(LORA),
            **extra,
        }
    )


def _stock_trl(model: Any, processor: Any, frame: pd.DataFrame, images: dict, args) -> dict:
    rows = [
        {
            "images": [images[r.image]],
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": r.prompt.replace("<image>", "").strip()},
                    ],
                }
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": r.chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": r.rejected}]}],
        }
        for r in frame.itertuples()
    ]
    cfg = _stage_cfg(StageConfig, args.batch, args.warmup + args.steps)

    def make(max_steps: int) -> DPOTrainer:
        dpo = dpo_args(cfg, os.path.join(SCRATCH, "trl"))
        dpo.max_steps = max_steps
        dpo.remove_unused_columns = True
        return DPOTrainer(
            model=copy.deepcopy(model),
            args=dpo,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
            peft_config=lora_config(cfg),
        )

    trainer = make(args.warmup + args.steps)
    trainer.remove_callback(PrinterCallback)
    timer = _StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    step = timer.times[args.warmup :]
    trainer = make(1)
    batch = trainer.data_collator([dict(r) for r in rows[: args.batch]])
    compute = _compute_time(trainer, batch, args.warmup, args.steps)
    return {"step": step, "compute": compute}


def _povid(model, processor, frame, load_image, args, stage: str, **extra: Any) -> dict:
    cls = StageConfig if stage == "stage1" else Stage2Config
    noise = NoiseConfig(step=NOISE.step, seed=NOISE.seed, mode=extra.pop("mode", "teacher_forced"))
    cfg = _stage_cfg(cls, args.batch, args.warmup + args.steps, **extra)
    if stage == "stage1":
        _, report = train_stage1(copy.deepcopy(model), processor, frame, load_image, cfg)
        branches = "stage1"
    else:
        _, report = train_stage2(copy.deepcopy(model), processor, frame, load_image, cfg, noise)
        branches = noise.mode
    step = [row["step_seconds"] for row in report.step_metrics[args.warmup :]]

    # Compute-only: the same trainer class on one pre-collated batch.
    encoded = encode_pairs(processor, frame, cfg.max_length, with_noisy_rejected=True)
    bank = ImageBank(processor, load_image, noise=noise)
    collator = PairCollator(encoded, bank, processor.tokenizer.pad_token_id, branches)
    trainer = _trainer(model, processor, cfg, collator, "povid")
    if cfg.cache_reference:
        trainer.cache_reference(cfg.reference_batch_size)
    batch = collator(list(range(args.batch)))
    compute = _compute_time(trainer, batch, args.warmup, args.steps)
    return {"step": step, "compute": compute, "cache": report.reference_seconds}


def _trainer(model, processor, cfg, collator: PairCollator, name: str) -> POVIDTrainer:
    """A POVIDTrainer with LoRA on a copy of ``model`` over every pair of ``collator``."""
    return POVIDTrainer(
        copy.deepcopy(model),
        dpo_args(cfg, os.path.join(SCRATCH, name)),
        processor,
        Dataset.from_dict({"pair": list(range(len(collator.pairs)))}),
        collator,
        cfg,
        peft_config=lora_config(cfg),
    )


def _official_style(model, processor, frame, load_image, args) -> dict:
    """Stage 2 as the official code runs it: per sample at batch 1, 3 policy + 3 reference fwd."""
    cfg = _stage_cfg(Stage2Config, 1, 1)
    encoded = encode_pairs(processor, frame, cfg.max_length)
    bank = ImageBank(processor, load_image, noise=NOISE)
    collator = PairCollator(encoded, bank, processor.tokenizer.pad_token_id, "teacher_forced")
    trainer = _trainer(model, processor, cfg, collator, "official")
    trainer.create_optimizer()
    policy = trainer.model
    samples = [trainer._prepare_inputs(collator([i])) for i in range(args.batch)]

    def forward(model: Any, sample: dict, rows: slice, pixels: torch.Tensor) -> torch.Tensor:
        return model(
            input_ids=sample["input_ids"][rows],
            attention_mask=sample["attention_mask"][rows],
            pixel_values=pixels,
        ).logits

    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        policy.train()
        for s in samples:
            chosen, rejected = slice(0, 1), slice(1, 2)
            clean, noisy = s["pixel_values"], s["noisy_pixel_values"]
            logits_c = forward(policy, s, chosen, clean)
            logits_r = forward(policy, s, rejected, clean)
            logits_n = forward(policy, s, chosen, noisy)
            with trainer.as_reference() as ref:
                ref_c = forward(ref, s, chosen, clean)
                ref_r = forward(ref, s, rejected, clean)
                ref_n = forward(ref, s, chosen, noisy)
            labels_c, labels_r = s["labels"][chosen], s["labels"][rejected]
            pc, pr = sequence_logps(logits_c, labels_c), sequence_logps(logits_r, labels_r)
            pn = sequence_logps(logits_c, noisy_argmax_labels(logits_n, labels_c))
            rc, rr = sequence_logps(ref_c, labels_c), sequence_logps(ref_r, labels_r)
            rn = sequence_logps(ref_c, noisy_argmax_labels(ref_n, labels_c))
            loss = 0.5 * dpo_loss(pc, pr, rc, rr).loss + 0.5 * dpo_loss(pc, pn, rc, rn).loss
            (loss / len(samples)).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"step": times, "compute": times}


def main(argv: list[str] | None = None) -> int:
    """Run every variant and print a table of median per-step times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="preference pairs per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    # One thread by default: on a 2-core machine shared with other jobs, 2-thread kernels on tiny
    # tensors stall unpredictably (medians varied 10x between runs).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    frame, images, texts = _world_pairs(args.batch)
    model, processor = build_model_and_processor(ModelConfig(), train_tokenizer(texts))
    load_image = images.__getitem__
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    ids = encode_pairs(processor, frame, 512)
    mean_len = statistics.mean(
        len(p) + len(c) for p, c in zip(ids.prompt_ids, ids.chosen_ids, strict=True)
    )

    results: dict[str, dict] = {}
    results[STOCK] = _stock_trl(model, processor, frame, images, args)
    results["POVID stage 1, reference uncached"] = _povid(
        model, processor, frame, load_image, args, "stage1", cache_reference=False
    )
    results["POVID stage 1, reference cached"] = _povid(
        model, processor, frame, load_image, args, "stage1"
    )
    results["POVID stage 2 teacher-forced, uncached"] = _povid(
        model, processor, frame, load_image, args, "stage2", cache_reference=False
    )
    results["POVID stage 2 teacher-forced, cached"] = _povid(
        model, processor, frame, load_image, args, "stage2"
    )
    results["POVID stage 2 generated y_n-, cached"] = _povid(
        model, processor, frame, load_image, args, "stage2", mode="generated"
    )
    results["official-style stage 2 (bs 1, 3+3 fwd)"] = _official_style(
        model, processor, frame, load_image, args
    )

    print(  # noqa: T201
        f"default tiny model ({n_params:.2f} M params, {ModelConfig().num_image_tokens} image "
        f"tokens), {args.batch} pairs per step, mean prompt+chosen {mean_len:.0f} tokens, "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'variant':44s} {'step ms':>9s} {'compute ms':>11s} {'ref cache s':>12s}")  # noqa: T201
    for name, r in results.items():
        cache = f"{r['cache']:.2f}" if r.get("cache") else "-"
        step = statistics.median(r["step"]) * 1e3
        compute = statistics.median(r["compute"]) * 1e3
        print(f"{name:44s} {step:9.1f} {compute:11.1f} {cache:>12s}")  # noqa: T201
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print("(medians; step = full trainer step incl. data, compute = forwards + backward + AdamW)")  # noqa: T201
    if args.json:
        trl = statistics.median(results[STOCK]["step"])
        rows = [
            {
                "measure": f"DPO step, {name}: trl stock stage 1 / this",
                "result": f"step {statistics.median(r['step']) * 1e3:.0f} ms, compute "
                f"{statistics.median(r['compute']) * 1e3:.0f} ms",
                "ratio": trl / statistics.median(r["step"]),
            }
            for name, r in results.items()
            if name != STOCK
        ]
        settings = f"{n_params:.2f} M params, {args.batch} pairs/step, {args.steps} steps"
        args.json.write_text(
            json.dumps({"threads": args.threads, "settings": settings, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
