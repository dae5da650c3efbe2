"""Degenerate descriptions: the world's own text never is one; broken model text is."""

from __future__ import annotations

import pytest

from povid_kedro.metrics.degenerate import DegenerateChecker, repeated_ngram
from povid_kedro.world import WorldConfig, description_grammar, generate_world
from tests.world.test_world_generation import small_params


@pytest.fixture(scope="module")
def grammar_and_world():
    cfg = WorldConfig.from_dict(small_params())
    world = generate_world(cfg)
    assert world.description_grammar == description_grammar(cfg)
    return DegenerateChecker(world.description_grammar), world


def test_every_ground_truth_description_is_in_the_grammar(grammar_and_world):
    checker, world = grammar_and_world
    texts = [r["conversations"][1]["value"] for r in world.instructions["detail"]]
    assert len(texts) > 50
    assert [checker.reason(t) for t in texts if checker.reason(t)] == []
    result = checker.score({"image_id": i, "caption": t} for i, t in enumerate(texts))
    assert result["degenerate_share"] == 0.0 and result["captions"] == len(texts)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # What a collapsed stage-2 model wrote.
        (
            "A small blue a small blue cup is placed in the right of the the right of the is "
            "located to the right of the cup.",
            "repeated",
        ),
        ("The image shows a park. There is a red dog on the left. There is a", "grammar"),
        ("The image shows a park. There is a red dog on the left on the left.", "repeated"),
        ("The image shows a park. A dog sits happily with a frisbee.", "grammar"),
    ],
)
def test_broken_text_is_degenerate(grammar_and_world, text, why):
    checker, _ = grammar_and_world
    reason = checker.reason(text)
    assert reason is not None and why in reason


def test_without_a_grammar_only_repetition_counts():
    checker = DegenerateChecker([])
    assert checker.reason("A dog sits happily with a frisbee.") is None
    assert checker.reason("A dog dog sits.") == "repeated 'dog'"
    # Repeats across sentences are ordinary ("... in the scene. The scene ...").
    assert checker.reason("There is a cup in the scene. The scene is calm.") is None
    assert repeated_ngram("one on the left and one on the right") is None
    result = checker.score([{"caption": "a a"}, {"caption": "fine."}])
    assert result["degenerate_share"] == 0.5 and result["degenerate_count"] == 1
