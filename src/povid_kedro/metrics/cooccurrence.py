"""Does a model hallucinate *because of* co-occurrence?

For every caption and every object category absent from its image, the absence is either a
*partner trial* (a present object usually comes with this one: fork present, knife absent) or a
*control trial* (no present object usually comes with it). The partner rate over the control rate
says how much more often the model names an absent object when its usual companion is in view:
the language-prior hallucination that POVID targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def partner_categories(present: Iterable[str], partners: Mapping[str, str | None]) -> set[str]:
    """The categories some present object usually comes with: an image's partner trials
    (those absent) and present partners (those present)."""
    return {p for obj in present if (p := partners.get(obj)) is not None}


def cooccurrence_hallucination(
    captions: Iterable[Mapping[str, Any]],
    partners: Mapping[str, str | None],
    categories: Iterable[str],
) -> dict[str, float]:
    """Rates of naming absent partners vs absent objects with no companion present.

    Args:
        captions: Per-caption CHAIR results with ``gt_objects`` and ``objects`` (canonical names).
        partners: Category -> the category it usually appears with (or ``None``).
        categories: All categories that could be named.

    Returns:
        ``partner_rate`` with its standard error ``partner_rate_se``, ``control_rate``, their
        ``ratio`` (``inf`` when the control rate is 0 and the partner rate is not), the trial and
        hit counts, and ``present_partner_recall``: the share of present objects whose partner
        is present too that are named (a model that learnt to avoid partner words everywhere
        loses it; a grounded one does not).
    """
    universe = list(categories)
    partner_trials = partner_hits = control_trials = control_hits = 0
    present_trials = present_hits = 0
    per_caption: list[tuple[int, int]] = []  # (partner trials, partner hits) of each caption
    for caption in captions:
        present = set(caption["gt_objects"])
        named = set(caption["objects"])
        companions = partner_categories(present, partners)
        trials = hits = 0
        for category in universe:
            if category in present:
                if category in companions:
                    present_trials += 1
                    present_hits += category in named
            elif category in companions:
                trials += 1
                hits += category in named
            else:
                control_trials += 1
                control_hits += category in named
        partner_trials += trials
        partner_hits += hits
        per_caption.append((trials, hits))
    partner_rate = partner_hits / partner_trials if partner_trials else 0.0
    control_rate = control_hits / control_trials if control_trials else 0.0
    if control_rate > 0:
        ratio = partner_rate / control_rate
    else:
        ratio = math.inf if partner_rate > 0 else 0.0
    return {
        "partner_rate": partner_rate,
        "partner_rate_se": _ratio_se(per_caption, partner_rate),
        "present_partner_recall": present_hits / present_trials if present_trials else 0.0,
        "present_partner_trials": float(present_trials),
        "control_rate": control_rate,
        "ratio": ratio,
        "partner_trials": float(partner_trials),
        "partner_hits": float(partner_hits),
        "control_trials": float(control_trials),
        "control_hits": float(control_hits),
    }


def _ratio_se(per_caption: list[tuple[int, int]], rate: float) -> float:
    """Standard error of a pooled rate whose trials are clustered by caption.

    The trials of one caption share an image and a description, so they are not independent:
    the ratio estimator's linearised variance over captions is used instead of the binomial one.
    """
    n = len(per_caption)
    total = sum(t for t, _ in per_caption)
    if n < 2 or total == 0:
        return 0.0
    mean_trials = total / n
    residuals = sum((h - rate * t) ** 2 for t, h in per_caption)
    return math.sqrt(residuals / (n * (n - 1))) / mean_trials
