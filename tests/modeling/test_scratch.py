"""The base-model library: configuration errors are caught before any training."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from PIL import Image

from povid_kedro.modeling.scratch import _conversations, train_scratch_model
from tests.training.conftest import MODEL_CFG


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": ["a.png", "a.png"],
            "task_type": ["description", "vqa"],
            "prompt": ["<image>\nDescribe the image.", "<image>\nIs there a cup?"],
            "answer": ["A red cup.", "Yes"],
        }
    )


def _open(_: str) -> Image.Image:
    return Image.new("RGB", (32, 32))


def test_task_weights_must_name_trained_tasks():
    with pytest.raises(ValueError, match=r"task_weights names task types \['vqa'\]"):
        train_scratch_model(
            _table(),
            _open,
            tasks=["description"],
            text_warmup=False,
            tokenizer={},
            model={},
            train={},
            task_weights={"vqa": 10.0},
        )


def test_tasks_without_rows_are_an_error():
    with pytest.raises(ValueError, match="no ground-truth row of task type"):
        train_scratch_model(
            _table(),
            _open,
            tasks=["reasoning"],
            text_warmup=False,
            tokenizer={},
            model={},
            train={},
        )


def test_packing_groups_the_turns_of_each_ingested_record():
    table = pd.DataFrame(
        {
            "id": ["vqa_1_1", "vqa_1_0", "vqa_2_0", "detail_1", "vqa_3_0"],
            "image": ["a.png", "a.png", "b.png", "a.png", "a.png"],
            "task_type": ["vqa", "vqa", "vqa", "description", "vqa"],
            "source": ["vqa", "vqa", "vqa", "detail", "vqa"],
            "turn": [1, 0, 0, 0, 0],
            "prompt": ["<image>\nQ2", "<image>\nQ1", "<image>\nQ", "<image>\nD", "<image>\nQ3"],
            "answer": ["No", "Yes", "Yes", "A cup.", "No"],
        }
    )
    packed = [[t.id for t in turns] for turns in _conversations(table, pack=True)]
    assert packed == [["vqa_1_0", "vqa_1_1"], ["vqa_2_0"], ["detail_1"], ["vqa_3_0"]]
    assert [[t.id for t in turns] for turns in _conversations(table, pack=False)] == [
        [i] for i in table["id"]
    ]


def test_prepare_runs_on_the_built_model_before_training():
    # A hook that freezes the vision tower (as an experiment with a pretrained tower does).
    seen = {}

    def freeze(model):
        model.model.vision_tower.requires_grad_(False)
        seen["before"] = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
        seen["projector"] = model.model.multi_modal_projector.linear_1.weight.clone()

    model, _, _ = train_scratch_model(
        _table(),
        _open,
        tasks=["description", "vqa"],
        text_warmup=False,
        tokenizer={"vocab_size": 300, "min_frequency": 1},
        model={**dataclasses.asdict(MODEL_CFG), "image_size": 32},
        train={"steps": 3, "batch_size": 2, "lr": 1e-2, "num_threads": 1},
        prepare=freeze,
    )
    after = model.model.vision_tower.state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())
    # ...while the rest of the model did train.
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, seen["projector"])
