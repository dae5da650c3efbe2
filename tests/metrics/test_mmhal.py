"""MMHal-Bench: judge prompt, reading ratings, scores by hand-computed values, the command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from povid_kedro.metrics.mmhal import (
    JUDGE_PROMPT_TEMPLATE,
    MMHAL_QUESTION_TYPES,
    build_judge_prompt,
    parse_rating,
    score_mmhal,
)

MODULE = "povid_kedro.metrics.mmhal"


def record(question_type: str, question: str) -> dict:
    return {
        "question_type": question_type,
        "question_topic": "animal",
        "image_id": "x",
        "image_src": "https://example.invalid/x.jpg",
        "image_content": ["Cat", "Sofa"],
        "question": question,
        "gt_answer": "A cat sleeps on a sofa.",
        "model_answer": "A cat is sleeping on a red sofa.",
    }


RECORDS = [
    record("attribute", "What colour is the sofa?"),
    record("counting", "How many cats are there?"),
    record("attribute", "Is the cat asleep?"),
]


def test_prompt_holds_the_record_and_the_rubric() -> None:
    prompt = build_judge_prompt(RECORDS[0])
    assert "### Image Contents\nCat, Sofa\n" in prompt
    assert "### Question\nWhat colour is the sofa?\n" in prompt
    assert "### Standard Human-Generated Answer\nA cat sleeps on a sofa.\n" in prompt
    assert prompt.endswith("### LMM Response to Evaluate\nA cat is sleeping on a red sofa.\n")
    for rating in range(7):
        assert f"- Rating: {rating}, " in JUDGE_PROMPT_TEMPLATE
    with pytest.raises(ValueError, match="model_answer"):
        build_judge_prompt({k: v for k, v in RECORDS[0].items() if k != "model_answer"})


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The response is accurate.\nRating: 5, very informative, no hallucination", 5),
        ("RATING: 4", 4),
        ("Rating: 2. To repeat, rating: 2.", 2),  # the same rating twice is one rating
        ("Rating: 3 ... on reflection Rating: 1", None),  # two different ratings
        ("I cannot rate this.", None),  # none
        ("Rating: 10", None),  # out of scale, not a 1
    ],
)
def test_parse_rating(reply: str, expected: int | None) -> None:
    assert parse_rating(reply) == expected


def test_score_by_hand(caplog: pytest.LogCaptureFixture) -> None:
    judgements = [
        "Explanation ... Rating: 6",
        {"choices": [{"message": {"content": "Hallucinated colour. rating: 2"}}]},
        "No verdict.",
    ]
    with caplog.at_level(logging.WARNING):
        result = score_mmhal(RECORDS, judgements)
    assert [q["rating"] for q in result["questions"]] == [6, 2, 0]
    assert result["average_score"] == pytest.approx(8 / 3)
    assert result["hallucination_rate"] == pytest.approx(2 / 3)
    assert result["per_type"] == {"attribute": pytest.approx(3.0), "counting": pytest.approx(2.0)}
    assert result["n_unparsed"] == 1
    assert "Is the cat asleep?" in caplog.text


def test_per_type_follows_the_benchmark_order() -> None:
    records = [record(t, f"q{i}") for i, t in enumerate(reversed(MMHAL_QUESTION_TYPES))]
    result = score_mmhal(records, ["Rating: 4"] * len(records))
    assert list(result["per_type"]) == list(MMHAL_QUESTION_TYPES)


def test_mismatches_are_errors() -> None:
    with pytest.raises(ValueError, match="2 replies but responses has 3"):
        score_mmhal(RECORDS, ["Rating: 1", "Rating: 2"])
    with pytest.raises(ValueError, match=r"judgements: records\[0\]"):
        score_mmhal(RECORDS[:1], [{"choices": []}])
    with pytest.raises(ValueError, match="no records"):
        score_mmhal([], [])


def test_command_writes_scores(tmp_path: Path, run_module) -> None:
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(RECORDS), encoding="utf-8")
    judgements = tmp_path / "judgements.json"
    judgements.write_text(json.dumps(["Rating: 6", "Rating: 2", "Rating: 4"]), encoding="utf-8")
    out = tmp_path / "mmhal.json"
    proc = run_module(MODULE, "--responses", responses, "--judgements", judgements, "--output", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["average_score"] == pytest.approx(4.0)
    assert result["hallucination_rate"] == pytest.approx(1 / 3)
    assert result["per_type"] == {"attribute": 5.0, "counting": 2.0}


def test_command_rejects_bad_input(tmp_path: Path, run_module) -> None:
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(RECORDS), encoding="utf-8")
    judgements = tmp_path / "judgements.json"
    out = tmp_path / "mmhal.json"

    judgements.write_text(json.dumps(["Rating: 6", {"text": "?"}, "x"]), encoding="utf-8")
    proc = run_module(MODULE, "--responses", responses, "--judgements", judgements, "--output", out)
    assert proc.returncode == 2
    assert f"{judgements}: records[1]" in proc.stderr

    judgements.write_text('{"not": "a list"}', encoding="utf-8")
    proc = run_module(MODULE, "--responses", responses, "--judgements", judgements, "--output", out)
    assert proc.returncode == 2
    assert f"{judgements}: expected a JSON list" in proc.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "?"}]), encoding="utf-8")
    proc = run_module(MODULE, "--responses", bad, "--judgements", judgements, "--output", out)
    assert proc.returncode == 2
    assert f"{bad}: records[0]: missing key(s)" in proc.stderr
    assert not out.exists()
