"""On-policy pairs: which of an image's sampled descriptions become chosen and rejected."""

from __future__ import annotations

import pandas as pd

from povid_kedro.hallucination.onpolicy import _pick, _pick_fluent, balance_directions, source_id


def _s(hallucinated: int, correct: int, words: int = 30, degenerate: bool = False) -> dict:
    return {
        "hallucinated": hallucinated,
        "correct": correct,
        "words": words,
        "degenerate": degenerate,
    }


def test_chosen_hallucinates_least_and_rejected_most():
    scored = [_s(1, 2), _s(0, 2), _s(3, 1), _s(2, 2)]
    assert _pick(scored, gap=1) == (1, 2)


def test_rejected_never_names_more_true_objects_than_chosen():
    # Sample 1 hallucinates more but also names more true objects: preferring sample 0 would
    # teach the model to name fewer objects, so there is no pair.
    assert _pick([_s(0, 1), _s(2, 3)], gap=1) is None


def test_degenerate_samples_are_never_paired():
    assert _pick([_s(0, 2, degenerate=True), _s(2, 1)], gap=1) is None
    assert _pick([_s(0, 2), _s(3, 1, degenerate=True), _s(1, 1)], gap=1) == (0, 2)


def test_a_fluency_pair_rejects_a_degenerate_sample_that_errs_at_least_as_much():
    # The best fluent sample (1) against the degenerate one closest in length (3, not 0).
    scored = [_s(1, 1, words=5, degenerate=True), _s(0, 2), _s(1, 2), _s(0, 1, 26, True)]
    assert _pick_fluent(scored) == (1, 3)
    # A fragment that hallucinates less than every fluent sample is not rejected.
    assert _pick_fluent([_s(1, 2), _s(0, 1, words=5, degenerate=True)]) is None
    assert _pick_fluent([_s(0, 2), _s(0, 2)]) is None
    assert _pick_fluent([_s(0, 2, degenerate=True)]) is None
    assert source_id("s12_fluency_onpolicy") == source_id("s12_onpolicy") == "s12"


def test_among_equally_bad_rejections_the_closest_length_wins():
    scored = [_s(0, 2, words=30), _s(2, 1, words=10), _s(2, 1, words=28)]
    assert _pick(scored, gap=1) == (0, 2)


def test_the_gap_is_required():
    assert _pick([_s(1, 2), _s(2, 1)], gap=2) is None


def test_max_extra_objects_keeps_only_pairs_that_name_as_many_objects():
    # Rejected names 1 true + 3 false objects against chosen's 2 + 0: it names more in all.
    scored = [_s(0, 2), _s(3, 1), _s(1, 1)]
    assert _pick(scored, gap=1) == (0, 1)
    assert _pick(scored, gap=1, max_extra=0) == (0, 2)


def _p(errors: int, hallucinated: int, correct: int) -> dict:
    return _s(hallucinated, correct) | {"partner_errors": errors}


def test_partner_pairs_are_chosen_on_partner_errors():
    # Sample 0 hallucinates nothing but misses the present partner (1 error); sample 1 names it
    # and one absent non-partner object; sample 2 names it and nothing false.
    scored = [_p(1, 0, 2), _p(0, 1, 3), _p(0, 0, 3)]
    assert _pick(scored, gap=1, error="partner_errors") == (2, 0)


def test_partner_pairs_never_prefer_more_hallucination_or_fewer_true_objects():
    # Fewer partner errors bought with another hallucinated object, or with fewer true objects,
    # is no pair.
    assert _pick([_p(0, 1, 2), _p(1, 0, 2)], gap=1, error="partner_errors") is None
    assert _pick([_p(0, 0, 1), _p(1, 0, 2)], gap=1, error="partner_errors") is None


def test_balanced_pairs_teach_both_directions_equally_in_their_order():
    pairs = pd.DataFrame(
        {"id": list("abcdefg"), "direction": ["present"] * 4 + ["absent"] * 2 + ["other"]}
    )
    kept = balance_directions(pairs, seed=0)
    assert kept["direction"].value_counts().to_dict() == {"present": 2, "absent": 2}
    assert list(kept.index) == sorted(kept.index)
