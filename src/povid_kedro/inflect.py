"""English inflection of object names: plurals and the indefinite article.

One implementation for the world's descriptions, the rule injector's rewrites and POPE's
questions. CHAIR's singularizer stays in :mod:`povid_kedro.metrics.chair`, because it must
reproduce the reference implementation's word matching (``docs/metrics.md``), including its
mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping

IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
    "wolf": "wolves",
    "calf": "calves",
    "half": "halves",
    "loaf": "loaves",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "ox": "oxen",
    "potato": "potatoes",
    "tomato": "tomatoes",
}
# Same form in singular and plural (or plural-only nouns).
INVARIANT = {
    "sheep",
    "deer",
    "fish",
    "bison",
    "cattle",
    "skis",
    "scissors",
    "glasses",
    "aircraft",
    "moose",
}


def pluralize(phrase: str, irregular: Mapping[str, str] = IRREGULAR_PLURALS) -> str:
    """English plural of a (possibly multi-word) noun phrase: only the last word changes.

    Args:
        phrase: A singular noun phrase ("traffic light").
        irregular: Irregular plurals of last words (the world passes its configured ones).

    Returns:
        The plural ("traffic lights").
    """
    head, _, last = phrase.rpartition(" ")
    low = last.lower()
    if low in INVARIANT:
        plural = last
    elif low in irregular:
        plural = irregular[low]
    elif low.endswith("man") and low not in {"human", "german"}:
        plural = last[:-3] + "men"
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


def article(word: str) -> str:
    """ "a" or "an" before ``word``, by its spelling."""
    low = word.lower()
    # Spelling-based heuristic; "uni-"/"eu-"/"one" sound like a consonant, "hour" does not.
    if low.startswith(("uni", "use", "eu", "one", "ufo")):
        return "a"
    if low.startswith(("hour", "honest", "honou", "heir")):
        return "an"
    return "an" if low[:1] in "aeiou" else "a"
