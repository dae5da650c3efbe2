"""The base_model pipeline run by a Kedro runner on a catalog filled here: a tiny LLaVA trained
from scratch into the project's model dataset, and the pretrained branch that only points."""

from __future__ import annotations

import dataclasses
import random

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from povid_kedro.datasets.hf_model import HFModelDataset
from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import generate
from povid_kedro.pipelines.base_model import create_pipeline
from povid_kedro.schema import DESCRIPTION, GROUND_TRUTH_COLUMNS
from tests.modeling.conftest import PROMPT, make_scene
from tests.training.conftest import MODEL_CFG

N_IMAGES = 6
STEPS = 8


@pytest.fixture(scope="module")
def scenes():
    rng = random.Random(5)
    return [make_scene(rng) for _ in range(N_IMAGES)]


def _catalog(tmp_path, scenes, **overrides):
    images = ImageFolderDataset(str(tmp_path / "train"))
    images.save({f"img{i}.png": image for i, (image, _) in enumerate(scenes)})
    ground_truth = pd.DataFrame(
        {
            "id": [f"d{i}" for i in range(N_IMAGES)],
            "image": [f"img{i}.png" for i in range(N_IMAGES)],
            "task_type": DESCRIPTION,
            "prompt": PROMPT,
            "answer": [caption for _, caption in scenes],
            "rejected": None,
            "source": "detail",
            "turn": 0,
        }
    )[GROUND_TRUTH_COLUMNS]  # the canonical table ingest writes
    defaults = project_parameters()["base_model"]
    params = {
        **defaults,
        "tasks": [DESCRIPTION],
        "task_weights": None,
        "tokenizer": {**defaults["tokenizer"], "vocab_size": 300, "min_frequency": 1},
        "model": {**dataclasses.asdict(MODEL_CFG), "image_size": 32},
        "train": {
            **defaults["train"],
            "steps": STEPS,
            "text_warmup_steps": 2,
            "task_batch": None,
            "batch_size": 3,
            "lr": 3e-3,
            "log_every": 2,
        },
        **overrides,
    }
    catalog = DataCatalog()
    catalog["ground_truth_train"] = MemoryDataset(ground_truth, copy_mode="assign")
    catalog["train_images"] = MemoryDataset(images.load(), copy_mode="assign")
    catalog["object_synonyms"] = MemoryDataset("circle\nsquare\n")
    catalog["params:base_model"] = MemoryDataset(params)
    catalog["params:evaluate"] = MemoryDataset(project_parameters()["evaluate"])
    catalog["base_model"] = HFModelDataset(str(tmp_path / "base_model"))
    for name in ("base_model_training_metrics", "base_model_loss_figure"):
        catalog[name] = MemoryDataset(copy_mode="assign")
    return catalog


def test_a_scratch_model_is_saved_as_a_directory_that_describes_images(tmp_path, scenes):
    catalog = _catalog(tmp_path, scenes)
    SequentialRunner().run(create_pipeline(), catalog)

    model, processor = catalog.load("base_model")  # the stock classes, as users load it
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    answers = generate(model, processor, [scenes[0][0]], [PROMPT], max_new_tokens=5)
    assert len(answers) == 1 and isinstance(answers[0], str)
    # The processor expands <image> into as many tokens as the vision tower yields patches.
    batch = processor(images=[scenes[0][0]], text=[PROMPT], return_tensors="pt")
    n_image = (batch["input_ids"] == model.config.image_token_id).sum().item()
    assert n_image == (32 // MODEL_CFG.patch_size) ** 2

    history = catalog.load("base_model_training_metrics")  # MLflow metric histories
    curve = history["sft_loss"]
    assert [point["step"] for point in curve] == list(range(2, STEPS + 1, 2))
    assert curve[-1]["value"] < curve[0]["value"]  # it learnt
    assert "text_warmup_loss" in history and history["train_seconds"][0]["value"] > 0
    assert isinstance(catalog.load("base_model_loss_figure"), Figure)


def test_the_pretrained_branch_points_at_the_directory_without_copying(tmp_path, scenes):
    trained = _catalog(tmp_path / "first", scenes)
    SequentialRunner().run(create_pipeline(), trained)
    source = tmp_path / "first" / "base_model"

    catalog = _catalog(
        tmp_path / "second", scenes, source="pretrained", pretrained_path=str(source)
    )
    SequentialRunner().run(create_pipeline(), catalog)
    saved = tmp_path / "second" / "base_model"
    assert not list(saved.glob("*.safetensors"))  # a pointer, not gigabytes of weights
    model, _ = catalog.load("base_model")
    original, _ = trained.load("base_model")
    assert all(
        (a == b).all()
        for a, b in zip(model.state_dict().values(), original.state_dict().values(), strict=True)
    )


def test_pretrained_without_a_path_fails_naming_the_key(tmp_path, scenes):
    catalog = _catalog(tmp_path, scenes, source="pretrained", pretrained_path=None)
    with pytest.raises(ValueError, match="base_model.pretrained_path is empty"):
        SequentialRunner().run(create_pipeline(), catalog)


def test_vision_pretraining_reaches_the_tower_and_leaves_it_frozen(tmp_path, scenes):
    plain = _catalog(tmp_path / "plain", scenes)
    SequentialRunner().run(create_pipeline(), plain)
    defaults = project_parameters()["base_model"]["vision_pretraining"]
    pretrained = _catalog(
        tmp_path / "pretrained",
        scenes,
        vision_pretraining={**defaults, "epochs": 3, "batch_size": 3},
    )
    SequentialRunner().run(create_pipeline(), pretrained)
    assert "vision_pretraining_loss" not in plain.load("base_model_training_metrics")
    curve = pretrained.load("base_model_training_metrics")["vision_pretraining_loss"]
    # 3 epochs of 2 steps, averaged over log_every (2) steps
    assert [p["step"] for p in curve] == [2, 4, 6] and curve[-1]["value"] < curve[0]["value"]
    (a, _), (b, _) = plain.load("base_model"), pretrained.load("base_model")
    tower_a, tower_b = a.model.vision_tower.state_dict(), b.model.vision_tower.state_dict()
    assert any(not (tower_a[k] == tower_b[k]).all() for k in tower_a)
