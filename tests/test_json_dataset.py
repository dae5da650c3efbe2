"""The project's JSON dataset writes what kedro-datasets' writes, from the same catalog keys."""

from __future__ import annotations

import pytest
from kedro_datasets.json import JSONDataset as KedroJSONDataset

from povid_kedro.datasets.json_dataset import JSONDataset

DOCUMENT = {"images": [{"id": 1, "file_name": "val_000001.png", "score": 0.1 + 0.2}], "é": None}


@pytest.mark.parametrize(
    "save_args", [None, {"indent": None}, {"indent": None, "ensure_ascii": False}]
)
def test_the_same_file_as_kedro_datasets_json(tmp_path, save_args):
    ours = JSONDataset(filepath=str(tmp_path / "ours.json"), save_args=save_args)
    theirs = KedroJSONDataset(filepath=str(tmp_path / "theirs.json"), save_args=save_args)
    ours.save(DOCUMENT)
    theirs.save(DOCUMENT)
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "theirs.json").read_bytes()
    assert ours.load() == DOCUMENT
