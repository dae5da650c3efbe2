"""Pure converters of the pairs table: POVID's JSON, trl rows, and a readable diff report."""

from __future__ import annotations

import difflib
import html
import re
from typing import Any

import pandas as pd

from povid_kedro.schema import IMAGE_TOKEN

_WORDS = re.compile(r"\S+")


def _human_turn(prompt: str) -> str:
    """The prompt as POVID writes it: ``<image>\\n`` first, once."""
    text = str(prompt)
    if IMAGE_TOKEN in text:
        return text
    return f"{IMAGE_TOKEN}\n{text}"


def to_povid_json(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """Pairs in POVID's published preference format.

    Args:
        pairs: The pairs table (``id``, ``image``, ``prompt``, ``answer``, ``rejected``).

    Returns:
        ``[{id, image, conversations: [{from: human, value}, {from: gpt, value: chosen}],
        rejected_conversations: [{from: human, value}, {from: gpt, value: rejected}]}]``.
    """
    records: list[dict[str, Any]] = []
    for row in pairs[["id", "image", "prompt", "answer", "rejected"]].itertuples(index=False):
        human = {"from": "human", "value": _human_turn(row.prompt)}
        records.append(
            {
                "id": str(row.id),
                "image": str(row.image),
                "conversations": [human, {"from": "gpt", "value": str(row.answer)}],
                "rejected_conversations": [
                    dict(human),
                    {"from": "gpt", "value": str(row.rejected)},
                ],
            }
        )
    return records


def to_trl_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs as trl DPO rows of plain strings.

    Args:
        pairs: The pairs table.

    Returns:
        Columns ``image`` (relative path; the training side loads it), ``prompt`` (with
        ``<image>``), ``chosen``, ``rejected``.
    """
    return pd.DataFrame(
        {
            "image": pairs["image"].astype(str).tolist(),
            "prompt": [_human_turn(p) for p in pairs["prompt"]],
            "chosen": pairs["answer"].astype(str).tolist(),
            "rejected": pairs["rejected"].astype(str).tolist(),
        }
    )


def _diff_words(chosen: str, rejected: str) -> tuple[str, str]:
    """Chosen with removed words struck through, rejected with added words in bold."""
    a, b = _WORDS.findall(chosen), _WORDS.findall(rejected)
    left: list[str] = []
    right: list[str] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        old = html.escape(" ".join(a[i1:i2]))
        new = html.escape(" ".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old:
            left.append(f"<del>{old}</del>")
        if new:
            right.append(f"<ins>{new}</ins>")
    return " ".join(left), " ".join(right)


def diff_report(pairs: pd.DataFrame, n: int = 20) -> str:
    """A Markdown report of ``n`` pairs with the changed words highlighted.

    Rows are taken round-robin over hallucination types (first rows of each), so every type
    shows up even when one dominates. Removed words are ``<del>``, added ones ``<ins>``
    (GitHub and MLflow render both).

    Args:
        pairs: The pairs table.
        n: Most pairs to show.

    Returns:
        Markdown text.
    """
    lines = [f"# Hallucination injection: {min(n, len(pairs))} of {len(pairs)} pairs", ""]
    if len(pairs):
        counts = pairs["hallucination_type"].value_counts()
        lines.append("| type | pairs |")
        lines.append("|---|---|")
        lines += [f"| {name} | {count} |" for name, count in counts.items()]
        lines.append("")
    groups = [g for _, g in pairs.groupby("hallucination_type", sort=True)] if len(pairs) else []
    picked: list[pd.Series] = []
    depth = 0
    while len(picked) < n and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g) and len(picked) < n:
                picked.append(g.iloc[depth])
        depth += 1
    for row in picked:
        chosen, rejected = _diff_words(str(row["answer"]), str(row["rejected"]))
        detail = row.get("hallucination_detail") or ""
        lines += [
            f"## `{html.escape(str(row['id']))}` — {row['hallucination_type']}"
            + (f" (`{html.escape(str(detail))}`)" if detail else ""),
            "",
            f"**Prompt:** {html.escape(str(row['prompt']).replace(IMAGE_TOKEN, '').strip())}",
            "",
            f"**Chosen:** {chosen}",
            "",
            f"**Rejected:** {rejected}",
            "",
        ]
    return "\n".join(lines)
