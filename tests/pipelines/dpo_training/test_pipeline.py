"""The dpo_training pipeline run by a Kedro runner on a catalog filled here: both POVID stages on
a tiny LLaVA, saved into and read back from the project's model dataset."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from povid_kedro.datasets.hf_model import HFModelDataset
from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import TokenizerConfig, build_model_and_processor, train_tokenizer
from povid_kedro.pipelines.dpo_training import create_pipeline
from povid_kedro.schema import DESCRIPTION
from tests.modeling.conftest import PROMPT, make_scene
from tests.support.kedro_project import free_port
from tests.training.conftest import FAST, MODEL_CFG, hallucinate

N_PAIRS = 8
STEPS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = random.Random(11)
    scenes = [make_scene(rng) for _ in range(N_PAIRS)]
    texts = [c for _, c in scenes] + [hallucinate(c) for _, c in scenes] + [PROMPT]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1))
    root = tmp_path_factory.mktemp("dpo")
    HFModelDataset(str(root / "base_model")).save(build_model_and_processor(MODEL_CFG, tokenizer))
    images = ImageFolderDataset(str(root / "train"))
    images.save({f"img{i}.png": image for i, (image, _) in enumerate(scenes)})
    pairs = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(N_PAIRS)],
            "image": [f"img{i}.png" for i in range(N_PAIRS)],
            "task_type": DESCRIPTION,
            "prompt": PROMPT,
            "chosen": [c for _, c in scenes],
            "rejected": [hallucinate(c) for _, c in scenes],
            "split": "train",
        }
    )
    return root, images.load(), pairs


def _params(**overrides) -> dict:
    params = project_parameters()["dpo_training"]
    fast = {**FAST, "max_steps": STEPS, "logging_steps": 1, **overrides.pop("stages", {})}
    return {
        **params,
        **overrides,
        "stage1": {
            **params["stage1"],
            **fast,
            "lora": {**params["stage1"]["lora"], **FAST["lora"]},
        },
        "stage2": {
            **params["stage2"],
            **fast,
            "lora": {**params["stage2"]["lora"], **FAST["lora"]},
        },
    }


def _run(tmp_path, world, noise=None, noisy_responses=None, params=None):
    root, images, pairs = world
    catalog = DataCatalog()
    catalog["base_model"] = HFModelDataset(str(root / "base_model"))
    catalog["trl_preferences"] = MemoryDataset(pairs, copy_mode="assign")
    catalog["train_images"] = MemoryDataset(images, copy_mode="assign")
    # What noise_trigger writes in teacher_forced mode: no free answers.
    empty = pd.DataFrame({"id": pd.Series(dtype="string"), "noisy_rejected": []})
    catalog["noisy_responses"] = MemoryDataset(
        noisy_responses if noisy_responses is not None else empty
    )
    catalog["params:dpo_training"] = MemoryDataset(params or _params())
    catalog["params:noise_trigger"] = MemoryDataset(
        {**project_parameters()["noise_trigger"], **(noise or {})}
    )
    for name in ("stage1_model", "stage2_model"):
        catalog[name] = HFModelDataset(str(tmp_path / name))
    for name in ("stage1_metrics", "stage1_curves", "stage2_candidate", "stage2_metrics"):
        catalog[name] = MemoryDataset(copy_mode="assign")
    catalog["stage2_curves"] = MemoryDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_both_stages_write_merged_models_that_moved_from_the_base(tmp_path, world):
    catalog = _run(tmp_path, world)
    base = _weights(catalog.load("base_model")[0])
    stage1, stage2 = catalog.load("stage1_model")[0], catalog.load("stage2_model")[0]
    for model in (stage1, stage2):
        weights = _weights(model)
        assert weights.keys() == base.keys()  # merged: no LoRA modules left, the stock layout
        assert type(model).__name__ == "LlavaForConditionalGeneration"
        assert any(not torch.equal(weights[k], base[k]) for k in base)
    # Stage 2 starts from stage 1, and the registry candidate is the model written to disk.
    s1, s2 = _weights(stage1), _weights(stage2)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)
    candidate = _weights(catalog.load("stage2_candidate")[0])
    assert all(torch.allclose(candidate[k], s2[k]) for k in s2)


def test_metrics_are_mlflow_histories_with_each_stage2_branch(tmp_path, world):
    catalog = _run(tmp_path, world)
    stage1, stage2 = catalog.load("stage1_metrics"), catalog.load("stage2_metrics")
    assert len(stage1["loss"]) == STEPS
    assert [p["step"] for p in stage1["loss"]] == list(range(1, STEPS + 1))
    branches = {name.split("/")[0] for name in stage2 if "/" in name}
    assert {"hallucination", "noise"} <= branches, sorted(stage2)
    assert isinstance(catalog.load("stage2_curves"), Figure)


def test_generated_mode_without_noisy_answers_names_the_pipeline_to_run(tmp_path, world):
    with pytest.raises(Exception, match="kedro run --pipeline noise_trigger"):
        _run(tmp_path, world, noise={"mode": "generated"})


def test_generated_mode_trains_on_the_free_answers_under_noise(tmp_path, world):
    pairs = world[2]
    free = pd.DataFrame({"id": pairs["id"], "noisy_rejected": "There is a red circle."})
    catalog = _run(tmp_path, world, noise={"mode": "generated"}, noisy_responses=free)
    assert {name.split("/")[0] for name in catalog.load("stage2_metrics") if "/" in name} >= {
        "noise"
    }


def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(tmp_path, world):
    # 2 processes x 4 pairs (DDP over gloo, launched by the node through accelerate) against
    # 1 process x 8 pairs: the same optimiser steps up to the order of float sums. The SFT term
    # is off: it is a token mean per process, so with shards of unequal token counts it is not
    # the whole batch's token mean (the README gives the difference). At the fast tests' lr
    # 2e-2 stage 2 is unstable enough to amplify float-order differences (weights 0.05 apart
    # after 3 steps); at 2e-3 they stay 2e-6 apart.
    same = {"sft_weight": 0.0, "learning_rate": 2e-3}
    one = _run(tmp_path / "one", world, params=_params(stages=same))
    two = _run(
        tmp_path / "two",
        world,
        params=_params(
            stages={**same, "batch_size": N_PAIRS // 2},
            processes={"num_processes": 2, "main_process_port": free_port()},
        ),
    )
    for name in ("stage1_metrics", "stage2_metrics"):
        a, b = one.load(name), two.load(name)
        for key in ("loss", "hallucination/margins", "noise/margins"):
            if key in a:
                assert [p["value"] for p in b[key]] == pytest.approx(
                    [p["value"] for p in a[key]], rel=1e-4, abs=1e-6
                ), (name, key)
    for name in ("stage1_model", "stage2_model"):
        a, b = _weights(one.load(name)[0]), _weights(two.load(name)[0])
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), (name, key)
