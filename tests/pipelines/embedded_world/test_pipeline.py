"""The embedded_world pipeline run by a Kedro runner on the project's own catalog entries, rebased
into a temporary directory: the files it writes are the real formats the other pipelines read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from povid_kedro.experiments import PROJECT_ROOT, deep_merge, project_parameters
from povid_kedro.pipelines.embedded_world import create_pipeline
from povid_kedro.pipelines.embedded_world.pipeline import WORLD_OUTPUTS

SMALL = {"n_train_images": 12, "n_eval_images": 10}


def _rebased(entry: Any, root: Path) -> Any:
    """A catalog entry with every ``data/...`` path moved under ``root``."""
    if isinstance(entry, dict):
        if entry.get("type", "").endswith("MlflowArtifactDataset"):
            return _rebased(entry["dataset"], root)  # the file itself, with no MLflow run
        return {key: _rebased(value, root) for key, value in entry.items()}
    if isinstance(entry, str) and entry.startswith("data/"):
        return str(root / entry)
    return entry


def _run(root: Path, **overrides: Any) -> Path:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")
    config = {name: _rebased(entry, root) for name, entry in loader["catalog"].items()}
    catalog = DataCatalog.from_config(config)
    params = deep_merge(project_parameters()["embedded_world"], {**SMALL, **overrides})
    catalog["params:embedded_world"] = MemoryDataset(params)
    SequentialRunner().run(create_pipeline(), catalog)
    return root / "data"


def _digests(data: Path) -> dict[str, str]:
    return {
        str(path.relative_to(data)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("world"))


def test_every_output_is_a_file_of_the_catalog(world):
    raw = world / "01_raw/world"
    assert len(list((raw / "train2014").glob("*.png"))) == SMALL["n_train_images"]
    assert len(list((raw / "val2014").glob("*.png"))) == SMALL["n_eval_images"]
    size = project_parameters()["embedded_world"]["image_size"]
    assert Image.open(next((raw / "val2014").glob("*.png"))).size == (size, size)
    assert (world / "08_reporting/world_samples.png").stat().st_size > 0


def test_no_output_is_left_to_a_memory_dataset():
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(loader["catalog"])
    assert all(name in catalog for name in WORLD_OUTPUTS)


def test_coco_and_pope_files_refer_to_the_evaluation_images(world):
    raw = world / "01_raw/world"
    images = {p.name for p in (raw / "val2014").glob("*.png")}
    instances = json.loads((raw / "annotations/instances_val2014.json").read_text())
    ids = {image["id"]: image["file_name"] for image in instances["images"]}
    assert set(ids.values()) == images
    categories = {c["id"] for c in instances["categories"]}
    assert instances["annotations"]
    for annotation in instances["annotations"]:
        assert annotation["image_id"] in ids and annotation["category_id"] in categories
        assert len(annotation["bbox"]) == 4
    captions = json.loads((raw / "annotations/captions_val2014.json").read_text())
    assert {c["image_id"] for c in captions["annotations"]} == set(ids)
    for split in ("random", "popular", "adversarial"):
        lines = (raw / f"pope/coco_pope_{split}.json").read_text().splitlines()
        questions = [json.loads(line) for line in lines]
        assert questions
        assert all(q.keys() == {"question_id", "image", "text", "label"} for q in questions)
        assert {q["image"] for q in questions} <= images
        labels = [q["label"] for q in questions]
        assert labels.count("yes") == labels.count("no")  # POPE's balanced protocol


def test_instruction_files_are_llava_instruct_records_on_training_images(world):
    raw = world / "01_raw/world"
    images = {p.name for p in (raw / "train2014").glob("*.png")}
    files = sorted(p.stem for p in (raw / "llava_instruct").glob("*.json"))
    assert files == sorted(project_parameters()["ingest_ground_truth"]["task_types"])
    for name in files:
        records = json.loads((raw / "llava_instruct" / f"{name}.json").read_text())
        assert records, name
        for record in records:
            assert record["image"] in images
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<image>\n")


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not(world, tmp_path):
    again = _run(tmp_path / "again")
    assert _digests(again) == _digests(world)
    other = _run(tmp_path / "other", seed=project_parameters()["embedded_world"]["seed"] + 1)
    changed = {k for k, v in _digests(other).items() if _digests(world).get(k) != v}
    assert "01_raw/world/scenes.json" in changed
    assert "01_raw/world/annotations/instances_val2014.json" in changed
