"""The champion gate: who becomes champion, and why."""

from __future__ import annotations

import pytest

from povid_kedro.gate import champion_decision
from povid_kedro.pipelines.evaluate.nodes import champion_gate_node

BASE = {"chair_s": 0.70, "pope_f1_mean": 0.72}
PARAMS = {"gate": {"max_pope_f1_drop": 0.01, "first_against_base": True}}


def test_a_better_candidate_replaces_the_champion():
    promote, reason = champion_decision(
        {"chair_s": 0.5, "pope_f1_mean": 0.715}, BASE, max_pope_f1_drop=0.01
    )
    assert promote and "0.500 < 0.700" in reason


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ({"chair_s": 0.70, "pope_f1_mean": 0.9}, "not lower"),
        ({"chair_s": 0.40, "pope_f1_mean": 0.70}, "fell more than 0.010"),
    ],
)
def test_a_worse_candidate_does_not(candidate, why):
    promote, reason = champion_decision(candidate, BASE, max_pope_f1_drop=0.01)
    assert not promote and why in reason


def test_without_a_champion_the_candidate_must_beat_the_base_model():
    summary = {"chair_s": 0.47, "pope_f1_mean": 0.64}  # fewer hallucinations, POPE lost
    update, decision = champion_gate_node(summary, BASE, {"version": 1}, None, PARAMS)
    assert update["version"] is None  # the registry dataset leaves the alias unset
    assert decision["promoted"] is False and decision["champion_version"] is None
    assert "against the base model" in decision["reason"]

    better = {"chair_s": 0.47, "pope_f1_mean": 0.719}
    update, decision = champion_gate_node(better, BASE, {"version": 1}, None, PARAMS)
    assert update == {"version": 1, "tags": {"chair_s": 0.47, "pope_f1_mean": 0.719}}
    assert decision["promoted"] is True

    first_wins = {"gate": {"max_pope_f1_drop": 0.01, "first_against_base": False}}
    update, decision = champion_gate_node(summary, BASE, {"version": 1}, None, first_wins)
    assert update["version"] == 1 and "becomes the first" in decision["reason"]


def test_the_champion_is_kept_when_the_candidate_is_worse():
    champion = {"version": 1, "tags": {"chair_s": "0.45", "pope_f1_mean": "0.72"}}
    summary = {"chair_s": 0.47, "pope_f1_mean": 0.72}
    update, decision = champion_gate_node(summary, BASE, {"version": 2}, champion, PARAMS)
    assert update["version"] is None
    assert (
        decision["champion_version"] == 1 and "not lower than the champion's" in decision["reason"]
    )
