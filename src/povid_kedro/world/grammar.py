"""The sentence forms the world's detailed descriptions are written in, as regular expressions.

A generated description that contains a sentence outside these forms is not something the world
could have written: the evaluation counts it as degenerate (``povid_kedro.metrics.degenerate``).
Built from the same templates and vocabulary :class:`~povid_kedro.world.text.TextWriter` uses.
"""

from __future__ import annotations

import itertools
import re

from povid_kedro.world import text
from povid_kedro.world.config import WorldConfig
from povid_kedro.world.scenes import RELATIONS, position_phrase

_SLOT = re.compile(r"\{(\w+)\}")


def _alternation(words: set[str]) -> str:
    # Longest first, so "wine glass" is tried before "glass".
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w))) + ")"


def description_grammar(cfg: WorldConfig) -> list[str]:
    """Regular expressions, one per sentence form, matching a whole sentence (case-insensitive).

    Args:
        cfg: The world config.

    Returns:
        The patterns (JSON-able: the world pipeline writes them beside the other ground truth).
    """
    nouns = {w for c in cfg.categories for w in (c.name, *c.synonyms)}
    plurals = {cfg.plural(w) for w in nouns}
    sizes = _alternation(set(cfg.sizes))
    colours = _alternation(set(cfg.colours))
    counts = _alternation({"a", "an", "one", "two", "three", "four"})
    noun_phrase = rf"{counts}(?: {sizes})?(?: {colours})? {_alternation(nouns | plurals)}"
    cells = itertools.product(range(len(cfg.grid.rows)), range(len(cfg.grid.cols)))
    positions = _alternation({position_phrase(cfg.grid, r, c) for r, c in cells})
    slots = {
        "scene": _alternation({p for s in cfg.scenes.values() for p in s.phrases}),
        "prep": _alternation({s.preposition for s in cfg.scenes.values()}),
        "np": noun_phrase,
        "NP": noun_phrase,
        "pos": positions,
        "POS": positions,
        "pos1": positions,
        "pos2": positions,
        "a": _alternation(nouns),
        "b": _alternation(nouns),
        "rel": _alternation(set(RELATIONS.values())),
    }
    templates = {
        *text._SCENE_SENTENCES,
        *text._ONE_AT_ALSO,
        *text._ONE_ALSO,
        *text._TWO_AT_ALSO,
        *text._TWO_ALSO,
        *text._COVERED,
        *text._RELATION_SENTENCES,
    }
    forms = []
    for template in sorted(templates):
        parts = _SLOT.split(template)
        # split() alternates literal text and slot names.
        pattern = "".join(slots[part] if i % 2 else re.escape(part) for i, part in enumerate(parts))
        forms.append(pattern)
    forms += [re.escape(c) for s in cfg.scenes.values() for c in s.closings]
    return sorted(set(forms))
