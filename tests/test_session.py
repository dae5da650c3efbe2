"""End to end through a real Kedro session and a real MLflow store, in a temp copy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.support.kedro_project import run_pipeline

pytestmark = pytest.mark.slow


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_world_and_ingest_run_in_a_kedro_session_and_track_to_mlflow(project: Path):
    run_pipeline(project, "embedded_world")
    raw = project / "data" / "01_raw" / "world"
    assert len(list((raw / "train2014").glob("*.png"))) == 120
    assert len(list((raw / "val2014").glob("*.png"))) == 40
    assert (raw / "annotations" / "instances_val2014.json").is_file()
    assert (raw / "pope" / "coco_pope_adversarial.json").is_file()
    assert (project / "data" / "08_reporting" / "world_samples.png").stat().st_size > 0

    # Same seed, same bytes: a second run rewrites every raw file identically.
    before = _digests(raw)
    run_pipeline(project, "embedded_world")
    assert _digests(raw) == before

    # ingest on its own, as `kedro run --pipeline ingest_ground_truth` does
    run_pipeline(project, "ingest_ground_truth")
    train = pd.read_parquet(project / "data" / "03_primary" / "ground_truth_train.parquet")
    evaluation = pd.read_parquet(project / "data" / "03_primary" / "ground_truth_eval.parquet")
    assert set(train["task_type"]) == {"description", "reasoning"}
    assert not set(train["image"]) & set(evaluation["image"])
    quarantine = pd.read_csv(project / "data" / "02_intermediate" / "ingest_quarantine.csv")
    assert quarantine.empty  # the generated world is valid input

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("povid_kedro")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlflow.runName` = 'ingest_ground_truth'"
    )
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["ingest.rows_valid"] == len(train) + len(evaluation)
    assert metrics["ingest.records_quarantined"] == 0
    assert "ingest_ground_truth.eval_fraction" in runs[0].data.params

    # inject_hallucinations on the embedded default: rules, no network
    run_pipeline(project, "inject_hallucinations")
    pairs = pd.read_parquet(project / "data" / "04_feature" / "preference_pairs.parquet")
    failures = pd.read_csv(project / "data" / "04_feature" / "injection_failures.csv")
    assert len(pairs) + len(failures) == len(train) + len(evaluation)
    assert (pairs["rejected"] != pairs["answer"]).all()
    trl = pd.read_parquet(project / "data" / "05_model_input" / "trl_preferences.parquet")
    assert {"image", "prompt", "chosen", "rejected"} <= set(trl.columns)
    assert (project / "data" / "08_reporting" / "injection_report.md").stat().st_size > 0
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlflow.runName` = 'inject_hallucinations'"
    )
    assert runs[0].data.metrics["inject.pairs"] == len(pairs)
