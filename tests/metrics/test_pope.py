"""POPE: reading answers, metrics by hand-computed values, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from povid_kedro.metrics.pope import parse_pope_answer, pope_metrics, score_pope

MODULE = "povid_kedro.metrics.pope"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("No, there is not.", "no"),
        ("There is no dog.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("not sure", "no"),
        ("No", "no"),
        ("yes", "yes"),
        # Only the first sentence counts.
        ("Yes. There is not a cat.", "yes"),
        # Reference quirks kept: matching is case-sensitive and by whole space-separated token.
        ("NO", "yes"),
        ("There isn't a dog.", "yes"),
        ("Nothing like that", "yes"),
    ],
)
def test_parse_pope_answer(answer: str, expected: str) -> None:
    assert parse_pope_answer(answer) == expected


QUESTIONS = [
    {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
    {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"},
    {"question_id": 3, "image": "b.jpg", "text": "Is there a car in the image?", "label": "no"},
    {"question_id": 4, "image": "b.jpg", "text": "Is there a bus in the image?", "label": "yes"},
    {"question_id": 5, "image": "c.jpg", "text": "Is there a cup in the image?", "label": "yes"},
]
# Out of order on purpose: answers are matched by question_id.
ANSWERS = [
    {"question_id": 5, "text": "yes"},  # TP
    {"question_id": 1, "text": "Yes, there is a dog."},  # TP
    {"question_id": 2, "text": "No, there is not."},  # TN
    {"question_id": 3, "text": "Yes, there is a car in the image."},  # FP
    {"question_id": 4, "text": "There is no bus."},  # FN
]


def test_score_by_hand() -> None:
    result = score_pope(QUESTIONS, ANSWERS)
    assert (result["TP"], result["FP"], result["TN"], result["FN"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["yes_ratio"] == pytest.approx(3 / 5)
    assert [q["question_id"] for q in result["questions"]] == [1, 2, 3, 4, 5]
    assert result["questions"][3]["prediction"] == "no"
    assert result["questions"][3]["correct"] is False
    assert "per_category" not in result


def test_per_category_when_every_question_has_one() -> None:
    questions = [
        dict(q, category="random" if q["image"] == "a.jpg" else "popular") for q in QUESTIONS
    ]
    result = score_pope(questions, ANSWERS)
    assert result["per_category"]["random"]["accuracy"] == pytest.approx(1.0)
    # popular: q3 FP, q4 FN, q5 TP.
    assert result["per_category"]["popular"]["accuracy"] == pytest.approx(1 / 3)
    assert result["per_category"]["popular"]["yes_ratio"] == pytest.approx(2 / 3)


def test_no_yes_predictions_give_zero_not_an_error() -> None:
    metrics = pope_metrics(["yes", "no"], ["no", "no"])
    assert metrics["precision"] == 0.0
    assert metrics["f1"] == 0.0
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_mismatched_question_ids_are_errors() -> None:
    with pytest.raises(ValueError, match=r"answers\.jsonl: no answer .* question_id 2"):
        score_pope(QUESTIONS, ANSWERS[:2] + ANSWERS[3:], answers_source="answers.jsonl")
    with pytest.raises(ValueError, match=r"question_id 9 is not in q\.jsonl"):
        score_pope(
            QUESTIONS, [*ANSWERS, {"question_id": 9, "text": "yes"}], questions_source="q.jsonl"
        )
    with pytest.raises(ValueError, match="appears twice"):
        score_pope([*QUESTIONS, QUESTIONS[0]], ANSWERS)
    with pytest.raises(ValueError, match="label must be 'yes' or 'no'"):
        score_pope([dict(QUESTIONS[0], label="maybe")], ANSWERS[1:2])
    with pytest.raises(ValueError, match="no questions"):
        score_pope([], [])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_command_writes_metrics(tmp_path: Path, run_module) -> None:
    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    answers = write_jsonl(tmp_path / "a.jsonl", ANSWERS)
    out = tmp_path / "pope.json"
    proc = run_module(MODULE, "--questions", questions, "--answers", answers, "--output", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(2 / 3)
    assert json.loads(proc.stdout)["TP"] == 2


def test_command_rejects_bad_input(tmp_path: Path, run_module) -> None:
    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    answers = write_jsonl(tmp_path / "a.jsonl", ANSWERS[:4])
    out = tmp_path / "pope.json"

    proc = run_module(MODULE, "--questions", questions, "--answers", answers, "--output", out)
    assert proc.returncode == 2
    assert str(answers) in proc.stderr and "question_id 4" in proc.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "label": "yes"}\n{"question_id": 2}\n', encoding="utf-8")
    proc = run_module(MODULE, "--questions", bad, "--answers", answers, "--output", out)
    assert proc.returncode == 2
    assert f"{bad}: line 2: missing key(s) 'label'" in proc.stderr

    bad.write_text("not json\n", encoding="utf-8")
    proc = run_module(MODULE, "--questions", questions, "--answers", bad, "--output", out)
    assert proc.returncode == 2
    assert f"{bad}: line 1: invalid JSON" in proc.stderr

    proc = run_module(
        MODULE, "--questions", tmp_path / "none.jsonl", "--answers", answers, "--output", out
    )
    assert proc.returncode == 2
    assert "none.jsonl" in proc.stderr
    assert not out.exists()


def test_command_reads_the_answers_file_the_pipeline_writes(tmp_path: Path, run_module) -> None:
    # The evaluate pipeline writes pope_answers.json as {split: [answers]} (one JSON document).
    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    answers = tmp_path / "pope_answers.json"
    answers.write_text(json.dumps({"popular": ANSWERS, "random": ANSWERS[:1]}), encoding="utf-8")
    out = tmp_path / "pope.json"
    args = ["--questions", questions, "--answers", answers, "--output", out]

    proc = run_module(MODULE, *args)
    assert proc.returncode == 2 and "['popular', 'random']: choose one with --split" in proc.stderr
    proc = run_module(MODULE, *args, "--split", "popular")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["f1"] == pytest.approx(2 / 3)
    # A plain JSON list of answers is read too.
    answers.write_text(json.dumps(ANSWERS), encoding="utf-8")
    assert run_module(MODULE, *args).returncode == 0


def test_question_ids_of_another_type_are_named_not_missed() -> None:
    as_text = [dict(a, question_id=str(a["question_id"])) for a in ANSWERS]
    with pytest.raises(ValueError, match=r"question_id '5' \(str\) is 5 \(int\) in q\.jsonl"):
        score_pope(QUESTIONS, as_text, questions_source="q.jsonl")
