"""Converters of the pairs table: POVID JSON, trl rows, diff report."""

from __future__ import annotations

import json

import pandas as pd

from povid_kedro.hallucination import diff_report, make_injector, to_povid_json, to_trl_rows
from povid_kedro.testing.synthetic import make_samples


def _pairs(base_params) -> pd.DataFrame:
    return make_injector(base_params).inject(make_samples(30, seed=2), None).pairs


def test_povid_json_matches_the_published_format(base_params):
    pairs = _pairs(base_params)
    records = to_povid_json(pairs)
    assert len(records) == len(pairs)
    first, row = records[0], pairs.iloc[0]
    assert set(first) == {"id", "image", "conversations", "rejected_conversations"}
    assert first["id"] == row["id"] and first["image"] == row["image"]
    human, gpt = first["conversations"]
    assert human == {"from": "human", "value": row["prompt"]}
    assert human["value"].startswith("<image>\n")
    assert gpt == {"from": "gpt", "value": row["answer"]}
    assert first["rejected_conversations"] == [human, {"from": "gpt", "value": row["rejected"]}]
    json.dumps(records)  # plain JSON types only


def test_prompt_without_image_token_gets_one():
    pairs = pd.DataFrame(
        {"id": ["a"], "image": ["a.jpg"], "prompt": ["What is this?"], "answer": ["A cat."]}
    ).assign(rejected=["A dog."])
    assert to_povid_json(pairs)[0]["conversations"][0]["value"] == "<image>\nWhat is this?"
    assert to_trl_rows(pairs)["prompt"].tolist() == ["<image>\nWhat is this?"]


def test_trl_rows_are_plain_strings(base_params):
    pairs = _pairs(base_params)
    rows = to_trl_rows(pairs)
    assert list(rows.columns) == ["image", "prompt", "chosen", "rejected"]
    assert len(rows) == len(pairs)
    assert rows["prompt"].str.contains("<image>").all()
    assert (rows["chosen"] == pairs["answer"].astype(str)).all()
    assert (rows["rejected"] == pairs["rejected"].astype(str)).all()
    assert all(isinstance(v, str) for v in rows.to_numpy().ravel())


def test_diff_report_highlights_changed_words(base_params):
    pairs = _pairs(base_params)
    report = diff_report(pairs, n=8)
    assert report.startswith("# Hallucination injection: 8 of 30 pairs")
    assert report.count("**Chosen:**") == 8
    assert "<del>" in report and "<ins>" in report
    for name in set(pairs["hallucination_type"]):
        assert f"— {name}" in report


def test_diff_report_of_a_colour_swap():
    pairs = pd.DataFrame(
        {
            "id": ["x"],
            "prompt": ["<image>\nDescribe."],
            "answer": ["A red plate on the left."],
            "rejected": ["A blue plate on the left."],
            "hallucination_type": ["attribute"],
        }
    )
    report = diff_report(pairs, n=5)
    assert "A <del>red</del> plate on the left." in report
    assert "A <ins>blue</ins> plate on the left." in report
    assert diff_report(pairs.iloc[0:0], n=5).startswith("# Hallucination injection: 0 of 0")
