"""The base-model library: configuration errors are caught before any training."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from povid_kedro.base_model import _conversations, train_scratch_model


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
