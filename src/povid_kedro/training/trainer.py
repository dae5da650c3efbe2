"""POVID's two-stage DPO engine, built on trl's ``DPOTrainer``.

:class:`POVIDTrainer` subclasses trl 1.16's ``DPOTrainer`` and keeps what it does well: the
transformers training loop (AdamW, schedule, gradient accumulation and clipping, bf16 autocast,
gradient checkpointing, checkpoints, ``report_to`` integrations), peft wrapping with the reference
as *the same model with the adapter disabled*, dropout disabling and metric logging. It replaces
the two things stock trl cannot express (the authors' PR to trl was closed unmerged):

- ``_compute_loss``: stage 2's image-side branch needs a per-branch image (the noisy one), and the
  official ``y_n-`` is teacher-forced from the noisy-image argmax (see
  :func:`~povid_kedro.training.losses.teacher_forced_noisy_logps`);
- the data: pairs are checked and tokenized once by :mod:`povid_kedro.training.data`, so
  ``_prepare_dataset`` is the identity and the collator is :class:`~.data.PairCollator`.

Forwards per optimiser micro-step (``B`` pairs), against the official code's 3 policy + 3 reference
forwards per sample at batch 1:

- stage 1: one policy forward over ``[chosen; rejected]`` (``2B`` rows);
- stage 2, ``teacher_forced``: the same forward (its chosen logits give both ``log π(y+)`` and the
  teacher-forced ``log π(y_n-)``) plus one no-grad forward of the chosen rows under the noisy image,
  only for its argmax (kept out of the gradient forward: it would add ``B`` rows to the backward
  and to the stored activations for nothing);
- stage 2, ``generated``: one policy forward over ``[chosen; rejected; noisy_rejected]``;
- reference: none when cached (default: the reference is frozen and the noise is seeded per sample,
  so its log-probs are computed once before training), else one no-grad forward over all rows,
  the noisy chosen rows included.

Merge order (the official code's launch scripts leave it ambiguous, and it changes the result):
stage 1 trains adapter A on the base model ``M0`` against reference ``M0`` and merges it,
``M1 = M0 + A``; stage 2 trains a fresh adapter B on ``M1`` against reference ``M1`` (adapter
disabled) and merges it, ``M2 = M1 + B``. Each adapter is merged into exactly the weights it was
trained on, before the next stage starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate.utils import DistributedType, is_peft_model, parse_flag_from_env
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import use_adapter

from povid_kedro.modeling.hf_dir import save_model_dir, weights_digest
from povid_kedro.modeling.train import freeze_norm_statistics
from povid_kedro.schema import IGNORE_INDEX
from povid_kedro.training.checkpoints import (
    StepsCheckpointer,
    claim_output_dir,
    load_reference,
    load_steps,
    run_fingerprint,
    save_reference,
)
from povid_kedro.training.config import Stage2Config, StageConfig
from povid_kedro.training.data import (
    NOISY_PREFIX,
    STAGE1,
    Branches,
    EncodedPairs,
    ImageBank,
    ImageInputs,
    ImageLoader,
    InvalidPair,
    PairCollator,
    concat_images,
    encode_pairs,
    image_inputs,
    log_invalid_pairs,
    repeat_images,
    require_pairs,
)
from povid_kedro.training.losses import (
    dpo_loss,
    image_dependent_labels,
    length_desensitised_logps,
    noisy_argmax_labels,
    per_token_logps,
    without_end,
)
from povid_kedro.training.noise import GENERATED, TEACHER_FORCED, NoiseConfig

logger = logging.getLogger(__name__)

BRANCH_NAMES = {"h": "hallucination", "n": "noise"}
"""Short keys of the two DPO branches (cache keys) → metric prefixes."""

Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""``{"chosen" | "rejected" | "noisy": (per-token log-probs (B, K), answer mask (B, K))}``."""


@contextlib.contextmanager
def _checkpointing_off(model: Any, kwargs: dict[str, Any] | str | None) -> Iterator[None]:
    """Switch activation checkpointing off for no-grad forwards (nothing to recompute there)."""
    enabled = bool(getattr(model, "is_activation_checkpointing", False))
    if enabled:
        model.activation_checkpointing_disable()
    try:
        yield
    finally:
        if enabled:
            model.activation_checkpointing_enable(kwargs)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or a gradient) became NaN or infinite.

    Attributes:
        step: Optimiser steps completed with finite values (the last good state).
        checkpoint_dir: Directory of the last good (merged) model, when it was saved.
        report: The partial :class:`TrainReport`, when available.
    """

    def __init__(
        self,
        message: str,
        step: int,
        checkpoint_dir: str | None = None,
        report: TrainReport | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_dir = checkpoint_dir
        self.report = report


@dataclass
class TrainReport:
    """What a stage produced besides the merged model (everything MLflow needs).

    Attributes:
        stage: ``"stage1"`` or ``"stage2"``.
        branches: ``"stage1"``, ``"teacher_forced"`` or ``"generated"``.
        steps: Optimiser steps taken.
        seconds: Wall time of the whole stage (checks, caching, training, merge).
        reference_seconds: Time spent caching the reference log-probs (0 when not cached).
        step_metrics: One dict per optimiser step: ``step``, ``epoch``, ``learning_rate``,
            ``step_seconds`` (wall time since the previous step, data included), ``loss`` and, per
            branch (``hallucination``, ``noise``), ``<branch>/loss``, ``/rewards_chosen``,
            ``/rewards_rejected``, ``/margins``, ``/accuracy``, ``/logps_chosen``,
            ``/logps_rejected`` (means over the step's micro-batches).
        eval_metrics: The same per-branch metrics on the eval split after training
            (``eval/<branch>/...``), when there are eval pairs.
        invalid_pairs: Every pair that was not used (train and eval), logged once.
        n_train_pairs: Valid training pairs.
        n_eval_pairs: Valid eval pairs.
        n_unused_pairs: Training pairs left out because ``max_steps`` would not reach them
            (``pairs_for_steps_only``).
        config: The stage config (and noise config in stage 2) as a flat dict, for MLflow params.
    """

    stage: str
    branches: Branches
    steps: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0
    step_metrics: list[dict[str, float]] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    invalid_pairs: list[InvalidPair] = field(default_factory=list)
    n_train_pairs: int = 0
    n_eval_pairs: int = 0
    n_unused_pairs: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def history(self) -> dict[str, list[tuple[int, float]]]:
        """Per-metric ``[(step, value), ...]`` series (for ``mlflow.log_metric(..., step=)``)."""
        out: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in self.step_metrics:
            for key, value in row.items():
                if key != "step":
                    out[key].append((int(row["step"]), float(value)))
        return dict(out)

    def summary(self) -> dict[str, float]:
        """Final values: the last step's metrics, the mean step time, and the eval metrics."""
        out: dict[str, float] = {"steps": float(self.steps), "seconds": self.seconds}
        if self.step_metrics:
            out.update({k: float(v) for k, v in self.step_metrics[-1].items() if k != "step"})
            times = [row["step_seconds"] for row in self.step_metrics]
            out["mean_step_seconds"] = sum(times) / len(times)
        out.update(self.eval_metrics)
        out["invalid_pairs"] = float(len(self.invalid_pairs))
        out["train_pairs"] = float(self.n_train_pairs)
        out["unused_pairs"] = float(self.n_unused_pairs)
        return out


class POVIDTrainer(DPOTrainer):
    """trl's ``DPOTrainer`` with POVID's branches, batched forwards and a reference cache.

    Args:
        model: The policy (a ``LlavaForConditionalGeneration`` or another image-text-to-text model
            whose forward takes ``pixel_values`` and ``logits_to_keep``).
        args: trl ``DPOConfig`` (see :func:`dpo_args`).
        processor: The model's processor.
        train_dataset: A ``datasets.Dataset`` with one column ``pair`` (indices into the collator's
            encoded pairs).
        collator: The :class:`~povid_kedro.training.data.PairCollator`; its ``branches`` selects the
            stage (``"stage1"``, ``"teacher_forced"``, ``"generated"``).
        stage_cfg: Loss settings (β, loss type, LD-DPO α, branch weights, projector lr).
        peft_config: LoRA config (the reference is then the model with the adapter disabled).
        ref_model: A frozen reference, for full fine-tuning without peft.
        callbacks: Extra ``TrainerCallback`` s.
    """

    def __init__(
        self,
        model: Any,
        args: DPOConfig,
        processor: Any,
        train_dataset: Dataset,
        collator: PairCollator,
        stage_cfg: StageConfig,
        peft_config: LoraConfig | None = None,
        ref_model: Any | None = None,
        callbacks: Sequence[TrainerCallback] | None = None,
    ) -> None:
        self.stage_cfg = stage_cfg
        self.branches = collator.branches
        if isinstance(stage_cfg, Stage2Config) and self.branches != STAGE1:
            self.branch_weights = {"h": stage_cfg.hallucination_weight, "n": stage_cfg.noise_weight}
        else:
            self.branch_weights = {"h": stage_cfg.hallucination_weight}
        self._micro_metrics: list[dict[str, float]] = []
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            processing_class=processor,
            peft_config=peft_config,
            callbacks=list(callbacks or []),
        )

    # Trainer types these loosely (an optional model, any collator); the stages set both.
    @property
    def policy(self) -> torch.nn.Module:
        """The model being trained."""
        if self.model is None:
            raise RuntimeError("the trainer has no model")
        return self.model

    @property
    def pair_collator(self) -> PairCollator:
        """The :class:`PairCollator` the trainer was built with."""
        if not isinstance(self.data_collator, PairCollator):
            raise TypeError(f"expected a PairCollator, got {type(self.data_collator).__name__}")
        return self.data_collator

    # -- data ---------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        """Identity: pairs were checked and tokenized by :mod:`povid_kedro.training.data`."""
        return dataset

    # -- optimiser ------------------------------------------------------------------------------

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """trl's optimiser, with the projector's parameters in their own group if it has an lr."""
        projector_lr = self.stage_cfg.lora.projector_lr
        if self.optimizer is not None or projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.policy if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = defaultdict(list)
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups[("multi_modal_projector" in name, name in decay)].append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                **({"lr": projector_lr} if projector else {}),
            }
            for (projector, decays), params in groups.items()
        ]
        # Typed as a PreTrainedModel; it only reads modules and parameters (a peft model is fine).
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
            self.args,
            opt_model,  # type: ignore[arg-type]
        )
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # -- forwards -------------------------------------------------------------------------------

    @staticmethod
    def _logits(
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: ImageInputs,
        keep: int,
    ) -> torch.Tensor:
        # logits_to_keep: only the last `keep` positions go through the LM head, (R, keep, V).
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **images,
            logits_to_keep=keep,
            use_cache=False,
        ).logits

    def sequence_terms(
        self, model: Any, inputs: Mapping[str, torch.Tensor], reference: bool
    ) -> Terms:
        """Per-token answer log-probs of every row block of a batch, in as few forwards as possible.

        Args:
            model: The policy, or the reference (then called under ``no_grad``).
            inputs: A :class:`~.data.PairCollator` batch on the model's device.
            reference: Batch the noisy chosen rows into the clean forward (no gradient needed).

        Returns:
            ``chosen``, ``rejected`` and, in stage 2, ``noisy`` (teacher-forced or generated
            ``y_n-``).
        """
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]  # (R, T)
        labels = inputs["labels"]  # (R, T)
        b = inputs["pair_index"].numel()
        blocks = input_ids.shape[0] // b
        width = input_ids.shape[1]
        # Logits are needed from the position before the earliest answer token onwards only.
        first_answer = int((labels != IGNORE_INDEX).float().argmax(dim=1).min())
        keep = width - first_answer + 1
        labels = labels[:, width - keep :]  # (R, keep), aligned with the kept logits
        clean_images = repeat_images(image_inputs(inputs), blocks)  # pixel_values (R, 3, H, W)
        teacher_forced = self.branches == TEACHER_FORCED
        noisy_logits = None
        if teacher_forced and reference:
            logits = self._logits(
                model,
                torch.cat([input_ids, input_ids[:b]]),
                torch.cat([attention_mask, attention_mask[:b]]),
                concat_images(clean_images, image_inputs(inputs, NOISY_PREFIX)),
                keep,
            )  # (R + B, keep, V)
            clean_logits, noisy_logits = logits[:-b], logits[-b:]
        else:
            if teacher_forced:
                # Only its argmax is used: no gradient, and no checkpointing recompute either.
                with (
                    torch.no_grad(),
                    _checkpointing_off(self.policy, self.args.activation_checkpointing_kwargs),
                ):
                    noisy_logits = self._logits(
                        model,
                        input_ids[:b],
                        attention_mask[:b],
                        image_inputs(inputs, NOISY_PREFIX),
                        keep,
                    )  # (B, keep, V)
            clean_logits = self._logits(model, input_ids, attention_mask, clean_images, keep)
        token_logps, mask = per_token_logps(clean_logits, labels)  # (R, keep-1) each
        terms: Terms = {
            "chosen": (token_logps[:b], mask[:b]),
            "rejected": (token_logps[b : 2 * b], mask[b : 2 * b]),
        }
        if self.branches == GENERATED:
            terms["noisy"] = (token_logps[2 * b :], mask[2 * b :])
        elif teacher_forced:
            assert noisy_logits is not None
            # Each model's own noisy argmax, scored by its own clean logits of y+.
            noisy_labels = noisy_argmax_labels(noisy_logits, labels[:b])
            cfg = self.stage_cfg
            assert isinstance(cfg, Stage2Config)  # teacher-forced y_n- exists in stage 2 only
            if cfg.noise_positions == "image_dependent":
                noisy_labels = image_dependent_labels(noisy_labels, clean_logits[:b], labels[:b])
            if not cfg.noise_contrast_end:
                noisy_labels = without_end(noisy_labels, labels[:b])
            terms["noisy"] = per_token_logps(clean_logits[:b], noisy_labels)
        return terms

    def branch_logps(self, terms: Terms) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Sequence log-probs of each branch's chosen and rejected answers, and answer lengths.

        Args:
            terms: Output of :meth:`sequence_terms`.

        Returns:
            ``(logps, lengths)``, keyed ``chosen_h``, ``rejected_h`` (and ``chosen_n``,
            ``rejected_n`` in stage 2), each ``(B,)``. With LD-DPO the chosen log-prob depends on
            the rejection it is paired with, hence one per branch.
        """
        logps: dict[str, torch.Tensor] = {}
        lengths: dict[str, torch.Tensor] = {}
        chosen_tokens, chosen_mask = terms["chosen"]
        for key, rejected_name in (("h", "rejected"), ("n", "noisy")):
            if rejected_name not in terms:
                continue
            rejected_tokens, rejected_mask = terms[rejected_name]
            if self.stage_cfg.ld_alpha is None:
                chosen, rejected = chosen_tokens.sum(-1), rejected_tokens.sum(-1)
            else:
                chosen, rejected = length_desensitised_logps(
                    chosen_tokens,
                    chosen_mask,
                    rejected_tokens,
                    rejected_mask,
                    self.stage_cfg.ld_alpha,
                )
            logps[f"chosen_{key}"], logps[f"rejected_{key}"] = chosen, rejected
            lengths[f"chosen_{key}"] = chosen_mask.sum(-1)
            lengths[f"rejected_{key}"] = rejected_mask.sum(-1)
        return logps, lengths

    @contextlib.contextmanager
    def as_reference(self) -> Iterator[Any]:
        """The reference model, in eval mode and without gradients, for the block's duration."""
        model = self.ref_model if self.ref_model is not None else self.policy
        adapter: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.policy):
            adapter = use_adapter(self.accelerator.unwrap_model(self.policy), adapter_name=None)
        was_training = model.training
        model.eval()
        try:
            with (
                torch.no_grad(),
                _checkpointing_off(self.policy, self.args.activation_checkpointing_kwargs),
                adapter,
                self.accelerator.autocast(),
            ):
                yield model
        finally:
            model.train(was_training)

    def reference_logps(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference log-probs of a batch, keyed like :meth:`branch_logps` (no gradient)."""
        with self.as_reference() as model:
            return self.branch_logps(self.sequence_terms(model, inputs, reference=True))[0]

    def cache_reference(self, batch_size: int) -> float:
        """Compute the reference log-probs of every training pair once; hand them to the collator.

        Valid because the reference never changes and each pair's noise is seeded by its id; the
        loss is then the same as when they are recomputed every step.

        Args:
            batch_size: Pairs per reference forward.

        Returns:
            Seconds spent.
        """
        start = time.perf_counter()
        collator = self.pair_collator
        collator.reference = None
        n = len(collator.pairs)
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for first in range(0, n, batch_size):
            batch = self._prepare_inputs(collator(list(range(first, min(n, first + batch_size)))))
            for key, values in self.reference_logps(batch).items():
                parts[key].append(values.float().cpu())
        collator.reference = {key: torch.cat(values) for key, values in parts.items()}
        seconds = time.perf_counter() - start
        logger.info("cached reference log-probs of %d pairs in %.1f s", n, seconds)
        return seconds

    # -- loss -----------------------------------------------------------------------------------

    def povid_loss(
        self,
        policy: Mapping[str, torch.Tensor],
        reference: Mapping[str, torch.Tensor],
        lengths: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``Σ_branch w_branch · DPO_branch`` and per-branch metrics.

        Args:
            policy: Policy log-probs from :meth:`branch_logps`.
            reference: Reference log-probs, same keys.
            lengths: Answer lengths, same keys (IPO).

        Returns:
            ``(loss, metrics)``.
        """
        cfg = self.stage_cfg
        loss = torch.zeros((), device=next(iter(policy.values())).device)
        metrics: dict[str, float] = {}
        for key, weight in self.branch_weights.items():
            out = dpo_loss(
                policy[f"chosen_{key}"],
                policy[f"rejected_{key}"],
                reference[f"chosen_{key}"].to(policy[f"chosen_{key}"].dtype),
                reference[f"rejected_{key}"].to(policy[f"rejected_{key}"].dtype),
                beta=cfg.beta,
                loss_type=cfg.loss_type,
                chosen_lengths=lengths[f"chosen_{key}"],
                rejected_lengths=lengths[f"rejected_{key}"],
            )
            loss = loss + weight * out.loss
            name = BRANCH_NAMES[key]
            metrics[f"{name}/loss"] = float(out.loss.detach())
            metrics[f"{name}/rewards_chosen"] = float(out.chosen_rewards.mean())
            metrics[f"{name}/rewards_rejected"] = float(out.rejected_rewards.mean())
            metrics[f"{name}/margins"] = float(out.margins.mean())
            metrics[f"{name}/accuracy"] = float(out.accuracy)
            metrics[f"{name}/logps_chosen"] = float(policy[f"chosen_{key}"].detach().mean())
            metrics[f"{name}/logps_rejected"] = float(policy[f"rejected_{key}"].detach().mean())
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    def _compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool
    ) -> Any:
        mode = "train" if self.policy.training else "eval"
        if mode == "train":
            freeze_norm_statistics(model)
        terms = self.sequence_terms(model, inputs, reference=False)
        policy, lengths = self.branch_logps(terms)
        if all(f"ref_{key}" in inputs for key in policy):
            reference = {key: inputs[f"ref_{key}"] for key in policy}
        else:
            reference = self.reference_logps(inputs)
        loss, metrics = self.povid_loss(policy, reference, lengths)
        if self.stage_cfg.sft_weight > 0:
            tokens, mask = terms["chosen"]
            nll = -(tokens * mask).sum() / mask.sum().clamp(min=1)
            loss = loss + self.stage_cfg.sft_weight * nll
            metrics["sft/nll_chosen"] = float(nll.detach())
            metrics["loss"] = float(loss.detach())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {float(loss.detach())} at step {self.state.global_step + 1} "
                f"(pairs {inputs['pair_index'].tolist()}); metrics: {metrics}",
                step=self.state.global_step,
            )
        if mode == "train":
            self._micro_metrics.append(metrics)
        for key, value in metrics.items():
            if key != "loss":
                self._metrics[mode][key].append(value)
        return (loss, None) if return_outputs else loss

    @torch.no_grad()
    def evaluate_pairs(self, collator: PairCollator, batch_size: int) -> dict[str, float]:
        """Per-branch DPO metrics of the current policy on other pairs (e.g. the eval split).

        Args:
            collator: A collator over the pairs to evaluate (same branches as training).
            batch_size: Pairs per forward.

        Returns:
            ``eval/<metric>`` → mean over pairs.
        """
        model = self.policy
        was_training = model.training
        model.eval()
        totals: dict[str, float] = defaultdict(float)
        n = len(collator.pairs)
        try:
            for first in range(0, n, batch_size):
                index = list(range(first, min(n, first + batch_size)))
                batch = self._prepare_inputs(collator(index))
                with self.accelerator.autocast():
                    policy, lengths = self.branch_logps(self.sequence_terms(model, batch, False))
                _, metrics = self.povid_loss(policy, self.reference_logps(batch), lengths)
                for key, value in metrics.items():
                    totals[key] += value * len(index)
        finally:
            model.train(was_training)
        return {f"eval/{key}": value / n for key, value in totals.items()}


class _StepRecorder(TrainerCallback):
    """Collects per-step metrics and wall time; stops before a non-finite gradient is applied."""

    def __init__(self, trainer: POVIDTrainer) -> None:
        self.trainer = trainer
        self.steps: list[dict[str, float]] = []
        self._last = time.perf_counter()
        self._lr = float("nan")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = self.trainer.optimizer
        self._lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for name, param in self.trainer.policy.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise NonFiniteLossError(
                    f"the gradient of {name} became non-finite at step {state.global_step + 1}",
                    step=state.global_step,
                )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        micro, self.trainer._micro_metrics = self.trainer._micro_metrics, []
        row: dict[str, float] = {"step": float(state.global_step), "epoch": float(state.epoch or 0)}
        row["learning_rate"] = self._lr
        row["step_seconds"] = now - self._last
        for key in micro[0] if micro else ():
            row[key] = sum(m[key] for m in micro) / len(micro)
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1 and micro:
            # Each process saw its shard of the step's batch: report the mean over all of them,
            # the value one process would compute on the whole batch.
            keys = sorted(micro[0])
            local = torch.tensor([row[k] for k in keys], device=accelerator.device)
            for key, value in zip(keys, accelerator.reduce(local, "mean").tolist(), strict=True):
                row[key] = value
        self._last = now
        self.steps.append(row)


def dpo_args(cfg: StageConfig, output_dir: str, progress: bool = False) -> DPOConfig:
    """trl ``DPOConfig`` of a stage (CPU-safe: bf16 and checkpointing only when asked for).

    Args:
        cfg: The stage config.
        output_dir: Checkpoint directory.
        progress: Show the trainer's progress bar.

    Returns:
        The trl config.
    """
    no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16,
        fp16=False,
        # Told to run on the CPU on purpose where there is no GPU: transformers refuses bf16
        # otherwise, and accelerate sets up DDP over gloo for launched processes only then. Not
        # under DeepSpeed, which accelerate then drops for DDP: it runs on CPUs over gloo only
        # without use_cpu and given the backend (else each process trains alone).
        use_cpu=no_gpu and not deepspeed,
        ddp_backend="gloo" if no_gpu and deepspeed else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=max(1, cfg.logging_steps),
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(1, cfg.save_steps),
        save_total_limit=cfg.save_total_limit,
        report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False,
        disable_dropout=cfg.disable_dropout,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        ld_alpha=cfg.ld_alpha,
        max_length=cfg.max_length,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=not progress,
    )


def lora_config(cfg: StageConfig) -> LoraConfig:
    """peft's ``LoraConfig`` for a stage (the projector fully trained when asked)."""
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        modules_to_save=["multi_modal_projector"] if cfg.lora.train_projector else None,
        bias="none",
    )


def _split(pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and eval rows (all rows train when there is no ``split`` column)."""
    if "split" not in pairs.columns:
        return pairs, pairs.iloc[0:0]
    split = pairs["split"].astype(str).str.lower()
    return pairs[split == "train"], pairs[split == "eval"]


def _of_task_types(
    pairs: pd.DataFrame, task_mix: Mapping[str, float] | None, stage: str
) -> pd.DataFrame:
    """The pairs of the task types in ``task_mix`` with a positive share (all when ``None``)."""
    if task_mix is None:
        return pairs
    if "task_type" not in pairs.columns:
        raise ValueError(
            f"{stage}.task_mix is set but the pairs have no task_type column: re-export them "
            "with `kedro run --pipeline inject_hallucinations`, or set task_mix: null"
        )
    tasks = pairs["task_type"].astype(str)
    wanted = [t for t, w in task_mix.items() if w > 0]
    found = sorted(tasks.unique())
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(
            f"{stage}.task_mix names task types {missing} that no pair has (task types: {found})"
        )
    keep = tasks.isin(wanted)
    logger.info("%s: %d of %d pairs are of task types %s", stage, keep.sum(), len(pairs), wanted)
    return pairs[keep]


def _sample_by_task(
    train_df: pd.DataFrame, task_mix: Mapping[str, float], n: int, seed: int, stage: str
) -> pd.DataFrame:
    """``n`` training pairs drawn per task type by its share (seeded; never more than there are)."""
    shares = {t: w for t, w in task_mix.items() if w > 0}
    total = sum(shares.values())
    tasks = train_df["task_type"].astype(str)
    parts = []
    for task, share in sorted(shares.items()):
        rows = train_df[tasks == task]
        want = round(n * share / total)
        if want > len(rows):
            logger.warning(
                "%s: task_mix asks for %d %s pairs, there are %d: all are used",
                stage,
                want,
                task,
                len(rows),
            )
        parts.append(rows.sample(n=min(want, len(rows)), random_state=seed))
    sampled = pd.concat(parts).sort_index()
    logger.info(
        "%s: %d pairs for the steps by task_mix: %s",
        stage,
        len(sampled),
        sampled["task_type"].astype(str).value_counts().to_dict(),
    )
    return sampled


def _encode_checked(
    processor: Any, pairs: pd.DataFrame, bank: ImageBank, cfg: StageConfig, generated: bool
) -> EncodedPairs:
    encoded = encode_pairs(
        processor, pairs, cfg.max_length, with_noisy_rejected=generated, image_size=bank.size
    )
    broken = bank.check(encoded)
    if broken:
        bad = {pair.id for pair in broken}
        encoded = encoded.subset([i for i, pair_id in enumerate(encoded.ids) if pair_id not in bad])
        encoded.invalid.extend(broken)
    return encoded


_LAUNCH_HINTS = {
    DistributedType.DEEPSPEED: "on CPUs the accelerate config needs use_cpu: false",
    DistributedType.FSDP: "accelerate shards with FSDP on GPUs only; on CPUs use a DeepSpeed "
    "config (conf/base/accelerate/), or none for DDP",
}


def _require_launched_type(distributed_type: DistributedType) -> None:
    """Refuse DeepSpeed or FSDP asked of ``accelerate launch`` and not set up: accelerate sets FSDP
    up on GPUs only, and DeepSpeed on CPUs only without ``use_cpu``; otherwise it trains plain DDP,
    or unsynchronised processes, without a word.

    Raises:
        RuntimeError: If the launcher asked for DeepSpeed or FSDP and the trainer runs another type.
    """
    for wanted, hint in _LAUNCH_HINTS.items():
        if parse_flag_from_env(f"ACCELERATE_USE_{wanted.value}") and distributed_type != wanted:
            raise RuntimeError(
                f"the accelerate config asks for {wanted.value}, but accelerate set up "
                f"{distributed_type.value} training instead: {hint}"
            )


def _unshard(trainer: POVIDTrainer, model: torch.nn.Module) -> None:
    """Give each DeepSpeed ZeRO-3 parameter its whole tensor again, on every process, for good.

    ZeRO-3 leaves each process its shard of every parameter (an empty ``data``): the adapter merge
    and the save need whole weights (else the main process saves empty tensors).
    """
    params = [param for param in model.parameters() if hasattr(param, "ds_id")]
    if not params:
        return
    import deepspeed  # installed wherever ZeRO-3 ran

    whole = []
    for param in params:  # one at a time: at most one gathered tensor besides the copies
        with deepspeed.zero.GatheredParameters([param]):
            whole.append(param.data.clone())
    # Its hooks would gather and partition the parameters again around every forward.
    engine: Any = trainer.model_wrapped  # deepspeed's DeepSpeedEngine
    engine.destroy()
    for param, data in zip(params, whole, strict=True):
        param.data = data


def _finish(trainer: POVIDTrainer, use_cache: Any) -> Any:
    """The trained model, adapter merged, trl's and accelerate's patches removed, in eval mode."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    _unshard(trainer, model)
    if is_peft_model(model):
        model = model.merge_and_unload()
    # trl patches the instance's forward with a fused LM head; the saved model must not carry it.
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_original_forward", None)
    if getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()
    model.disable_input_require_grads()
    if use_cache is not None:
        model.config.get_text_config().use_cache = use_cache
    model.requires_grad_(True)
    model.eval()
    return model


def _run_stage(
    stage: str,
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    load_image: ImageLoader,
    cfg: StageConfig,
    branches: Branches,
    noise: NoiseConfig | None,
    *,
    callbacks: Sequence[TrainerCallback] | None,
    progress: bool,
) -> tuple[Any, TrainReport]:
    """One stage: pick the pairs, check and encode them, train, report."""
    start = time.perf_counter()
    report = TrainReport(stage=stage, branches=branches, config=_flat_config(cfg, noise))
    train_df, eval_df = _stage_pairs(pairs, cfg, stage, report)
    bank = ImageBank(processor, load_image, noise=noise, cache=cfg.pixel_cache)
    train, evals = _encode_stage(processor, train_df, eval_df, bank, cfg, branches, report)
    threads_before = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    run = _StageRun(cfg, report, bank, callbacks, progress, start)
    try:
        merged = _train_stage(run, model, processor, train, evals)
    finally:
        torch.set_num_threads(threads_before)
    report.seconds = time.perf_counter() - start
    last = report.step_metrics[-1] if report.step_metrics else {}
    logger.info(
        "%s: %d steps in %.1f s (reference cache %.1f s); last loss %.4f, %s",
        stage,
        report.steps,
        report.seconds,
        report.reference_seconds,
        last.get("loss", math.nan),
        {k: round(v, 4) for k, v in last.items() if k.endswith("/margins")},
    )
    return merged, report


def _stage_pairs(
    pairs: pd.DataFrame, cfg: StageConfig, stage: str, report: TrainReport
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage's training and evaluation pairs: its task types, and with
    ``pairs_for_steps_only`` only as many training pairs as its steps see."""
    train_df, eval_df = _split(_of_task_types(pairs, cfg.task_mix, stage))
    seen = cfg.max_steps * cfg.batch_size * cfg.gradient_accumulation_steps
    if cfg.pairs_for_steps_only and cfg.task_mix and seen > 0:
        available = len(train_df)
        train_df = _sample_by_task(train_df, cfg.task_mix, seen, cfg.seed, stage)
        report.n_unused_pairs = available - len(train_df)
    elif cfg.pairs_for_steps_only and 0 < seen < len(train_df):
        report.n_unused_pairs = len(train_df) - seen
        logger.info(
            "%s: %d steps x %d pairs see %d of the %d training pairs; using a seeded sample of "
            "%d (pairs_for_steps_only: false keeps all)",
            stage,
            cfg.max_steps,
            cfg.batch_size * cfg.gradient_accumulation_steps,
            seen,
            len(train_df),
            seen,
        )
        train_df = train_df.sample(n=seen, random_state=cfg.seed).sort_index()
    return train_df, eval_df


def _encode_stage(
    processor: Any,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame,
    bank: ImageBank,
    cfg: StageConfig,
    branches: Branches,
    report: TrainReport,
) -> tuple[EncodedPairs, EncodedPairs | None]:
    """Checked, encoded training and evaluation pairs; the rest are reported and logged once."""
    generated = branches == GENERATED
    train = _encode_checked(processor, train_df, bank, cfg, generated)
    evals = _encode_checked(processor, eval_df, bank, cfg, generated) if len(eval_df) else None
    report.invalid_pairs = list(train.invalid) + (list(evals.invalid) if evals else [])
    log_invalid_pairs(report.invalid_pairs, report.stage)
    require_pairs(train, len(train_df))
    report.n_train_pairs = len(train)
    report.n_eval_pairs = len(evals) if evals else 0
    logger.info(
        "%s (%s): %d train pairs, %d eval pairs, %d invalid",
        report.stage,
        branches,
        report.n_train_pairs,
        report.n_eval_pairs,
        len(report.invalid_pairs),
    )
    return train, evals


@dataclass
class _StageRun:
    """What one stage's training step needs besides the model and its pairs."""

    cfg: StageConfig
    report: TrainReport
    bank: ImageBank
    callbacks: Sequence[TrainerCallback] | None
    progress: bool
    start: float


def _train_stage(
    run: _StageRun,
    model: Any,
    processor: Any,
    train: EncodedPairs,
    evals: EncodedPairs | None,
) -> Any:
    """Train on the encoded pairs, score the evaluation pairs, and return the merged model."""
    cfg, report, bank = run.cfg, run.report, run.bank
    stage, branches = report.stage, report.branches
    own_dir = cfg.output_dir is None
    output_dir = tempfile.mkdtemp(prefix=f"povid-{stage}-") if own_dir else str(cfg.output_dir)
    resume_from = None if own_dir else _claim(Path(output_dir), model, train, cfg, report)
    use_cache = getattr(model.config.get_text_config(), "use_cache", None)
    tokenizer = processor.tokenizer
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    ref_model = None
    if not cfg.lora.enabled:
        # Full fine-tuning: LM and projector train, the vision tower stays frozen (as in LLaVA);
        # the reference is a frozen copy taken before any update.
        for name, param in model.named_parameters():
            param.requires_grad_("vision_tower" not in name)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    failed = False
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` while wrapping.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            trainer = POVIDTrainer(
                model=model,
                args=dpo_args(cfg, output_dir, run.progress),
                processor=processor,
                train_dataset=Dataset.from_dict({"pair": list(range(len(train)))}),
                collator=PairCollator(train, bank, pad_id, branches),
                stage_cfg=cfg,
                peft_config=lora_config(cfg) if cfg.lora.enabled else None,
                ref_model=ref_model,
                callbacks=run.callbacks,
            )
        _require_launched_type(trainer.accelerator.distributed_type)
        if not run.progress:
            trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
        recorder = _StepRecorder(trainer)
        trainer.add_callback(recorder)
        if not own_dir:
            trainer.add_callback(StepsCheckpointer(lambda: recorder.steps))
        if resume_from is not None:
            recorder.steps = load_steps(resume_from)
        if cfg.cache_reference:
            _reference(trainer, cfg, report, None if own_dir else Path(output_dir))
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except NonFiniteLossError as err:
            failed = True
            report.step_metrics = recorder.steps
            report.steps = len(recorder.steps)
            report.seconds = time.perf_counter() - run.start
            # No update was applied in the failing step: the weights are those after the last
            # good step. Save them merged, so the directory loads like any model directory.
            merged = _finish(trainer, use_cache)
            last_good = save_model_dir(merged, processor, Path(output_dir) / "last_good")
            message = (
                f"{stage} stopped: {err}. The last good model (after {report.steps} steps) is "
                f"saved in {last_good}; lower the learning rate or check the pairs named above"
            )
            logger.error(message)
            raise NonFiniteLossError(
                message, step=report.steps, checkpoint_dir=str(last_good), report=report
            ) from err
        report.step_metrics = recorder.steps
        report.steps = len(recorder.steps)
        if evals is not None and len(evals):
            eval_collator = PairCollator(evals, bank, pad_id, branches)
            report.eval_metrics = trainer.evaluate_pairs(eval_collator, cfg.reference_batch_size)
        return _finish(trainer, use_cache)
    finally:
        if own_dir and not failed:
            shutil.rmtree(output_dir, ignore_errors=True)


def _claim(
    output_dir: Path, model: Any, train: EncodedPairs, cfg: StageConfig, report: TrainReport
) -> Path | None:
    """Make ``output_dir`` this run's; the checkpoint to resume from, if any."""
    fingerprint = run_fingerprint(
        report.stage, report.branches, report.config, train.ids, weights_digest(model)
    )
    return claim_output_dir(output_dir, fingerprint, cfg.resume)


def _reference(
    trainer: POVIDTrainer, cfg: StageConfig, report: TrainReport, output_dir: Path | None
) -> None:
    """Cache the reference log-probs, or load those this run saved before it was stopped."""
    saved = load_reference(output_dir) if output_dir is not None else None
    if saved is not None:
        trainer.pair_collator.reference = saved
        logger.info("%s: reference log-probs loaded from %s", report.stage, output_dir)
        return
    report.reference_seconds = trainer.cache_reference(cfg.reference_batch_size)
    if output_dir is not None:
        reference = trainer.pair_collator.reference
        if reference is None:
            raise RuntimeError(f"{report.stage}: the reference log-probs were not cached")
        save_reference(output_dir, reference)


def _flat_config(cfg: StageConfig, noise: NoiseConfig | None) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                flatten(f"{prefix}{key}.", item)
        else:
            out[prefix.rstrip(".")] = value

    flatten("", dataclasses.asdict(cfg))
    if noise is not None:
        flatten("noise.", dataclasses.asdict(noise))
    return out


def train_stage1(
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    load_image: ImageLoader,
    cfg: StageConfig | Mapping[str, Any] | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
    progress: bool = False,
) -> tuple[Any, TrainReport]:
    """Stage 1: DPO on (``y+``, ``y_h-``) with the clean image, LoRA on the LM, then merge.

    Like every transformers trainer it seeds Python's, NumPy's and torch's global RNGs with
    ``cfg.seed``.

    Args:
        model: The base model; trained **in place** and returned with the adapter merged.
        processor: Its processor.
        pairs: Preference pairs ``id, image, prompt, chosen, rejected`` and optionally ``split``
            (``train`` rows are trained on, ``eval`` rows evaluated after training).
        load_image: Loads an image by its path in the ``image`` column.
        cfg: The stage config (a :class:`StageConfig` or its mapping).
        callbacks: Extra ``transformers.TrainerCallback`` s (e.g. to log to MLflow live).
        progress: Show the trainer's progress bar.

    Returns:
        ``(merged_model, report)``.

    Raises:
        ValueError: If no valid training pair is left (the message says why).
        NonFiniteLossError: If the loss or a gradient became NaN/inf; the last good model is saved
            and named in the message.
    """
    cfg = cfg if isinstance(cfg, StageConfig) else StageConfig.from_dict(cfg, "stage1")
    return _run_stage(
        "stage1",
        model,
        processor,
        pairs,
        load_image,
        cfg,
        STAGE1,
        None,
        callbacks=callbacks,
        progress=progress,
    )


def train_stage2(
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    load_image: ImageLoader,
    cfg: Stage2Config | Mapping[str, Any] | None = None,
    noise: NoiseConfig | Mapping[str, Any] | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
    progress: bool = False,
) -> tuple[Any, TrainReport]:
    """Stage 2 (POVID): ``w_h·DPO(y+ vs y_h-) + w_n·DPO(y+ vs y_n-)`` on the merged stage-1 model.

    ``y_n-`` follows ``noise.mode``: ``"teacher_forced"`` (official code; built on the fly from the
    noisy image made by ``add_diffusion_noise(image, noise.step, noise_seed(noise.seed, id))``) or
    ``"generated"`` (free answers under the noisy image, in a ``noisy_rejected`` column). The
    reference is the model as passed in (the merged stage-1 model).

    Args:
        model: The merged stage-1 model; trained **in place** and returned with the new adapter
            merged.
        processor: Its processor.
        pairs: As for :func:`train_stage1`, plus ``noisy_rejected`` in ``generated`` mode.
        load_image: Loads an image by its path in the ``image`` column.
        cfg: The stage config (a :class:`Stage2Config` or its mapping).
        noise: Noise step, seed and ``y_n-`` mode (the ``noise_trigger`` parameters).
        callbacks: Extra ``transformers.TrainerCallback`` s.
        progress: Show the trainer's progress bar.

    Returns:
        ``(merged_model, report)``.

    Raises:
        ValueError: If no valid training pair is left (the message says why).
        NonFiniteLossError: If the loss or a gradient became NaN/inf; the last good model is saved
            and named in the message.
    """
    cfg = cfg if isinstance(cfg, Stage2Config) else Stage2Config.from_dict(cfg, "stage2")
    noise = noise if isinstance(noise, NoiseConfig) else NoiseConfig.from_dict(noise)
    return _run_stage(
        "stage2",
        model,
        processor,
        pairs,
        load_image,
        cfg,
        noise.mode,
        noise,
        callbacks=callbacks,
        progress=progress,
    )
