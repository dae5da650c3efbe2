"""Clean and check a rewritten answer before it becomes a rejection.

Models wrap their output ("Sure! Here is the modified answer:", code fences, quotes), refuse,
echo the input unchanged, or drift far in length. Used by every injector, so a rule-made and a
model-made rejection pass the same gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from povid_kedro.hallucination.config import ValidationConfig

EMPTY = "empty"
IDENTICAL = "identical"
REFUSAL = "refusal"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.DOTALL)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
# A refusal is judged on the start of the reply: a long answer that mentions "I cannot"
# somewhere in the middle is still an answer.
_REFUSAL_WINDOW = 200


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one reply.

    Attributes:
        ok: True when ``text`` can be used as the rejected answer.
        text: The reply with wrapper text removed.
        reason: ``None`` when ok, else one of ``empty``, ``identical``, ``refusal``,
            ``too_short``, ``too_long``.
        detail: A short human-readable explanation (empty when ok).
    """

    ok: bool
    text: str
    reason: str | None = None
    detail: str = ""


def normalize(text: str) -> str:
    """Whitespace-collapsed, case-folded text, for comparisons and lengths."""
    return " ".join(text.split()).casefold()


class Validator:
    """Cleans replies and checks them against the chosen answer.

    Args:
        config: Ratio bounds and the refusal / wrapper / trailer patterns.
    """

    def __init__(self, config: ValidationConfig) -> None:
        self.config = config
        self._refusals = [re.compile(p, re.IGNORECASE) for p in config.refusal_patterns]
        self._wrappers = [
            re.compile(rf"\A\s*(?:{p})\s*", re.IGNORECASE) for p in config.wrapper_patterns
        ]
        self._trailers = [
            re.compile(rf"\n\s*\n\s*(?:{p}).*\Z", re.IGNORECASE | re.DOTALL)
            for p in config.trailer_patterns
        ]

    def clean(self, raw: str | None) -> str:
        """Strip framing: a code fence, leading wrapper phrases, trailing notes, outer quotes."""
        text = (raw or "").strip()
        # Several layers can stack ("Sure! Here it is:" + fence + quotes): peel until stable.
        for _ in range(4):
            before = text
            fence = _FENCE.search(text)
            if fence and fence.group(1).strip():
                text = fence.group(1).strip()
            for pattern in self._wrappers:
                text = pattern.sub("", text, count=1).strip()
            for pattern in self._trailers:
                text = pattern.sub("", text).strip()
            text = _strip_quotes(text)
            if text == before:
                break
        return text

    def check(self, raw: str | None, chosen: str) -> Verdict:
        """Clean ``raw`` and decide whether it is a usable rejection of ``chosen``.

        Args:
            raw: The model's (or rule's) output.
            chosen: The ground-truth answer it rewrites.

        Returns:
            The verdict with the cleaned text.
        """
        text = self.clean(raw)
        norm, ref = normalize(text), normalize(chosen)
        if not norm:
            return Verdict(False, text, EMPTY, "the reply is empty after removing wrapper text")
        if norm == ref:
            return Verdict(False, text, IDENTICAL, "the reply repeats the original answer")
        head = text[:_REFUSAL_WINDOW]
        for pattern in self._refusals:
            if pattern.search(head):
                return Verdict(
                    False, text, REFUSAL, f"the reply is a refusal (matched {pattern.pattern!r})"
                )
        ratio = len(norm) / max(1, len(ref))
        if ratio < self.config.min_ratio:
            return Verdict(
                False,
                text,
                TOO_SHORT,
                f"the reply has {ratio:.2f}x the original length (minimum "
                f"{self.config.min_ratio:g}x)",
            )
        if ratio > self.config.max_ratio:
            return Verdict(
                False,
                text,
                TOO_LONG,
                f"the reply has {ratio:.2f}x the original length (maximum "
                f"{self.config.max_ratio:g}x)",
            )
        return Verdict(True, text)


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        inner = text[1:-1]
        # Only a pair that encloses the whole text: '"a" and "b"' must stay intact.
        if text[0] not in inner and text[-1] not in inner:
            return inner.strip()
    return text
