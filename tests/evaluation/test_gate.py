"""The champion gate: who becomes champion, and why."""

from __future__ import annotations

import pytest

from povid_kedro.evaluation.gate import champion_decision, collapse_failures, evaluation_set
from povid_kedro.pipelines.evaluate.nodes import champion_gate_node

BASE = {"chair_s": 0.70, "pope_f1_mean": 0.72}
PARAMS = {"gate": {"max_pope_f1_drop": 0.01, "first_against_base": True}}
DIGEST = "ab" * 32
SET = {"eval_set": "0123456789abcdef", "eval_images": 1200, "eval_pope_questions": 5600}


def _gate(summary, base, version, champion, params, digest=DIGEST, eval_set=SET):
    """The gate node for a candidate version registered with weights ``DIGEST``."""
    candidate = {"version": version, "tags": {"weights_sha256": DIGEST}}
    return champion_gate_node(summary, base, digest, eval_set, candidate, champion, params)


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
    update, decision = _gate(summary, BASE, 1, None, PARAMS)
    assert update["version"] is None  # the registry dataset leaves the alias unset
    assert decision["promoted"] is False and decision["champion_version"] is None
    assert "against the base model" in decision["reason"]

    better = {"chair_s": 0.47, "pope_f1_mean": 0.719}
    update, decision = _gate(better, BASE, 1, None, PARAMS)
    assert update == {"version": 1, "tags": {"chair_s": 0.47, "pope_f1_mean": 0.719, **SET}}
    assert decision["promoted"] is True

    first_wins = {"gate": {"max_pope_f1_drop": 0.01, "first_against_base": False}}
    update, decision = _gate(summary, BASE, 1, None, first_wins)
    assert update["version"] == 1 and "becomes the first" in decision["reason"]


def test_the_champion_is_kept_when_the_candidate_is_worse():
    champion = {"version": 1, "tags": {"chair_s": "0.45", "pope_f1_mean": "0.72", **SET}}
    summary = {"chair_s": 0.47, "pope_f1_mean": 0.72}
    update, decision = _gate(summary, BASE, 2, champion, PARAMS)
    assert update["version"] is None
    assert (
        decision["champion_version"] == 1 and "not lower than the champion's" in decision["reason"]
    )


GUARDS = {
    "max_recall_drop": 0.03,
    "max_present_partner_recall_drop": 0.03,
    "min_objects_ratio": 0.9,
    "min_words_ratio": 0.8,
    "max_degenerate_rise": 0.01,
    "max_pope_f1_drop_per_split": 0.01,
}
BASE_ROW = {
    "chair_s": 0.74,
    "pope_f1_mean": 0.70,
    "recall": 0.75,
    "present_partner_recall": 0.8,
    "objects_per_image": 3.15,
    "words_per_caption": 42.0,
    "degenerate_share": 0.01,
    "pope_random_f1": 0.70,
    "pope_popular_f1": 0.70,
    "pope_adversarial_f1": 0.70,
}


def test_a_model_that_says_less_is_never_champion():
    # Last landed default's stage 2: CHAIR_s down 0.20, but by naming a third fewer objects.
    says_less = BASE_ROW | {
        "chair_s": 0.54,
        "recall": 0.55,
        "objects_per_image": 2.17,
        "words_per_caption": 30.2,
        "present_partner_recall": 0.6,
    }
    failures = collapse_failures(says_less, BASE_ROW, GUARDS)
    assert len(failures) == 4 and any("objects_per_image 2.170" in f for f in failures)
    params = {"gate": {**PARAMS["gate"], "no_collapse": GUARDS}}
    update, decision = _gate(says_less, BASE_ROW, 3, None, params)
    assert update["version"] is None and not decision["promoted"]
    assert "no-collapse guard" in decision["reason"]
    # Also when a champion exists.
    champion = {"version": 1, "tags": {"chair_s": "0.9", "pope_f1_mean": "0.7", **SET}}
    _, decision = _gate(says_less, BASE_ROW, 3, champion, params)
    assert not decision["promoted"] and "recall" in decision["reason"]


def test_collapse_guards_each_bound():
    broken_text = BASE_ROW | {"degenerate_share": 0.03}
    assert collapse_failures(broken_text, BASE_ROW, GUARDS) == [
        "degenerate_share 0.030 is more than 0.01 above the base's 0.010"
    ]
    lost_pope = BASE_ROW | {"pope_adversarial_f1": 0.68}
    assert ["pope_adversarial_f1" in f for f in collapse_failures(lost_pope, BASE_ROW, GUARDS)] == [
        True
    ]
    grounded = BASE_ROW | {"chair_s": 0.5, "recall": 0.73, "objects_per_image": 2.9}
    assert collapse_failures(grounded, BASE_ROW, GUARDS) == []
    # Not measured for either model (real scale has no partners): not checked.
    no_partners = {k: v for k, v in BASE_ROW.items() if k != "present_partner_recall"}
    assert collapse_failures(no_partners, no_partners, GUARDS) == []
    with pytest.raises(ValueError, match="unknown guard"):
        collapse_failures(BASE_ROW, BASE_ROW, {"max_recal_drop": 0.03})


def test_the_gate_promotes_only_the_model_it_evaluated():
    # The directory holds a newer model than the one @candidate points at (a run killed
    # between saving and registering): nothing is promoted, and the reason says why.
    better = {"chair_s": 0.47, "pope_f1_mean": 0.719}
    update, decision = _gate(better, BASE, 4, None, PARAMS, digest="cd" * 32)
    assert update["version"] is None and not decision["promoted"]
    assert "is not registry version 4" in decision["reason"]
    assert "different runs" in decision["reason"]


def test_the_gate_refuses_a_champion_measured_on_another_evaluation_set():
    # A 1,200-image champion and a 4-image run: the numbers are not comparable.
    champion = {"version": 1, "tags": {"chair_s": "0.45", "pope_f1_mean": "0.72", **SET}}
    tiny = {"eval_set": "fedcba9876543210", "eval_images": 4, "eval_pope_questions": 24}
    better = {"chair_s": 0.10, "pope_f1_mean": 0.9}
    update, decision = _gate(better, BASE, 2, champion, PARAMS, eval_set=tiny)
    assert update["version"] is None and not decision["promoted"]
    assert "1200 images" in decision["reason"] and "(4 images" in decision["reason"]
    unrecorded = {"version": 1, "tags": {"chair_s": "0.45", "pope_f1_mean": "0.72"}}
    _, decision = _gate(better, BASE, 2, unrecorded, PARAMS)
    assert not decision["promoted"] and "no record of the evaluation set" in decision["reason"]


def test_evaluation_set_changes_with_what_was_measured():
    captions = [{"image_id": 1}, {"image_id": 2}]
    instances = {"annotations": [{"image_id": 1, "category_id": 3}]}
    questions = {"random": [{"image": "a", "text": "Is there a cup?", "label": "yes"}] * 2}
    answers = {"random": [{"question_id": 1, "text": "yes"}]}
    one = evaluation_set(captions, answers, questions, instances)
    assert one["eval_images"] == 2 and one["eval_pope_questions"] == 1
    assert evaluation_set(captions, answers, questions, instances) == one
    other_truth = {"annotations": [{"image_id": 1, "category_id": 4}]}
    assert evaluation_set(captions, answers, questions, other_truth)["eval_set"] != one["eval_set"]
    assert (
        evaluation_set(captions[:1], answers, questions, instances)["eval_set"] != one["eval_set"]
    )
