"""Supervised training of the tiny LLaVA on (image, prompt, answer) rows.

AdamW with a linear warm-up and a cosine decay, loss on answer tokens only, a data order fixed by
the seed. An optional text-only phase first trains the language model on the answers alone: that
is where a real LLaVA's language prior comes from (its LM was pretrained on text), and it is what
makes the model fill in co-occurring objects it does not see.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from povid_kedro.modeling.config import TrainConfig
from povid_kedro.modeling.data import SFTCollator, SFTRow, encode_rows
from povid_kedro.schema import IGNORE_INDEX

logger = logging.getLogger(__name__)

StepCallback = Callable[[str, int, float, float], None]
"""``callback(phase, step, loss, lr)``, called after every optimiser step."""


@dataclass
class TrainResult:
    """What a training run produced besides the updated weights.

    Attributes:
        losses: Loss of every image-conditioned step.
        lrs: Learning rate of every image-conditioned step.
        text_losses: Loss of every text-only warm-up step.
        task_losses: Per task type, its rows' own loss at every image-conditioned step (a task
            the model is not learning, e.g. one-word answers stuck at chance, shows here and
            not in the total).
        seconds: Wall-clock time of the whole run (encoding included).
        vision_losses: Loss of every vision-tower pretraining step (before this run).
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    text_losses: list[float] = field(default_factory=list)
    task_losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    vision_losses: list[float] = field(default_factory=list)


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to ``peak·min_ratio``.

    Args:
        step: The optimiser step about to be taken.
        total: Steps in the run.
        peak: Peak learning rate.
        warmup: Warm-up steps.
        min_ratio: Final learning rate as a share of the peak.

    Returns:
        The learning rate.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _index_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of row indices: a fresh seeded permutation each epoch, no partial batch."""
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` bool: positions whose next token is a target (logits needed there)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _loss_denominator(
    labels: torch.Tensor, weights: torch.Tensor | None, normalization: str
) -> torch.Tensor:
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).float()
    w = torch.ones_like(counts) if weights is None else weights.float()
    if normalization == "sample":
        return w[counts > 0].sum()
    return (w * counts).sum()


def _loss_numerator(
    kept_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    normalization: str,
) -> torch.Tensor:
    """Weighted sum of the answer tokens' losses; ``kept_logits`` are the logits at
    ``answer_mask(labels)``, row-major (``(n_targets, vocab)``)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    per_token = torch.nn.functional.cross_entropy(
        kept_logits.float(), labels[:, 1:][mask], reduction="none"
    )
    rows = mask.nonzero()[:, 0]
    w = torch.ones(labels.shape[0]) if weights is None else weights.float()
    if normalization == "sample":
        w = w / mask.sum(dim=1).clamp(min=1)
    return (per_token * w[rows]).sum()


def weighted_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    normalization: str = "token",
) -> torch.Tensor:
    """Causal-LM cross-entropy over answer tokens with per-row weights.

    ``token``: ``Σ_r w_r Σ_t l_rt / Σ_r w_r n_r`` (with unit weights, Hugging Face's mean over
    every answer token of the batch). ``sample``: ``Σ_r w_r mean_t(l_rt) / Σ_r w_r``, each row's
    tokens averaged first.

    Args:
        logits: ``(batch, length, vocab)``.
        labels: ``(batch, length)``, ``-100`` where no loss is taken.
        weights: ``(batch,)`` row weights; ``None`` is all ones.
        normalization: ``token`` or ``sample``.

    Returns:
        The scalar loss; rows without any labelled token count for nothing.
    """
    numerator = _loss_numerator(logits[answer_mask(labels)], labels, weights, normalization)
    return numerator / _loss_denominator(labels, weights, normalization).clamp(min=1e-8)


def accumulate_step(
    model: Any, batches: Sequence[dict[str, torch.Tensor]], normalization: str = "token"
) -> tuple[float, list[float]]:
    """Forward and backward one optimiser step given as micro-batches; returns its loss.

    The loss is :func:`weighted_lm_loss` of all the micro-batches' rows taken together (one
    denominator for the step), so how a step is split changes the padding, not the maths. Logits
    are computed only where a target follows: the language-model head over the whole sequence
    (image and prompt tokens included) was about a third of the tiny model's matmuls.

    Args:
        model: A Hugging Face causal (vision-)language model: ``model.base_model`` gives the
            hidden states, ``model.get_output_embeddings()`` is the head.
        batches: Collated micro-batches (``labels`` and optional ``loss_weights`` included);
            consumed.
        normalization: ``token`` or ``sample``, as in :func:`weighted_lm_loss`.

    Returns:
        The step's loss and each micro-batch's own loss (its rows alone); the gradients are
        left in the parameters.
    """
    parts = [(b.pop("labels"), b.pop("loss_weights", None), b) for b in batches]
    own_denominators = [float(_loss_denominator(lab, w, normalization)) for lab, w, _ in parts]
    denominator = max(1e-8, sum(own_denominators))
    head = model.get_output_embeddings()
    total = 0.0
    own: list[float] = []
    for (labels, weights, inputs), own_denominator in zip(parts, own_denominators, strict=True):
        hidden = model.base_model(**inputs).last_hidden_state
        logits = head(hidden[answer_mask(labels)])
        numerator = _loss_numerator(logits, labels, weights, normalization)
        (numerator / denominator).backward()
        total += float(numerator.detach())
        own.append(float(numerator.detach()) / max(1e-8, own_denominator))
    return total / denominator, own


def _task_stream(
    tasks: Sequence[str], task_batch: dict[str, int], generator: torch.Generator
) -> Iterator[list[int]]:
    """Endless batches with ``task_batch[t]`` rows of each task ``t``, each task its own epochs."""
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    missing = sorted(set(task_batch) - set(by_task))
    extra = sorted(set(by_task) - set(task_batch))
    if missing or extra:
        raise ValueError(
            f"task_batch {task_batch} does not match the rows' task types {sorted(by_task)}"
        )
    streams = {t: _index_stream(len(by_task[t]), n, generator) for t, n in task_batch.items()}
    while True:
        yield [by_task[t][j] for t in sorted(streams) for j in next(streams[t])]


def _by_task(indices: list[int], tasks: Sequence[str] | None) -> list[list[int]]:
    """Split a step's rows by task type (first-seen order), so that each task is padded on its
    own: a one-word VQA row padded to the longest description is mostly padding."""
    if tasks is None:
        return [indices]
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(tasks[i], []).append(i)
    return list(groups.values())


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    # No weight decay on norms and biases (1-d tensors), as usual for transformers.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=cfg.betas,
    )


def freeze_norm_statistics(model: torch.nn.Module) -> None:
    """Put every BatchNorm whose parameters do not train into eval mode (call it after
    ``model.train()``), so that a frozen vision tower such as LeViT's neither updates its
    running statistics nor normalises with a batch's statistics: it gives the features it will
    give at inference (and, in DPO, the cached reference's before the first update)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def _run_phase(
    model: torch.nn.Module,
    collator: SFTCollator,
    n_rows: int,
    tasks: Sequence[str] | None,
    *,
    phase: str,
    steps: int,
    peak_lr: float,
    cfg: TrainConfig,
    generator: torch.Generator,
    callback: StepCallback | None,
    progress: bool,
    frozen_norms: bool,
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    optimizer = _optimizer(model, cfg, peak_lr)
    warmup = round(cfg.warmup_ratio * steps)
    if tasks is not None and cfg.task_batch:
        stream = _task_stream(tasks, cfg.task_batch, generator)
    else:
        stream = _index_stream(n_rows, cfg.batch_size, generator)
    losses: list[float] = []
    lrs: list[float] = []
    task_losses: dict[str, list[float]] = {}
    model.train()
    if frozen_norms:
        freeze_norm_statistics(model)
    bar = tqdm(range(steps), desc=phase, unit="step", disable=not progress)
    running = None
    for step in bar:
        lr = cosine_lr(step, steps, peak_lr, warmup, cfg.min_lr_ratio)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        groups = _by_task(next(stream), tasks)
        optimizer.zero_grad(set_to_none=True)
        value, own = accumulate_step(
            model, [collator(group) for group in groups], cfg.loss_normalization
        )
        if tasks is not None:
            for group, group_loss in zip(groups, own, strict=True):
                task_losses.setdefault(tasks[group[0]], []).append(group_loss)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(value)
        lrs.append(lr)
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.1e}", refresh=False)
        if callback is not None:
            callback(phase, step, value, lr)
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            logger.info("%s step %d/%d: loss %.4f (lr %.2e)", phase, step + 1, steps, running, lr)
    model.eval()
    return losses, lrs, task_losses


def train_sft(
    model: Any,
    processor: Any,
    rows: Sequence[SFTRow],
    cfg: TrainConfig,
    *,
    text_rows: Sequence[str] | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    frozen_norms: bool = False,
) -> TrainResult:
    """Train ``model`` in place on supervised rows, optionally after a text-only warm-up.

    Args:
        model: A ``LlavaForConditionalGeneration``.
        processor: Its processor (chat template, image processor).
        rows: Image-conditioned examples; the loss covers answer tokens and the final EOS.
        cfg: Steps, batch size, learning rate, schedule, seed and threads.
        text_rows: Texts for the warm-up phase (``cfg.text_warmup_steps`` steps), e.g. the
            training descriptions; ignored when that is 0.
        callback: Called as ``callback(phase, step, loss, lr)`` after each step, ``phase`` being
            ``"text_warmup"`` or ``"sft"`` (e.g. to log a loss curve to MLflow).
        progress: Show tqdm bars.
        frozen_norms: Keep BatchNorm layers whose parameters do not train in eval mode
            (:func:`freeze_norm_statistics`); otherwise ``model.train()`` puts them in training
            mode like every other layer.

    Returns:
        The loss curves and the wall-clock time.
    """
    start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    result = TrainResult()
    pad_id = processor.tokenizer.pad_token_id
    try:
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.text_warmup_steps > 0 and text_rows:
            text_features = encode_rows(
                processor, [SFTRow(None, None, t) for t in text_rows], cfg.max_length
            )
            result.text_losses, _, _ = _run_phase(
                model,
                SFTCollator(text_features, pad_id),
                len(text_features),
                None,
                phase="text_warmup",
                steps=cfg.text_warmup_steps,
                peak_lr=cfg.text_warmup_lr,
                cfg=cfg,
                generator=generator,
                callback=callback,
                progress=progress,
                frozen_norms=frozen_norms,
            )
        if cfg.steps > 0 and rows:
            features = encode_rows(processor, rows, cfg.max_length)
            logger.info(
                "SFT on %d rows (%d images), mean length %.1f tokens",
                len(features),
                features.pixel_values.shape[0],
                sum(map(len, features.input_ids)) / max(1, len(features)),
            )
            result.losses, result.lrs, result.task_losses = _run_phase(
                model,
                SFTCollator(features, pad_id),
                len(features),
                [row.task for row in rows],
                phase="sft",
                steps=cfg.steps,
                peak_lr=cfg.lr,
                cfg=cfg,
                generator=generator,
                callback=callback,
                progress=progress,
                frozen_norms=frozen_norms,
            )
    finally:
        torch.set_num_threads(threads_before)
    result.seconds = time.perf_counter() - start
    logger.info(
        "trained %d text + %d SFT steps in %.1f s; final SFT loss %.4f",
        len(result.text_losses),
        len(result.losses),
        result.seconds,
        result.losses[-1] if result.losses else float("nan"),
    )
    return result
