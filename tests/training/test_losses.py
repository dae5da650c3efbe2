"""Loss helpers against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from povid_kedro.schema import IGNORE_INDEX
from povid_kedro.training.losses import (
    dpo_loss,
    image_dependent_labels,
    length_desensitised_logps,
    noisy_argmax_labels,
    per_token_logps,
    sequence_logps,
    teacher_forced_noisy_logps,
    without_end,
)


def _log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


CLEAN = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [3.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
NOISY = [[0.0, 0.0, 5.0], [0.0, 4.0, 1.0], [2.0, 1.0, 0.0], [9.0, 0.0, 0.0]]
LABELS = [-100, 0, 2, 1]  # position 0 is prompt; answer tokens at 1..3


def test_sequence_logps_sums_shifted_answer_tokens():
    got = sequence_logps(torch.tensor([CLEAN]), torch.tensor([LABELS]))
    # logits[t] predicts labels[t+1]; the prompt label is skipped and the last logits are unused.
    expected = _log_softmax(CLEAN[0], 0) + _log_softmax(CLEAN[1], 2) + _log_softmax(CLEAN[2], 1)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_teacher_forced_noisy_logps_reads_noisy_argmax_from_clean_logits():
    clean, noisy, labels = torch.tensor([CLEAN]), torch.tensor([NOISY]), torch.tensor([LABELS])
    # Noisy argmax at positions 0, 1, 2 → tokens 2, 1, 0 for answer positions 1, 2, 3.
    assert noisy_argmax_labels(noisy, labels).tolist() == [[-100, 2, 1, 0]]
    expected = _log_softmax(CLEAN[0], 2) + _log_softmax(CLEAN[1], 1) + _log_softmax(CLEAN[2], 0)
    got = teacher_forced_noisy_logps(clean, noisy, labels)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_teacher_forced_gradient_flows_through_clean_logits_only():
    clean = torch.tensor([CLEAN], requires_grad=True)
    noisy = torch.tensor([NOISY], requires_grad=True)
    teacher_forced_noisy_logps(clean, noisy, torch.tensor([LABELS])).backward()
    assert clean.grad is not None and clean.grad.abs().sum() > 0
    assert noisy.grad is None


def test_sigmoid_dpo_by_hand():
    out = dpo_loss(
        torch.tensor([-1.0, -4.0]),
        torch.tensor([-3.0, -2.0]),
        torch.tensor([-2.0, -4.0]),
        torch.tensor([-2.0, -2.0]),
        beta=0.5,
    )
    # Pair 0: β·((−1+2) − (−3+2)) = 1 → −log σ(1); pair 1: 0 → log 2.
    expected = [math.log(1 + math.exp(-1)), math.log(2)]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.0])
    assert out.margins.tolist() == pytest.approx([1.0, 0.0])
    assert out.accuracy.item() == pytest.approx(0.5)


def test_ipo_and_hinge_by_hand():
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    # Δ = 2. IPO with lengths 2 and 4: (1/2 − (−1)/4 − 1/(2·0.5))² = (0.75 − 1)² = 0.0625.
    ipo = dpo_loss(
        *args,
        beta=0.5,
        loss_type="ipo",
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([4]),
    )
    assert ipo.loss.item() == pytest.approx(0.0625)
    # Without lengths: (2 − 1)² = 1.
    assert dpo_loss(*args, beta=0.5, loss_type="ipo").loss.item() == pytest.approx(1.0)
    # Hinge: max(0, 1 − 0.25·2) = 0.5.
    assert dpo_loss(*args, beta=0.25, loss_type="hinge").loss.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(*args, loss_type="kto")


def test_length_desensitised_logps_by_hand():
    chosen = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    chosen_mask = torch.tensor([[True, True, True, False]])
    rejected = torch.tensor([[0.0, -5.0, 0.0, 0.0]])
    rejected_mask = torch.tensor([[False, True, False, False]])
    c, r = length_desensitised_logps(chosen, chosen_mask, rejected, rejected_mask, 0.5)
    # Shared length 1: chosen = −1 + 0.5·(−2 − 3); rejected keeps its single token.
    assert c.item() == pytest.approx(-3.5)
    assert r.item() == pytest.approx(-5.0)
    c1, _ = length_desensitised_logps(chosen, chosen_mask, rejected, rejected_mask, 1.0)
    assert c1.item() == pytest.approx(-6.0)


def test_image_dependent_positions_keep_only_what_the_pixels_decided():
    # Vocabulary of 4; answer tokens at positions 1..3 (labels[:, 0] is the prompt).
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3]])

    def logits_for(argmax: list[int]) -> torch.Tensor:
        out = torch.zeros(1, 4, 4)
        for t, v in enumerate(argmax):
            out[0, t, v] = 5.0
        return out

    # logits[:, t] predicts labels[:, t + 1]. Clean: right at t=0, 1; wrong (a wording
    # preference) at t=2. Noisy: differs at t=0 (image-dependent) and t=2 (the clean one erred).
    clean = logits_for([1, 2, 0, 0])
    noisy = logits_for([3, 2, 1, 0])
    official = noisy_argmax_labels(noisy, labels)
    assert official.tolist() == [[IGNORE_INDEX, 3, 2, 1]]
    kept = image_dependent_labels(official, clean, labels)
    assert kept.tolist() == [[IGNORE_INDEX, 3, 2, 3]]
    # Positions set back to y+ cancel in the margin: only position 1 differs from the chosen.
    clean_logps, _ = per_token_logps(clean, labels)
    rejected_logps, _ = per_token_logps(clean, kept)
    assert torch.equal((clean_logps != rejected_logps)[0], torch.tensor([True, False, False]))


def test_without_end_restores_only_the_last_answer_token():
    labels = torch.tensor(
        [[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 1, 3, 2]]
    )
    noisy = torch.tensor(
        [[IGNORE_INDEX, 0, 0, 0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 0, 0, 0]]
    )
    assert without_end(noisy, labels).tolist() == [
        [IGNORE_INDEX, 0, 0, 3, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 0, 0, 2],
    ]
