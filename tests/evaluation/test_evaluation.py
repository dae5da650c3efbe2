"""Evaluation library: bad input names the file or record; the co-occurrence ratio by hand;
the report always shows objects named per image beside CHAIR."""

from __future__ import annotations

import math

import pytest
from kedro.io import DatasetError

from povid_kedro.datasets.jsonl import JSONLinesDataset
from povid_kedro.evaluation import answer_pope, describe_images, report_markdown
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.metrics.cooccurrence import cooccurrence_hallucination


def test_empty_evaluation_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="evaluation set is empty"):
        describe_images(None, None, ImageFolder(tmp_path), {"images": []}, prompt="", generation={})
    with pytest.raises(ValueError, match="POPE question file is empty"):
        answer_pope(None, None, ImageFolder(tmp_path), [], template="{question}", generation={})


def test_missing_image_names_the_record(tmp_path):
    instances = {"images": [{"id": 7, "file_name": "gone.png"}]}
    with pytest.raises(ValueError, match=r"instances image id 7: image 'gone.png' not found"):
        describe_images(None, None, ImageFolder(tmp_path), instances, prompt="", generation={})


def test_malformed_question_file_names_file_and_line(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    path.write_text('{"question_id": 1, "image": "a.png", "text": "q", "label": "yes"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"coco_pope_random.json:2: not valid JSON"):
        JSONLinesDataset(str(path)).load()


def test_cooccurrence_ratio_by_hand():
    partners = {"fork": "knife", "knife": "fork", "car": None, "dog": None}
    captions = [
        # fork present -> knife absent is a partner trial (named); car, dog controls (car named)
        {"gt_objects": ["fork"], "objects": ["fork", "knife", "car"]},
        # dog present -> fork, knife, car are controls (none named)
        {"gt_objects": ["dog"], "objects": ["dog"]},
    ]
    result = cooccurrence_hallucination(captions, partners, ["fork", "knife", "car", "dog"])
    assert result["partner_trials"] == 1 and result["partner_hits"] == 1
    assert result["control_trials"] == 5 and result["control_hits"] == 1
    assert result["ratio"] == pytest.approx(1.0 / (1 / 5))
    none_named = cooccurrence_hallucination(captions[1:], partners, ["fork", "car", "dog"])
    assert none_named["ratio"] == 0.0
    only_partner = cooccurrence_hallucination(captions[:1], partners, ["fork", "knife"])
    assert math.isinf(only_partner["ratio"])


def test_report_shows_objects_per_image_next_to_chair():
    rows = {
        "base": {"chair_s": 0.5, "chair_s_se": 0.01, "objects_per_image": 2.5, "recall": 0.8},
        "stage2": {"chair_s": 0.3, "chair_s_se": 0.01, "objects_per_image": 1.2, "recall": 0.6},
    }
    report = report_markdown(rows)
    header = next(line for line in report.splitlines() if line.startswith("| model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns.index("objects / image") > columns.index("CHAIR_s")
    assert "| stage2 | 0.300 | 0.010 |" in report


def test_partner_rate_error_and_present_partner_recall_by_hand():
    partners = {"fork": "knife", "knife": "fork", "car": None}
    captions = [
        {"gt_objects": ["fork"], "objects": ["fork", "knife"]},  # partner trial, hit
        {"gt_objects": ["fork"], "objects": ["fork"]},  # partner trial, miss
        {"gt_objects": ["fork", "knife"], "objects": ["fork"]},  # 2 present partners, 1 named
        {"gt_objects": ["car"], "objects": ["car"]},  # no partner trial
    ]
    result = cooccurrence_hallucination(captions, partners, ["fork", "knife", "car"])
    assert result["partner_trials"] == 2 and result["partner_rate"] == 0.5
    assert result["present_partner_trials"] == 2 and result["present_partner_recall"] == 0.5
    # Ratio estimator over captions: residuals h - 0.5 t = 0.5, -0.5, 0, 0; mean trials 0.5.
    expected = math.sqrt((0.25 + 0.25) / (4 * 3)) / 0.5
    assert result["partner_rate_se"] == pytest.approx(expected)
