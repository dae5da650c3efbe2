"""The ingest_ground_truth pipeline run by a Kedro runner on a catalog filled here."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.pipelines.ingest_ground_truth import create_pipeline

PARAMS = {"task_types": {"detail": "description"}, "eval_fraction": 0.25, "seed": 0}


def _catalog(tmp_path, records):
    images = {f"img{i}.png": Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(8)}
    folder = ImageFolderDataset(str(tmp_path / "images"))
    folder.save(images)
    catalog = DataCatalog()
    catalog["instructions"] = MemoryDataset({"detail": records}, copy_mode="assign")
    catalog["train_images"] = MemoryDataset(folder.load(), copy_mode="assign")
    catalog["params:ingest_ground_truth"] = MemoryDataset(PARAMS)
    for name in ("ground_truth_train", "ground_truth_eval", "ingest_quarantine", "ingest_metrics"):
        catalog[name] = MemoryDataset(copy_mode="assign")
    return catalog


def _record(i, image):
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe the following image in detail."},
            {"from": "gpt", "value": f"Answer {i}."},
        ],
    }


def test_pipeline_outputs_tables_quarantine_and_metrics(tmp_path):
    records = [_record(i, f"img{i}.png") for i in range(8)] + [_record(99, "nope.png")]
    catalog = _catalog(tmp_path, records)
    SequentialRunner().run(create_pipeline(), catalog)

    train, evaluation = catalog.load("ground_truth_train"), catalog.load("ground_truth_eval")
    quarantine = catalog.load("ingest_quarantine")
    metrics = catalog.load("ingest_metrics")
    assert isinstance(train, pd.DataFrame)
    assert len(train) == 6 and len(evaluation) == 2
    assert quarantine["id"].tolist() == ["r99"]
    assert metrics["quarantined_image_not_found"] == {"value": 1.0, "step": 0}
    assert metrics["rows_valid"]["value"] == 8


def test_pipeline_with_no_valid_record_fails_with_the_reason(tmp_path):
    catalog = _catalog(tmp_path, [_record(1, "../escape.png")])
    with pytest.raises(Exception, match="no valid record.*image_escapes_root"):
        SequentialRunner().run(create_pipeline(), catalog)
