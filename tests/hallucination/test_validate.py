"""Cleaning and validation of rewritten answers, with the project's patterns."""

from __future__ import annotations

import pytest

from povid_kedro.hallucination import Validator
from povid_kedro.hallucination.config import ValidationConfig

CHOSEN = "A small red plate sits on the left, and there are two blue cups at the top right."
REJECTED = "A small green plate sits on the right, and there are three blue cups at the top."


@pytest.fixture(scope="module")
def validator(base_params) -> Validator:
    return Validator(ValidationConfig(**base_params["validation"]))


@pytest.mark.parametrize(
    "raw",
    [
        REJECTED,
        f"  {REJECTED}\n",
        f"Sure! Here is the modified answer:\n\n{REJECTED}",
        f"Sure, here's the rewritten description: {REJECTED}",
        f'Certainly! Here is the modified answer:\n\n```\n"{REJECTED}"\n```',
        f"```text\n{REJECTED}\n```",
        f"Modified answer: {REJECTED}",
        f"**Rewritten answer:** {REJECTED}",
        f'"{REJECTED}"',
        f"“{REJECTED}”",
        f"{REJECTED}\n\nNote: I changed the colour of the plate and the number of cups.",
        f"Here is the answer with hallucinations:\n{REJECTED}\n\n(I changed the plate colour.)",
    ],
)
def test_wrappers_are_stripped(validator: Validator, raw: str) -> None:
    verdict = validator.check(raw, CHOSEN)
    assert verdict.ok, verdict
    assert verdict.text == REJECTED


def test_inner_quotes_stay(validator: Validator) -> None:
    text = 'The sign reads "STOP" and a "slow" warning is painted below it.'
    assert validator.clean(text) == text


@pytest.mark.parametrize(
    "raw",
    [
        "I'm sorry, but I can't help with modifying this description.",
        "I’m sorry, I cannot do that.",
        "Sorry, I can't assist with that request.",
        "I cannot create misleading content about images.",
        "As an AI language model, I am not able to produce false descriptions.",
        "I apologize, but generating hallucinated text is against my guidelines.",
    ],
)
def test_refusals_are_rejected(validator: Validator, raw: str) -> None:
    verdict = validator.check(raw, CHOSEN)
    assert not verdict.ok and verdict.reason == "refusal"


def test_identical_after_whitespace_is_rejected(validator: Validator) -> None:
    verdict = validator.check("  " + CHOSEN.replace(" ", "   \n"), CHOSEN)
    assert verdict.reason == "identical"
    assert validator.check(f"Here is the modified answer: {CHOSEN}", CHOSEN).reason == "identical"


def test_length_bounds(validator: Validator) -> None:
    assert validator.check("A plate.", CHOSEN).reason == "too_short"
    assert validator.check(" ".join([REJECTED] * 3), CHOSEN).reason == "too_long"
    assert validator.check("", CHOSEN).reason == "empty"
    assert validator.check("```\n```", CHOSEN).reason in ("empty", "too_short")


def test_bad_ratio_bounds_fail_early() -> None:
    with pytest.raises(ValueError, match="min_ratio"):
        ValidationConfig(min_ratio=1.5, max_ratio=2.0)
