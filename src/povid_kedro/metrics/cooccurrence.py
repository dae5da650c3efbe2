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
        ``partner_rate``, ``control_rate``, their ``ratio`` (``inf`` when the control rate is 0
        and the partner rate is not), and the trial and hit counts.
    """
    universe = list(categories)
    partner_trials = partner_hits = control_trials = control_hits = 0
    for caption in captions:
        present = set(caption["gt_objects"])
        named = set(caption["objects"])
        companions_of_absent = {partners.get(obj) for obj in present} - {None}
        for category in universe:
            if category in present:
                continue
            if category in companions_of_absent:
                partner_trials += 1
                partner_hits += category in named
            else:
                control_trials += 1
                control_hits += category in named
    partner_rate = partner_hits / partner_trials if partner_trials else 0.0
    control_rate = control_hits / control_trials if control_trials else 0.0
    if control_rate > 0:
        ratio = partner_rate / control_rate
    else:
        ratio = math.inf if partner_rate > 0 else 0.0
    return {
        "partner_rate": partner_rate,
        "control_rate": control_rate,
        "ratio": ratio,
        "partner_trials": float(partner_trials),
        "partner_hits": float(partner_hits),
        "control_trials": float(control_trials),
        "control_hits": float(control_hits),
    }
