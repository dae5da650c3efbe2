"""The champion gate: promote the new model only if it hallucinates less without losing POPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def champion_decision(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    max_pope_f1_drop: float,
    base: Mapping[str, float] | None = None,
) -> tuple[bool, str]:
    """Whether the candidate replaces the champion, and why.

    Args:
        candidate: The candidate's headline metrics (``chair_s``, ``pope_f1_mean``).
        champion: The current champion's, or ``None`` when there is none yet.
        max_pope_f1_drop: How far mean POPE F1 may fall below the champion's.
        base: The base model's metrics from the same evaluation: with no champion yet, the
            candidate must beat the model it was trained from (``None``: it becomes the first).

    Returns:
        ``(promote, reason)``.
    """
    if champion is None:
        if base is None:
            return True, "no champion yet: the candidate becomes the first"
        return _compare(
            candidate,
            base,
            "no champion yet; against the base model: ",
            "base model's",
            max_pope_f1_drop,
        )
    return _compare(candidate, champion, "", "champion's", max_pope_f1_drop)


def _compare(
    candidate: Mapping[str, float],
    incumbent: Mapping[str, float],
    lead: str,
    whose: str,
    max_pope_f1_drop: float,
) -> tuple[bool, str]:
    chair, best_chair = candidate["chair_s"], incumbent["chair_s"]
    f1, best_f1 = candidate["pope_f1_mean"], incumbent["pope_f1_mean"]
    if chair >= best_chair:
        return False, f"{lead}CHAIR_s {chair:.3f} is not lower than the {whose} {best_chair:.3f}"
    if f1 < best_f1 - max_pope_f1_drop:
        return False, (
            f"{lead}POPE F1 {f1:.3f} fell more than {max_pope_f1_drop:.3f} below the {whose} "
            f"{best_f1:.3f}"
        )
    return True, (
        f"{lead}CHAIR_s {chair:.3f} < {best_chair:.3f} and POPE F1 {f1:.3f} within "
        f"{max_pope_f1_drop:.3f} of {best_f1:.3f}"
    )


def metrics_from_tags(tags: Mapping[str, Any]) -> dict[str, float] | None:
    """The gate metrics stored on a model version's tags, if it has them."""
    try:
        return {"chair_s": float(tags["chair_s"]), "pope_f1_mean": float(tags["pope_f1_mean"])}
    except (KeyError, TypeError, ValueError):
        return None
