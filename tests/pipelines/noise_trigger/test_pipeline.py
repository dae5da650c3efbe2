"""The noise_trigger pipeline run by a Kedro runner on a catalog filled here, with a tiny LLaVA."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import TokenizerConfig, build_model_and_processor, train_tokenizer
from povid_kedro.pipelines.noise_trigger import create_pipeline
from povid_kedro.schema import DESCRIPTION
from tests.modeling.conftest import PROMPT, make_scene
from tests.training.conftest import MODEL_CFG

N_PAIRS = 4


@pytest.fixture(scope="module")
def world():
    rng = random.Random(3)
    scenes = [make_scene(rng) for _ in range(N_PAIRS)]
    tokenizer = train_tokenizer(
        [caption for _, caption in scenes] + [PROMPT],
        TokenizerConfig(vocab_size=300, min_frequency=1),
    )
    pairs = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(N_PAIRS)],
            "image": [f"img{i}.png" for i in range(N_PAIRS)],
            "task_type": DESCRIPTION,
            "prompt": PROMPT,
            "answer": [caption for _, caption in scenes],
        }
    )
    return scenes, pairs, build_model_and_processor(MODEL_CFG, tokenizer)


def _run(tmp_path, world, **overrides):
    scenes, pairs, model = world
    params = project_parameters()["noise_trigger"]
    params = {
        **params,
        **overrides,
        "generate": {**params["generate"], "max_new_tokens": 6},
        "figure": {"sample": 0, "steps": [0, 350]},
    }
    train = ImageFolderDataset(str(tmp_path / "train"))
    train.save({f"img{i}.png": image for i, (image, _) in enumerate(scenes)})
    catalog = DataCatalog()
    catalog["preference_pairs"] = MemoryDataset(pairs, copy_mode="assign")
    catalog["train_images"] = MemoryDataset(train.load(), copy_mode="assign")
    catalog["base_model"] = MemoryDataset(model, copy_mode="assign")
    catalog["params:noise_trigger"] = MemoryDataset(params)
    # Saved as files and read back as a folder, as the project's catalog does.
    catalog["noisy_images"] = ImageFolderDataset(str(tmp_path / "noisy"))
    for name in ("noisy_responses", "noise_figure"):
        catalog[name] = MemoryDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_each_pair_gets_its_own_reproducible_noisy_image(tmp_path, world):
    first = _run(tmp_path / "a", world).load("noisy_images")
    second = _run(tmp_path / "b", world).load("noisy_images")
    names = [f"p{i}.png" for i in range(N_PAIRS)]
    assert sorted(first) == names
    scenes = world[0]
    for i, name in enumerate(names):
        noisy = np.asarray(first.open(name).convert("RGB"), dtype=float)
        clean = np.asarray(scenes[i][0], dtype=float)
        assert noisy.shape == clean.shape
        assert np.abs(noisy - clean).mean() > 5  # visibly noised at the configured step
        assert np.array_equal(noisy, np.asarray(second.open(name).convert("RGB"), dtype=float))


def test_teacher_forced_mode_decodes_nothing_and_generated_mode_one_answer_per_pair(
    tmp_path, world
):
    forced = _run(tmp_path / "tf", world, mode="teacher_forced").load("noisy_responses")
    assert list(forced.columns) == ["id", "noisy_rejected"] and forced.empty
    generated = _run(tmp_path / "gen", world, mode="generated").load("noisy_responses")
    assert generated["id"].tolist() == [f"p{i}" for i in range(N_PAIRS)]
    assert all(isinstance(text, str) for text in generated["noisy_rejected"])


def test_the_figure_shows_one_panel_per_step(tmp_path, world):
    figure = _run(tmp_path, world).load("noise_figure")
    assert isinstance(figure, Figure)
    assert [ax.get_title() for ax in figure.axes] == ["k = 0 (noise 0.00)", "k = 350 (noise 0.25)"]
