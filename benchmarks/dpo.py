"""Benchmark: a POVID training step against trl's stock DPOTrainer, the official structure and
the arithmetic it needs, all interleaved in one process.

Every variant trains the LoRA of ``conf/base/parameters_dpo_training.yml`` (its stage 1 and
stage 2 settings, rows per step from ``--batch``) on a copy of the same model and the same
preference pairs from the embedded world. Two models (``--model``):

- ``tiny``: the default pipeline's model (``conf/base/parameters_base_model.yml``);
- ``large``: a randomly initialised LLaVA with LLaVA-1.5's proportions, scaled down to be
  compute-bound on a CPU: 224 px images in 14 px patches (256 image tokens), a 4-layer vision
  tower of width 256, an 8-layer language model of width 512 (MLP 1376, LLaVA's 11008/4096).

Variants: trl's stock ``DPOTrainer`` (stage 1; stage 2 cannot be expressed in it); POVID stage 1
with the reference recomputed every step and cached; stage 2 with teacher-forced ``y_n-``,
uncached and cached; stage 2 with generated ``y_n-``, cached; and the official code's stage 2
(per sample at batch 1: 3 policy forwards and 3 reference forwards).

Measured per variant, after ``--warmup`` untimed steps of every variant, over ``--repeats``
rounds in which every variant in turn takes one untimed step, then ``--steps`` timed ones (the
order rotates each round):

- ``step``: a full step: the trainer's data loader collates the next batch (trl processes the
  images and tokenizes every step; POVID pads cached ids), then forwards, backward and AdamW;
- ``compute`` (``--compute``): the same on one pre-collated batch (forwards, backward,
  optimiser), so that ``step - compute`` is what collation costs;
- ``ideal``: the arithmetic the step cannot avoid, as bare model calls on its batch: the policy's
  forward and backward over the rows it scores (logits only where an answer token is scored),
  plus the no-grad forwards it must do (the noisy image's argmax in stage 2; the reference,
  where it is not cached). ``ideal / step`` is the step's efficiency against that limit;
- ``peak``: the process's peak resident memory during one more step, above its resident memory
  when the step began (Linux ``clear_refs``/``VmHWM``; malloc trimmed first).

Each ratio is taken within a round (baseline median / candidate median); the table gives the
median over rounds and its range.

Usage::

    .venv/bin/python benchmarks/dpo.py [--model tiny|large] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.modeling import (  # noqa: E402
    ModelConfig,
    TokenizerConfig,
    build_model_and_processor,
    train_tokenizer,
)
from povid_kedro.schema import IGNORE_INDEX  # noqa: E402
from povid_kedro.training import StageConfig  # noqa: E402
from povid_kedro.training.config import Stage2Config  # noqa: E402
from povid_kedro.training.data import (  # noqa: E402
    NOISY_PREFIX,
    ImageBank,
    PairCollator,
    concat_images,
    encode_pairs,
    image_inputs,
    repeat_images,
)
from povid_kedro.training.losses import dpo_loss, noisy_argmax_labels, sequence_logps  # noqa: E402
from povid_kedro.training.noise import NoiseConfig, noise_fields  # noqa: E402
from povid_kedro.training.trainer import POVIDTrainer, dpo_args, lora_config  # noqa: E402
from povid_kedro.world import WorldConfig, generate_world  # noqa: E402

STOCK = "trl stock stage 1"
S1_UNCACHED, S1 = "stage 1, reference uncached", "stage 1, reference cached"
S2_UNCACHED, S2 = "stage 2 teacher-forced, uncached", "stage 2 teacher-forced, cached"
S2_GENERATED = "stage 2 generated y_n-, cached"
OFFICIAL = "official-style stage 2 (bs 1, 3+3 fwd)"

# LLaVA-1.5's shape (CLIP ViT-L/14-336: 1024 wide, 24 layers, 576 tokens; Vicuna-7B: 4096 wide,
# 32 layers, MLP 11008) scaled down until a step takes seconds on two CPU cores.
LARGE = {
    "image_size": 224,
    "patch_size": 14,
    "vision_hidden_size": 256,
    "vision_layers": 4,
    "vision_heads": 4,
    "vision_intermediate_size": 1024,
    "vision_feature_layer": -2,
    "text_hidden_size": 512,
    "text_layers": 8,
    "text_heads": 8,
    "text_kv_heads": 8,
    "text_intermediate_size": 1376,
    "max_position_embeddings": 1024,
}
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


# -- memory ----------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_above_start_mb(fn: Callable[[], None]) -> float | None:
    """Peak resident memory while ``fn`` runs, above the resident memory when it began (Linux)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap, so the start is what lives
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = _status_kb("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return (_status_kb("VmHWM") - start) / 1024


# -- variants --------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of taking a training step, and what it measured."""

    name: str
    step: Callable[[], None]
    compute: Callable[[], None] | None
    ideal: Callable[[], None] | None = None
    cache_seconds: float = 0.0
    times: dict[str, list[list[float]]] = field(default_factory=dict)
    peak_mb: float | None = None


def _optimiser_step(trainer: Any, batch: dict[str, Any]) -> None:
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def _loader(trainer: Any) -> Iterator[dict[str, Any]]:
    """The trainer's own data loader, endlessly: every batch is collated afresh."""
    while True:
        yield from trainer.get_train_dataloader()


def _from_trainer(
    name: str,
    trainer: Any,
    fixed: dict[str, Any] | None = None,
    ideal: Callable[[], None] | None = None,
) -> Variant:
    """Steps of ``trainer``: from its loader, and on ``fixed`` (default: its first batch)."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    batches = _loader(trainer)
    if fixed is None:
        fixed = trainer._prepare_inputs(next(_loader(trainer)))
    return Variant(
        name,
        step=lambda: _optimiser_step(trainer, trainer._prepare_inputs(next(batches))),
        compute=lambda: _optimiser_step(trainer, fixed),
        ideal=ideal,
    )


def _bare(model: Any, ids: torch.Tensor, mask: torch.Tensor, images: Any, keep: int) -> Any:
    return model(
        input_ids=ids, attention_mask=mask, **images, logits_to_keep=keep, use_cache=False
    ).logits


def _ideal(trainer: POVIDTrainer, batch: dict[str, Any], cached: bool) -> Callable[[], None]:
    """Bare model calls doing the arithmetic of one step of ``trainer`` on ``batch``."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b = batch["pair_index"].numel()
    first = int((labels != IGNORE_INDEX).float().argmax(dim=1).min())
    keep = ids.shape[1] - first + 1
    clean = repeat_images(image_inputs(batch), ids.shape[0] // b)
    noisy = image_inputs(batch, NOISY_PREFIX) if trainer.branches == "teacher_forced" else None
    model = trainer.model

    def run() -> None:
        model.train()
        if noisy is not None:
            with torch.no_grad():
                _bare(model, ids[:b], mask[:b], noisy, keep)
        _bare(model, ids, mask, clean, keep).sum().backward()
        if not cached:
            with trainer.as_reference() as ref:
                if noisy is None:
                    _bare(ref, ids, mask, clean, keep)
                else:
                    both = concat_images(clean, noisy)
                    _bare(ref, torch.cat([ids, ids[:b]]), torch.cat([mask, mask[:b]]), both, keep)
        model.zero_grad(set_to_none=True)

    return run


class Bench:
    """The model, its pairs and the stage settings every variant shares."""

    def __init__(self, model: str, batch: int, max_steps: int, answer_room: int = 256) -> None:
        params = project_parameters()
        base, dpo = params["base_model"], params["dpo_training"]
        self.all_pairs, images, texts = _world_pairs(batch)
        self.frame = self.all_pairs
        self.load_image = images.__getitem__
        self.images = images
        tokenizer = train_tokenizer(texts, TokenizerConfig.from_dict(base["tokenizer"]))
        sizes = dict(base["model"])
        if model == "large":
            sizes.update(LARGE)
        self.model_cfg = ModelConfig.from_dict(sizes)
        self.model, self.processor = build_model_and_processor(self.model_cfg, tokenizer)
        max_length = self.model_cfg.num_image_tokens + answer_room
        common = {
            "batch_size": batch,
            "max_steps": max_steps,
            "max_length": max_length,
            "warmup_ratio": 0.0,
            "logging_steps": 10_000,
            "num_threads": 0,
            "output_dir": None,
        }
        self.stage1 = {**dpo["stage1"], **common}
        self.stage2 = {**dpo["stage2"], **common}
        self.noise = NoiseConfig.from_dict(noise_fields(params["noise_trigger"]))
        self.max_length = max_length

    def use_pairs(self, n: int, answer_repeats: int = 1) -> None:
        """Train on the first ``n`` pairs, each answer said ``answer_repeats`` times over."""
        frame = self.all_pairs.head(n).copy()
        for column in ("chosen", "rejected", "noisy_rejected"):
            frame[column] = frame[column].map(lambda text: " ".join([text] * answer_repeats))
        self.frame = frame
        self.stage1["batch_size"] = self.stage2["batch_size"] = n

    def _cfg(self, stage: str, **extra: Any) -> StageConfig:
        if stage == "stage1":
            return StageConfig.from_dict({**self.stage1, **extra})
        return Stage2Config.from_dict({**self.stage2, **extra})

    def _trainer(self, cfg: StageConfig, branches: str, noise: NoiseConfig | None) -> Any:
        encoded = encode_pairs(
            self.processor,
            self.frame,
            cfg.max_length,
            with_noisy_rejected=branches == "generated",
        )
        bank = ImageBank(self.processor, self.load_image, noise=noise, cache=cfg.pixel_cache)
        collator = PairCollator(encoded, bank, self.processor.tokenizer.pad_token_id, branches)
        return POVIDTrainer(
            copy.deepcopy(self.model),
            dpo_args(cfg, os.path.join(SCRATCH, branches)),
            self.processor,
            Dataset.from_dict({"pair": list(range(len(encoded)))}),
            collator,
            cfg,
            peft_config=lora_config(cfg),
        )

    def povid(self, name: str, stage: str, branches: str, cached: bool) -> Variant:
        """A POVID stage's step, as ``train_stage1``/``train_stage2`` build its trainer."""
        cfg = self._cfg(stage, cache_reference=cached)
        noise = None if stage == "stage1" else self.noise
        trainer = self._trainer(cfg, branches, noise)
        seconds = trainer.cache_reference(cfg.reference_batch_size) if cached else 0.0
        fixed = trainer._prepare_inputs(next(_loader(trainer)))
        variant = _from_trainer(name, trainer, fixed, _ideal(trainer, fixed, cached))
        variant.cache_seconds = seconds
        return variant

    def stock_trl(self) -> Variant:
        """trl's own DPOTrainer, stock, on the same pairs with the same LoRA and settings."""
        rows = [
            {
                "images": [self.images[r.image]],
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
                "rejected": [
                    {"role": "assistant", "content": [{"type": "text", "text": r.rejected}]}
                ],
            }
            for r in self.frame.itertuples()
        ]
        cfg = self._cfg("stage1")
        args = dpo_args(cfg, os.path.join(SCRATCH, "trl"))
        args.remove_unused_columns = True
        trainer = DPOTrainer(
            model=copy.deepcopy(self.model),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.processor,
            peft_config=lora_config(cfg),
        )
        # Its arithmetic: the POVID stage-1 uncached ideal on the same pairs (2 + 2 rows).
        twin = self._trainer(cfg, "stage1", None)
        ideal = _ideal(twin, twin._prepare_inputs(next(_loader(twin))), cached=False)
        return _from_trainer(STOCK, trainer, ideal=ideal)

    def official(self) -> Variant:
        """Stage 2 as the official code runs it: per sample at batch 1, 3 policy + 3 reference."""
        cfg = self._cfg("stage2", batch_size=1, cache_reference=False)
        trainer = self._trainer(cfg, "teacher_forced", self.noise)
        trainer.create_optimizer()
        policy = trainer.model
        collator = trainer.pair_collator
        n = len(collator.pairs)

        def forward(model: Any, sample: dict, rows: slice, pixels: torch.Tensor) -> torch.Tensor:
            return model(
                input_ids=sample["input_ids"][rows],
                attention_mask=sample["attention_mask"][rows],
                pixel_values=pixels,
            ).logits

        def one_step(samples: list[dict[str, Any]]) -> None:
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

        fixed = [trainer._prepare_inputs(collator([i])) for i in range(n)]
        return Variant(
            OFFICIAL,
            step=lambda: one_step([trainer._prepare_inputs(collator([i])) for i in range(n)]),
            compute=lambda: one_step(fixed),
        )


def _timed(fn: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _ms(v: Variant, kind: str) -> str:
    return f"{_median(v, kind) * 1e3:,.0f}" if kind in v.times else "-"


def measure(variants: list[Variant], warmup: int, steps: int, repeats: int) -> None:
    """Warm every variant up, then time them in turn, round after round."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    for r in range(repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            # Untimed: the first step after another variant ran pays for the memory that one
            # gave back (page faults of fresh allocations), which the ideal after it would not.
            v.step()
            for kind in ("step", "compute", "ideal"):
                fn = getattr(v, kind)
                if fn is not None:
                    v.times.setdefault(kind, []).append(_timed(fn, steps))
    for v in variants:
        v.peak_mb = peak_above_start_mb(v.step)


def _median(v: Variant, kind: str) -> float:
    return statistics.median(t for rnd in v.times[kind] for t in rnd)


def ratios(over: Variant, kind_over: str, under: Variant, kind_under: str) -> list[float]:
    """Per round: median of ``over`` / median of ``under``."""
    return [
        statistics.median(a) / statistics.median(b)
        for a, b in zip(over.times[kind_over], under.times[kind_under], strict=True)
    ]


def _ratio_text(values: list[float]) -> str:
    return f"range {min(values):.2f}–{max(values):.2f}"


def rows_of(variants: dict[str, Variant], label: str) -> list[dict[str, Any]]:
    """The table rows: the issue's comparisons, then each variant's efficiency and memory."""
    stock, official = variants[STOCK], variants[OFFICIAL]
    rows = []
    for name, baseline, target in (
        (S1, stock, "≥ 1.25"),
        (S1_UNCACHED, stock, ""),
        (S2, stock, "≥ 1.05"),
        (S2_UNCACHED, stock, ""),
        (S2_GENERATED, stock, ""),
        (S2, official, "≥ 2.5"),
        (OFFICIAL, stock, ""),
    ):
        v = variants[name]
        r = ratios(baseline, "step", v, "step")
        ms, baseline_ms = _median(v, "step") * 1e3, _median(baseline, "step") * 1e3
        rows.append(
            {
                "measure": f"{label}: {baseline.name} / {name}"
                + (f" (target {target})" if target else ""),
                "result": f"{ms:,.0f} vs {baseline_ms:,.0f} ms/step ({_ratio_text(r)})",
                "ratio": statistics.median(r),
            }
        )
    for v in variants.values():
        peak = "" if v.peak_mb is None else f", peak +{v.peak_mb:,.0f} MB"
        cache = f", reference cache {v.cache_seconds:.1f} s" if v.cache_seconds else ""
        compute = f", compute {_ms(v, 'compute')} ms" if "compute" in v.times else ""
        times = f"step {_ms(v, 'step')} ms{compute}{peak}{cache}"
        if v.ideal is None:
            rows.append({"measure": f"{label}: {v.name}", "result": times, "ratio": None})
            continue
        r = ratios(v, "ideal", v, "step")
        target = " (target ≥ 0.85)" if v.name in (S1, S2, S2_GENERATED) else ""
        rows.append(
            {
                "measure": f"{label}: {v.name}, ideal / step{target}",
                "result": f"ideal {_median(v, 'ideal') * 1e3:,.0f} ms, {times} ({_ratio_text(r)})",
                "ratio": statistics.median(r),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build every variant, measure them interleaved, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "large"), default="tiny")
    parser.add_argument("--batch", type=int, help="pairs per step (tiny 8, large 2)")
    parser.add_argument("--steps", type=int, help="timed steps per variant per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each variant")
    # Tiny: one thread (2-thread kernels on tiny tensors stall unpredictably on a shared 2-core
    # machine); large: every core, as a compute-bound run would use them.
    parser.add_argument("--threads", type=int)
    parser.add_argument("--compute", action="store_true", help="also time pre-collated steps")
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    large = args.model == "large"
    args.batch = args.batch or (2 if large else 8)
    args.steps = args.steps or (1 if large else 4)
    args.threads = args.threads or (os.cpu_count() or 1 if large else 1)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    start = time.perf_counter()
    bench = Bench(args.model, args.batch, args.warmup + args.repeats * args.steps + 2)
    variants = [
        bench.stock_trl(),
        bench.povid(S1_UNCACHED, "stage1", "stage1", cached=False),
        bench.povid(S1, "stage1", "stage1", cached=True),
        bench.povid(S2_UNCACHED, "stage2", "teacher_forced", cached=False),
        bench.povid(S2, "stage2", "teacher_forced", cached=True),
        bench.povid(S2_GENERATED, "stage2", "generated", cached=True),
        bench.official(),
    ]
    built = time.perf_counter() - start
    if not args.compute:
        for v in variants:
            v.compute = None
    measure(variants, args.warmup, args.steps, args.repeats)
    shutil.rmtree(SCRATCH, ignore_errors=True)

    n_params = sum(p.numel() for p in bench.model.parameters()) / 1e6
    ids = encode_pairs(bench.processor, bench.frame, bench.max_length)
    mean_len = statistics.mean(
        len(p) + len(c) for p, c in zip(ids.prompt_ids, ids.chosen_ids, strict=True)
    )
    settings = (
        f"{args.model} model ({n_params:.1f} M params, {bench.model_cfg.num_image_tokens} image "
        f"tokens), {args.batch} pairs/step, prompt+chosen {mean_len:.0f} tokens; "
        f"{args.repeats} rounds of {args.steps} step(s) per variant after {args.warmup} warm-up"
    )
    print(  # noqa: T201
        f"{settings}; {args.threads} threads, load average {os.getloadavg()[0]:.2f}; "
        f"variants built in {built:.0f} s, measured in {time.perf_counter() - start - built:.0f} s"
    )
    print(f"{'variant':40s} {'step ms':>9s} {'compute ms':>11s} {'ideal ms':>9s} {'peak MB':>8s}")  # noqa: T201
    for v in variants:
        ideal = f"{_median(v, 'ideal') * 1e3:9.0f}" if v.ideal else f"{'-':>9s}"
        peak = f"{v.peak_mb:8.0f}" if v.peak_mb is not None else f"{'-':>8s}"
        print(  # noqa: T201
            f"{v.name:40s} {_ms(v, 'step'):>9s} {_ms(v, 'compute'):>11s} {ideal} {peak}"
        )
    label = f"{args.model} model"
    rows = rows_of({v.name: v for v in variants}, label)
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{ratio:>6s}  {row['measure']}: {row['result']}")  # noqa: T201
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "settings": settings, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
