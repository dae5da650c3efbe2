"""End to end through a real Kedro session and a real MLflow store, in a temp copy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.support.kedro_project import ROOT, free_port, run_pipeline

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
    assert set(train["task_type"]) == {"description", "reasoning", "vqa"}
    assert set(train.loc[train["task_type"] == "vqa", "answer"]) == {"Yes", "No"}
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
    # Each node's wall time and peak memory, recorded by the project's hook.
    assert 0 < metrics["node.ingest_ground_truth_node.seconds"] < 600
    assert 50 < metrics["node.ingest_ground_truth_node.peak_rss_mb"] < 24 * 1024

    # inject_hallucinations on the embedded default: rules, no network
    run_pipeline(project, "inject_hallucinations")
    pairs = pd.read_parquet(project / "data" / "04_feature" / "preference_pairs.parquet")
    failures = pd.read_csv(project / "data" / "04_feature" / "injection_failures.csv")
    # Pairs come from descriptions and reasoning; the one-word VQA rows are counted, not paired
    # (the default type_mix does not list vqa).
    injectable = train["task_type"].ne("vqa").sum() + evaluation["task_type"].ne("vqa").sum()
    assert len(pairs) + len(failures) == injectable
    assert set(pairs["task_type"]) == {"description", "reasoning"}
    assert (pairs["rejected"] != pairs["answer"]).all()
    trl = pd.read_parquet(project / "data" / "05_model_input" / "trl_preferences.parquet")
    assert {"image", "prompt", "chosen", "rejected"} <= set(trl.columns)
    assert (project / "data" / "08_reporting" / "injection_report.md").stat().st_size > 0
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlflow.runName` = 'inject_hallucinations'"
    )
    assert runs[0].data.metrics["inject.pairs"] == len(pairs)
    not_paired = (train["task_type"] == "vqa").sum() + (evaluation["task_type"] == "vqa").sum()
    assert runs[0].data.metrics["inject.not_injected_vqa"] == not_paired
    assert "task_type" in trl.columns


TINY_MODEL = {
    "base_model": {
        "model": {
            "image_size": 32,
            "patch_size": 8,
            "text_hidden_size": 32,
            "vision_hidden_size": 32,
            "text_intermediate_size": 64,
            "vision_intermediate_size": 64,
        },
        "tokenizer": {"vocab_size": 400},
        "train": {"steps": 12, "batch_size": 8, "text_warmup_steps": 4, "log_every": 4},
    },
    "evaluate": {
        "max_images": 12,
        "max_pope_questions": 16,
        "description_generation": {"max_new_tokens": 16},
        # 12 steps of training decide nothing: let the first candidate become champion so the
        # registry round trip below is exercised (tests/evaluation/test_gate.py covers the gate).
        "gate": {"max_pope_f1_drop": 0.01, "first_against_base": False, "no_collapse": None},
    },
    "noise_trigger": {"generate": {"max_new_tokens": 8}},
    "dpo_training": {
        "stage1": {"max_steps": 3, "batch_size": 4, "logging_steps": 1},
        "stage2": {"max_steps": 2, "batch_size": 4, "logging_steps": 1},
    },
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Every pipeline, one after the other, on the small world and tiny model."""
    from tests.support.kedro_project import make_project

    project = make_project(tmp_path_factory.mktemp("full_run"))
    pipelines = (
        "embedded_world",
        "ingest_ground_truth",
        "inject_hallucinations",
        "base_model",
        "noise_trigger",
        "dpo_training",
        "evaluate",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        for pipeline in pipelines:
            run_pipeline(project, pipeline, TINY_MODEL)
    return project


def test_the_walkthrough_notebook_runs_on_a_real_run(full_run: Path):
    import nbclient
    import nbformat

    path = ROOT / "notebooks" / "walkthrough.ipynb"
    notebook = nbformat.read(path, as_version=4)
    # Committed without outputs (nbstripout in .pre-commit-config.yaml).
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": full_run}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(
        str(o.get("text", ""))
        + str(o.get("data", {}).get("text/markdown", ""))
        + str(o.get("data", {}).get("text/html", ""))
        for o in outputs
    )
    assert "<mark>" in text  # a pair's injected words, highlighted
    assert re.search(r"stage2 noise: [1-9]\d* steps", text)  # curves read from MLflow
    assert "| stage2 |" in text  # the evaluation table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # world samples, noise steps, training curves


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_kedro_viz_serves_previews_of_the_key_datasets(full_run: Path):
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("kedro")),
            "viz",
            "run",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=full_run,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                graph = _get(f"http://127.0.0.1:{port}/api/main")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-6000:]
                assert time.monotonic() < deadline, "kedro viz did not answer in 180 s"
                time.sleep(1)
        data = {n["name"]: n for n in graph["nodes"] if n["type"] == "data"}
        # Every dataset sits in a layer, and no node writes to an earlier layer than it reads
        # (kedro viz turns the layer view off on a cycle), so the graph reads by layer.
        assert [name for name, n in data.items() if not n.get("layer")] == []
        assert graph["layers"][0] == "raw" and graph["layers"][-1] == "reporting"
        expected = {
            "ground_truth_train": "TablePreview",
            "preference_pairs": "TablePreview",
            "injection_failures": "TablePreview",
            "world_samples_figure": "ImagePreview",
            "evaluation_figure": "ImagePreview",
            "noise_figure": "ImagePreview",
            "base_model_loss_figure": "ImagePreview",
            "stage1_curves": "ImagePreview",
            "stage2_curves": "ImagePreview",
            "ingest_quarantine": "TablePreview",
            "stage2.summary": "JSONPreview",
            "gate_decision": "JSONPreview",
            "evaluation_gallery": "HTMLPreview",
        }
        for name, kind in expected.items():
            meta = _get(f"http://127.0.0.1:{port}/api/nodes/{data[name]['id']}")
            assert meta.get("preview_type") == kind, (name, meta.get("preview_type"))
            assert meta.get("preview"), name
        rows = _get(f"http://127.0.0.1:{port}/api/nodes/{data['preference_pairs']['id']}")
        assert len(rows["preview"]["data"]) == 10  # preview_args: nrows
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_every_pipeline_in_a_kedro_session(full_run: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    project = full_run

    # The base model directory loads like any Hugging Face LLaVA.
    model_dir = project / "data" / "06_models" / "base_model"
    AutoModelForImageTextToText.from_pretrained(model_dir)
    assert AutoProcessor.from_pretrained(model_dir).image_token == "<image>"

    # noise_trigger: one reproducible noisy image per pair, and the noise-steps figure
    pairs = pd.read_parquet(project / "data" / "04_feature" / "preference_pairs.parquet")
    noisy = sorted((project / "data" / "04_feature" / "noisy_images").glob("*.png"))
    assert len(noisy) == len(pairs)
    assert (project / "data" / "08_reporting" / "noise_steps.png").stat().st_size > 0

    report = (project / "data" / "08_reporting" / "evaluation_report.md").read_text()
    for model in ("base", "stage1", "stage2"):
        assert f"| {model} |" in report
    assert "objects / image" in report
    assert "Champion gate: stage-2 model (registry version 1) promoted" in report
    assert (project / "data" / "08_reporting" / "evaluation.png").stat().st_size > 0
    captions = (project / "data" / "07_model_output" / "base" / "captions.jsonl").read_text()
    assert len(captions.splitlines()) == 12

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("povid_kedro")
    by_name = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert "base_model.sft_loss" in by_name["base_model"].data.metrics
    history = client.get_metric_history(by_name["base_model"].info.run_id, "base_model.sft_loss")
    assert len(history) == 3  # 12 steps logged in windows of 4
    evaluated = by_name["evaluate"].data.metrics
    for key in ("base.chair_s", "base.recall", "base.objects_per_image", "base.pope_random_f1"):
        assert 0.0 <= evaluated[key] <= 50.0, key
    assert "stage2.chair_s" in evaluated
    # The gallery: on disk and beside the report in the evaluate run's artifacts.
    gallery = (project / "data" / "08_reporting" / "gallery.html").read_text()
    assert gallery.count('<section class="item"') == 12
    artifacts = client.list_artifacts(by_name["evaluate"].info.run_id, "reporting")
    assert "reporting/gallery.html" in {a.path for a in artifacts}
    trained = by_name["dpo_training"].data.metrics
    assert {"stage1.loss", "stage2.hallucination/margins", "stage2.noise/margins"} <= set(trained)

    # The stage-2 model is in the registry: first as candidate, then champion (no champion yet).
    registered = client.get_model_version_by_alias("povid-tiny", "champion")
    assert int(registered.version) == 1
    assert float(registered.tags["chair_s"]) == evaluated["stage2.chair_s"]
    # The champion is the evaluated model (the weights digest the directory's record and the
    # registration both hold), measured on this run's evaluation set (12 images).
    record = json.loads(
        (project / "data" / "06_models" / "stage2_model" / "povid_model.json").read_text()
    )
    assert registered.tags["weights_sha256"] == record["weights_sha256"]
    assert record["mlflow_run_id"] == by_name["dpo_training"].info.run_id
    assert registered.tags["eval_images"] == "12"
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(
        "models:/povid-tiny@champion", model_config={"allow_paths": True}
    )
    image = next((project / "data" / "01_raw" / "world" / "val2014").glob("*.png"))
    answers = served.predict(pd.DataFrame({"image": [str(image)]}), params={"max_new_tokens": 4})
    assert len(answers) == 1 and isinstance(answers[0], str)

    # Evaluating again: the candidate is already the champion, the alias stays.
    run_pipeline(project, "evaluate", TINY_MODEL)
    decision = json.loads((project / "data" / "08_reporting" / "gate_decision.json").read_text())
    assert decision == decision | {"promoted": False, "champion_version": 1}
    assert "already the champion" in decision["reason"]
