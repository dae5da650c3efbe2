"""POPE scoring (Li et al. 2023, RUCAIBox/POPE ``evaluate.py``).

An answer is read by its first sentence: cut at the first ``.``, commas removed, split on
spaces; it means "no" when a token is exactly ``No``, ``not`` or ``no``, otherwise "yes".
Positive class = "yes". Answers are matched to questions by ``question_id`` (the reference
relies on file order); ``docs/metrics.md`` lists every deviation.

Command line::

    python -m povid_kedro.metrics.pope --questions FILE.jsonl --answers FILE.jsonl \\
        --output OUT.json
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from povid_kedro.metrics._io import (
    InputError,
    read_json,
    read_jsonl_numbered,
    require_keys,
    run_cli,
)

logger = logging.getLogger(__name__)

#: Tokens that make an answer "no" (case-sensitive, as in the reference: "NO" and "Not" do not).
NEGATION_TOKENS = frozenset({"No", "not", "no"})
#: Optional question key; when every question has it, metrics are also reported per value.
CATEGORY_KEY = "category"


def parse_pope_answer(text: str) -> str:
    """Read a free-text answer as ``"yes"`` or ``"no"``.

    Args:
        text: The model's answer.

    Returns:
        ``"no"`` if the first sentence has a token ``No``, ``not`` or ``no``; else ``"yes"``.
    """
    first_sentence = text.split(".", 1)[0]
    tokens = first_sentence.replace(",", "").split(" ")
    return "no" if NEGATION_TOKENS.intersection(tokens) else "yes"


def _label(record: Mapping[str, Any], where: str) -> str:
    label = record["label"]
    normalized = label.strip().lower() if isinstance(label, str) else None
    if normalized not in ("yes", "no"):
        raise ValueError(f"{where}: label must be 'yes' or 'no', got {label!r}")
    return normalized


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Confusion counts and rates for yes/no labels and predictions (positive = ``"yes"``).

    Args:
        labels: Ground truth, ``"yes"``/``"no"``.
        predictions: Parsed answers, ``"yes"``/``"no"``, same order.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (0.0 where a denominator
        is 0), ``TP``, ``FP``, ``TN``, ``FN`` and ``n``.

    Raises:
        ValueError: No pairs, or the sequences differ in length.
    """
    if len(labels) != len(predictions):
        raise ValueError("labels and predictions differ in length")
    if not labels:
        raise ValueError("no questions to score")
    pairs = list(zip(labels, predictions, strict=True))
    tp = sum(label == "yes" and pred == "yes" for label, pred in pairs)
    fp = sum(label == "no" and pred == "yes" for label, pred in pairs)
    tn = sum(label == "no" and pred == "no" for label, pred in pairs)
    fn = sum(label == "yes" and pred == "no" for label, pred in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "n": n,
    }


def score_pope(
    questions: Iterable[Mapping[str, Any]],
    answers: Iterable[Mapping[str, Any]],
    *,
    questions_source: str = "questions",
    answers_source: str = "answers",
) -> dict[str, Any]:
    """Score POPE answers against the questions' labels.

    Args:
        questions: Records with ``question_id`` and ``label`` (``"yes"``/``"no"``); other keys
            (``image``, ``text``, optional ``category``) are carried along.
        answers: Records with ``question_id`` and ``text`` (the model's answer).
        questions_source: Name of the questions' file, used in error messages.
        answers_source: Name of the answers' file, used in error messages.

    Returns:
        The metrics of :func:`pope_metrics`; ``per_category`` (metrics per ``category`` value,
        present only when every question has one); and ``questions``: per question its
        ``question_id``, ``label``, ``answer``, ``prediction`` and ``correct``, in question order.

    Raises:
        ValueError: A record lacks a key, a label is not yes/no, a ``question_id`` repeats, an
            answer has no question, a question has no answer, or there are no questions.
    """
    question_list = list(questions)
    by_id: dict[Any, Mapping[str, Any]] = {}
    for i, question in enumerate(question_list):
        where = f"{questions_source}: records[{i}]"
        require_keys(question, ["question_id", "label"], where)
        qid = question["question_id"]
        if not isinstance(qid, (str, int)):
            raise ValueError(f"{where}: question_id must be a string or an integer, got {qid!r}")
        if qid in by_id:
            raise ValueError(f"{where}: question_id {qid!r} appears twice")
        _label(question, where)
        by_id[qid] = question
    if not question_list:
        raise ValueError(f"{questions_source}: no questions to score")
    answer_text: dict[Any, str] = {}
    for i, answer in enumerate(answers):
        where = f"{answers_source}: records[{i}]"
        require_keys(answer, ["question_id", "text"], where)
        qid = answer["question_id"]
        if not isinstance(qid, (str, int)):
            raise ValueError(f"{where}: question_id must be a string or an integer, got {qid!r}")
        if not isinstance(answer["text"], str):
            raise ValueError(f"{where}: 'text' of question_id {qid!r} must be a string")
        if qid not in by_id:
            twin = next((k for k in by_id if str(k) == str(qid)), None)
            if twin is not None:
                # 1 and "1" are different ids: say so rather than match by text or drop it.
                raise ValueError(
                    f"{where}: question_id {qid!r} ({type(qid).__name__}) is "
                    f"{twin!r} ({type(twin).__name__}) in {questions_source}; write the ids of "
                    "both files with the same type"
                )
            raise ValueError(f"{where}: question_id {qid!r} is not in {questions_source}")
        if qid in answer_text:
            raise ValueError(f"{where}: question_id {qid!r} is answered twice")
        answer_text[qid] = answer["text"]
    missing = [qid for qid in by_id if qid not in answer_text]
    if missing:
        shown = ", ".join(repr(q) for q in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{answers_source}: no answer for {len(missing)} question(s) of "
            f"{questions_source}: question_id {shown}"
        )

    rows = []
    for i, question in enumerate(question_list):
        qid = question["question_id"]
        label = _label(question, f"{questions_source}: records[{i}]")
        prediction = parse_pope_answer(answer_text[qid])
        rows.append(
            {
                "question_id": qid,
                "label": label,
                "answer": answer_text[qid],
                "prediction": prediction,
                "correct": prediction == label,
            }
        )
    result = pope_metrics([r["label"] for r in rows], [r["prediction"] for r in rows])
    if all(CATEGORY_KEY in q for q in question_list):
        groups: dict[str, list[dict[str, Any]]] = {}
        for question, row in zip(question_list, rows, strict=True):
            groups.setdefault(str(question[CATEGORY_KEY]), []).append(row)
        result["per_category"] = {
            name: pope_metrics([r["label"] for r in group], [r["prediction"] for r in group])
            for name, group in groups.items()
        }
    result["questions"] = rows
    logger.info(
        "POPE: accuracy %.4f, F1 %.4f, yes-ratio %.4f over %d questions",
        result["accuracy"],
        result["f1"],
        result["yes_ratio"],
        result["n"],
    )
    return result


_SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "TP", "FP", "TN", "FN", "n")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m povid_kedro.metrics.pope",
        description="POPE (Li et al. 2023) accuracy, precision, recall, F1 and yes-ratio.",
    )
    parser.add_argument(
        "--questions", required=True, help="JSONL with question_id, image, text, label"
    )
    parser.add_argument(
        "--answers",
        required=True,
        help="question_id + text per answer: JSONL, a JSON list, or the pipeline's "
        "pope_answers.json (an object of splits; pick one with --split)",
    )
    parser.add_argument("--split", help="the split to score in a pipeline pope_answers.json")
    parser.add_argument("--output", required=True, help="JSON file to write")
    return parser


def _read(path: str, keys: list[str], check_label: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file, checking keys (and labels) with line numbers in the messages."""
    records = []
    for lineno, record in read_jsonl_numbered(path):
        require_keys(record, keys, f"{path}: line {lineno}")
        if check_label:
            _label(record, f"{path}: line {lineno}")
        records.append(record)
    return records


def _read_answers(path: str, split: str | None) -> list[dict[str, Any]]:
    """Answers as JSONL (POPE's format), a JSON list, or ``{split: [answers]}`` as the
    evaluate pipeline writes them."""
    try:
        document = read_json(path)
    except InputError:
        # Not one JSON document: JSON Lines (a one-line JSONL file parses as an object).
        return _read(path, ["question_id", "text"])
    if isinstance(document, dict) and "question_id" not in document:
        splits = sorted(document)
        if split is None:
            if len(splits) != 1:
                raise InputError(f"{path} holds the splits {splits}: choose one with --split")
            split = splits[0]
        if split not in document:
            raise InputError(f"{path} has no split {split!r}; it holds {splits}")
        document = document[split]
    elif split is not None:
        raise InputError(f"--split {split!r}: {path} holds one set of answers, not splits")
    records = document if isinstance(document, list) else [document]
    for i, record in enumerate(records):
        require_keys(record, ["question_id", "text"], f"{path}: records[{i}]")
    if not records:
        raise InputError(f"{path}: file holds no records")
    return records


def _compute(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    questions = _read(args.questions, ["question_id", "label"], check_label=True)
    answers = _read_answers(args.answers, args.split)
    result = score_pope(
        questions, answers, questions_source=args.questions, answers_source=args.answers
    )
    summary = {key: result[key] for key in _SUMMARY_KEYS}
    if "per_category" in result:
        summary["per_category"] = {
            name: {key: metrics[key] for key in ("accuracy", "f1", "yes_ratio")}
            for name, metrics in result["per_category"].items()
        }
    return result, summary


def main(argv: list[str] | None = None) -> int:
    """Run the POPE command.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 2 on missing or malformed input.
    """
    return run_cli(_build_parser(), _compute, argv)


if __name__ == "__main__":
    raise SystemExit(main())
