"""The champion gate: promote the new model only if it hallucinates less without losing POPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def champion_decision(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    max_pope_f1_drop: float,
) -> tuple[bool, str]:
    """Whether the candidate replaces the champion, and why.

    Args:
        candidate: The candidate's headline metrics (``chair_s``, ``pope_f1_mean``).
        champion: The current champion's, or ``None`` when there is none yet.
        max_pope_f1_drop: How far mean POPE F1 may fall below the champion's.

    Returns:
        ``(promote, reason)``.
    """
    if champion is None:
        return True, "no champion yet: the candidate becomes the first"
    chair, best_chair = candidate["chair_s"], champion["chair_s"]
    f1, best_f1 = candidate["pope_f1_mean"], champion["pope_f1_mean"]
    if chair >= best_chair:
        return False, f"CHAIR_s {chair:.3f} is not lower than the champion's {best_chair:.3f}"
    if f1 < best_f1 - max_pope_f1_drop:
        return False, (
            f"POPE F1 {f1:.3f} fell more than {max_pope_f1_drop:.3f} below the champion's "
            f"{best_f1:.3f}"
        )
    return True, (
        f"CHAIR_s {chair:.3f} < {best_chair:.3f} and POPE F1 {f1:.3f} within "
        f"{max_pope_f1_drop:.3f} of {best_f1:.3f}"
    )


def metrics_from_tags(tags: Mapping[str, Any]) -> dict[str, float] | None:
    """The gate metrics stored on a model version's tags, if it has them."""
    try:
        return {"chair_s": float(tags["chair_s"]), "pope_f1_mean": float(tags["pope_f1_mean"])}
    except (KeyError, TypeError, ValueError):
        return None
