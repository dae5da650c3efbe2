"""hf_dir: a good directory loads; broken ones fail naming the directory and the fix."""

from __future__ import annotations

import json

import pytest
import torch

from povid_kedro.modeling import ModelDirError, load_model_dir, save_model_dir
from povid_kedro.modeling.generate import generate

from .conftest import PROMPT


@pytest.fixture()
def model_dir(trained, tmp_path):
    model, processor = trained
    return save_model_dir(model, processor, tmp_path / "model")


def test_loads_a_valid_directory(model_dir, trained, scenes):
    model, processor = load_model_dir(model_dir, dtype="float32")
    assert not model.training
    images = [scenes[0][0]]
    assert generate(model, processor, images, [PROMPT], max_new_tokens=8, progress=False) == (
        generate(*trained, images, [PROMPT], max_new_tokens=8, progress=False)
    )


def test_bfloat16(model_dir):
    model, _ = load_model_dir(model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match=r"nowhere.*does not exist"):
        load_model_dir(tmp_path / "nowhere")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model_dir(tmp_path)


def test_processor_without_image_token(model_dir):
    # A tokenizer that does not know "<image>" splits it into pieces.
    path = model_dir / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<image>"]
    del tok["model"]["vocab"]["<image>"]
    path.write_text(json.dumps(tok))
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("extra_special_tokens", None)
    config.get("added_tokens_decoder", {}).pop(str(4), None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"model/?'.*image token.*special token"):
        load_model_dir(model_dir)


def test_image_size_mismatch(model_dir):
    path = model_dir / "processor_config.json"
    config = json.loads(path.read_text())
    config["image_processor"]["size"] = {"shortest_edge": 24}
    config["image_processor"]["crop_size"] = {"height": 24, "width": 24}
    path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"makes 24x24 images.*built for 32x32.*crop_size"):
        load_model_dir(model_dir)


def test_image_token_count_mismatch(model_dir):
    path = model_dir / "processor_config.json"
    config = json.loads(path.read_text())
    config["num_additional_image_tokens"] = 0
    path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"into 15 image tokens.*yields 16"):
        load_model_dir(model_dir)


def test_missing_chat_template(model_dir):
    (model_dir / "chat_template.jinja").unlink()
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = model_dir / name
        config = json.loads(path.read_text())
        config.pop("chat_template", None)
        path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="chat template"):
        load_model_dir(model_dir)
