"""Pure tensor helpers of POVID training: sequence log-probs, DPO variants, teacher-forced y_n-.

Conventions (as in transformers and trl): ``logits[:, t]`` predicts ``labels[:, t + 1]``; label
``-100`` marks positions that are not scored (prompt, image tokens, padding); a sequence log-prob is
the **sum** over the answer tokens (POVID and DPO both sum, no length normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from povid_kedro.schema import IGNORE_INDEX


def per_token_logps(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label token under the logits of the position before it.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` token ids, ``-100`` where nothing is scored.

    Returns:
        ``(logps, mask)``, both ``(B, T-1)``:
        ``logps[:, t] = log p(labels[:, t+1] | logits[:, t])``, zero where ``mask`` (the shifted
        ``labels != -100``) is false.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V); float32 so bf16 logits sum without drift
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    index = targets.masked_fill(~mask, 0).unsqueeze(-1)  # (B, T-1, 1)
    # gather − logsumexp avoids materialising a second (B, T, V) tensor for log_softmax.
    logps = logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, T-1)
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each sequence's answer tokens.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` token ids, ``-100`` on prompt and padding.

    Returns:
        ``(B,)`` sums of ``log p(labels[t+1] | logits[t])`` over the answer tokens.
    """
    logps, _ = per_token_logps(logits, labels)
    return logps.sum(dim=-1)


def length_desensitised_logps(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LD-DPO sequence log-probs (trl's ``ld_alpha``): tokens past the shorter answer weigh alpha.

    The first ``min(len_chosen, len_rejected)`` answer tokens of each answer count fully, the rest
    by ``alpha``; ``alpha = 1`` is plain DPO, ``alpha = 0`` compares equal-length prefixes only.

    Args:
        chosen_token_logps: ``(B, T)`` per-token log-probs of the chosen answers (zero off-answer).
        chosen_mask: ``(B, T)`` answer-token mask of the chosen answers.
        rejected_token_logps: ``(B, T')`` the same for the rejected answers.
        rejected_mask: ``(B, T')`` answer-token mask of the rejected answers.
        alpha: Weight of the tail tokens, in [0, 1].

    Returns:
        ``(chosen_logps, rejected_logps)``, each ``(B,)``.
    """
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(-1)  # (B, 1)

    def weighted(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        position = mask.long().cumsum(-1)  # (B, T): 1-based index among answer tokens
        weight = torch.where(position <= shared, 1.0, alpha) * mask
        return (token_logps * weight).sum(-1)

    return weighted(chosen_token_logps, chosen_mask), weighted(rejected_token_logps, rejected_mask)


def noisy_argmax_labels(noisy_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels of the teacher-forced ``y_n-``: at each answer position, the noisy-image argmax token.

    Args:
        noisy_logits: ``(B, T, V)`` logits of the chosen sequence ``y+`` under the **noisy** image.
        labels: ``(B, T)`` labels of ``y+`` (``-100`` off-answer).

    Returns:
        ``(B, T)``: ``labels`` with each answer token ``t+1`` replaced by
        ``argmax_v noisy_logits[:, t]``, i.e. ``argmax_v π(v | x̃, y+_<t+1)``.
    """
    out = labels.clone()
    predicted = noisy_logits[:, :-1].argmax(dim=-1)  # (B, T-1)
    answer = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    out[:, 1:] = torch.where(answer, predicted, labels[:, 1:])
    return out


def without_end(noisy_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The teacher-forced ``y_n-`` with ``y+``'s last answer token (its end) restored.

    Under noise a model tends to go on naming objects where the ground truth ends; contrasted
    there, the noise branch teaches when to stop (shorter answers) rather than what is in the
    image.
    """
    answer = labels != IGNORE_INDEX
    position = answer.long().cumsum(-1)
    last = answer & (position == answer.sum(-1, keepdim=True))
    return torch.where(last, labels, noisy_labels)


def image_dependent_labels(
    noisy_labels: torch.Tensor, clean_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Keep the teacher-forced ``y_n-`` token only where the image decides it.

    A position keeps the noisy argmax only where the clean-image argmax is the ground-truth
    token and the noisy-image argmax is not: there the pixels, not the language prior, chose the
    word. Elsewhere ``y_n-`` takes the ground-truth token, whose log-prob then cancels in the
    DPO margin. Without this, every position where the model merely prefers other wording
    (one sentence template over another) is contrasted too.

    Args:
        noisy_labels: ``(B, T)`` teacher-forced ``y_n-`` labels (:func:`noisy_argmax_labels`).
        clean_logits: ``(B, T, V)`` logits of ``y+`` under the clean image.
        labels: ``(B, T)`` labels of ``y+``.

    Returns:
        ``(B, T)`` labels.
    """
    clean_labels = noisy_argmax_labels(clean_logits.detach(), labels)
    keep = (clean_labels == labels) & (noisy_labels != labels)
    return torch.where(keep, noisy_labels, labels)


def teacher_forced_noisy_logps(
    clean_logits: torch.Tensor, noisy_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Official POVID ``log π(y_n-)``: noisy-image argmax tokens scored by the clean-image logits.

    ``Σ_t log π(argmax_v π(v | x̃, y+_<t) | x, y+_<t)`` over the answer positions of ``y+``. The
    argmax carries no gradient; gradients flow through ``clean_logits`` only. Policy and reference
    each pass their own logits (each uses its own argmax).

    Args:
        clean_logits: ``(B, T, V)`` logits of ``y+`` under the clean image ``x``.
        noisy_logits: ``(B, T, V)`` logits of ``y+`` under the noisy image ``x̃``.
        labels: ``(B, T)`` labels of ``y+`` (``-100`` off-answer).

    Returns:
        ``(B,)`` summed log-probs.
    """
    return sequence_logps(clean_logits, noisy_argmax_labels(noisy_logits, labels))


@dataclass
class DPOLossOutput:
    """A DPO loss and the statistics trl logs with it.

    Attributes:
        loss: Scalar mean of ``losses``.
        losses: ``(B,)`` per-pair losses.
        chosen_rewards: ``(B,)`` implicit rewards ``β·(log π(y+) − log π_ref(y+))`` (detached).
        rejected_rewards: ``(B,)`` the same for the rejected answers (detached).
        margins: ``(B,)`` ``chosen_rewards − rejected_rewards``.
        accuracy: Scalar share of pairs with ``chosen_rewards > rejected_rewards``.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracy: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    *,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOLossOutput:
    """DPO loss variants on sequence log-probs, as trl's ``DPOTrainer`` defines them.

    With ``Δ = (log π(y+) − log π_ref(y+)) − (log π(y−) − log π_ref(y−))``:

    - ``"sigmoid"`` (DPO): ``−log σ(β·Δ)``;
    - ``"hinge"`` (SLiC): ``max(0, 1 − β·Δ)``;
    - ``"ipo"`` (IPO): ``(Δ̄ − 1/(2β))²`` with each log-ratio divided by its answer length when the
      lengths are given (trl's form, confirmed by the IPO authors), else ``Δ̄ = Δ``.

    Args:
        policy_chosen: ``(B,)`` policy log-probs of the chosen answers.
        policy_rejected: ``(B,)`` policy log-probs of the rejected answers.
        ref_chosen: ``(B,)`` reference log-probs of the chosen answers.
        ref_rejected: ``(B,)`` reference log-probs of the rejected answers.
        beta: β (τ for IPO).
        loss_type: ``"sigmoid"``, ``"hinge"`` or ``"ipo"``.
        chosen_lengths: ``(B,)`` answer-token counts of the chosen answers (IPO).
        rejected_lengths: ``(B,)`` answer-token counts of the rejected answers (IPO).

    Returns:
        The loss, per-pair losses, rewards, margins and reward accuracy.

    Raises:
        ValueError: For an unknown ``loss_type``.
    """
    chosen_logratios = policy_chosen - ref_chosen  # (B,)
    rejected_logratios = policy_rejected - ref_rejected  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "ipo":
        if chosen_lengths is not None and rejected_lengths is not None:
            delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / (
                rejected_lengths.clamp(min=1)
            )
        else:
            delta = chosen_logratios - rejected_logratios
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use 'sigmoid', 'hinge' or 'ipo'")
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return DPOLossOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracy=(chosen_rewards > rejected_rewards).float().mean(),
    )
