"""Degenerate descriptions: text a fluent model does not write.

A description is degenerate when

- within a sentence, a run of 1 to 3 words is immediately repeated ("the the", "a small blue a
  small blue"), or
- given the sentence forms of the data's own grammar (the embedded world writes them,
  :func:`povid_kedro.world.grammar.description_grammar`), one of its sentences matches none of
  them, which also catches a description cut off mid-sentence by the token limit.

Real data has no such grammar; there only the repetition rule applies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_REPEAT_NGRAM = 3


def repeated_ngram(text: str, max_n: int = MAX_REPEAT_NGRAM) -> str | None:
    """The first immediately repeated run of ``1..max_n`` words, or ``None``."""
    words = _WORD.findall(text.lower())
    for n in range(1, max_n + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                return " ".join(words[i : i + n])
    return None


class DegenerateChecker:
    """Flags degenerate descriptions.

    Args:
        sentence_forms: Regular expressions, each matching one whole sentence form
            (case-insensitive); empty: only the repetition rule applies.
    """

    def __init__(self, sentence_forms: Sequence[str] = ()) -> None:
        self.forms = (
            re.compile("|".join(f"(?:{f})" for f in sentence_forms), re.IGNORECASE)
            if sentence_forms
            else None
        )

    def reason(self, text: str) -> str | None:
        """Why ``text`` is degenerate (``None``: it is not)."""
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
        for sentence in sentences:
            repeat = repeated_ngram(sentence)
            if repeat is not None:
                return f"repeated {repeat!r}"
        if self.forms is None:
            return None
        for sentence in sentences:
            if not self.forms.fullmatch(sentence):
                return f"not a sentence of the grammar: {sentence!r}"
        return None

    def score(self, captions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Share of degenerate captions and the first few examples with their reason.

        Args:
            captions: Records with ``caption`` (and ``image_id``).

        Returns:
            ``degenerate_share``, ``degenerate_count``, ``captions`` and ``examples``.
        """
        count = total = 0
        examples: list[dict[str, Any]] = []
        for record in captions:
            total += 1
            why = self.reason(str(record["caption"]))
            if why is not None:
                count += 1
                if len(examples) < 20:
                    examples.append({"image_id": record.get("image_id"), "reason": why})
        return {
            "degenerate_share": count / total if total else 0.0,
            "degenerate_count": count,
            "captions": total,
            "examples": examples,
        }
