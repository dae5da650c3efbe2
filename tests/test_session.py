"""End to end through a real Kedro session and a real MLflow store, in a temp copy."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]

# A small world keeps the run to seconds; the defaults are exercised by the benchmark.
SMALL_WORLD = {"embedded_world": {"n_train_images": 120, "n_eval_images": 40}}

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's configuration in a temp dir, used as the working directory."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / ".telemetry", tmp_path / ".telemetry")
    (tmp_path / "src").mkdir()  # the package itself is imported from the install
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path


def _run(project: Path, pipeline: str) -> None:
    with KedroSession.create(project_path=project, runtime_params=SMALL_WORLD) as session:
        session.run(pipeline_names=[pipeline])
    # kedro-mlflow 2.0.3 re-enters its run once per node (for threaded runners) and closes it
    # once, which leaves it on mlflow's stack in this process; a CLI run ends with its process.
    # Close it, as a second `kedro run` process would start clean.
    while mlflow.active_run():
        mlflow.end_run()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_world_and_ingest_run_in_a_kedro_session_and_track_to_mlflow(project: Path):
    _run(project, "embedded_world")
    raw = project / "data" / "01_raw" / "world"
    assert len(list((raw / "train2014").glob("*.png"))) == 120
    assert len(list((raw / "val2014").glob("*.png"))) == 40
    assert (raw / "annotations" / "instances_val2014.json").is_file()
    assert (raw / "pope" / "coco_pope_adversarial.json").is_file()
    assert (project / "data" / "08_reporting" / "world_samples.png").stat().st_size > 0

    # Same seed, same bytes: a second run rewrites every raw file identically.
    before = _digests(raw)
    _run(project, "embedded_world")
    assert _digests(raw) == before

    # ingest on its own, as `kedro run --pipeline ingest_ground_truth` does
    _run(project, "ingest_ground_truth")
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
