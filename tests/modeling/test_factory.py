"""Factory: the tiny LLaVA round-trips exactly through save_pretrained and the Auto classes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from povid_kedro.modeling import ModelConfig, build_model_and_processor, load_model_dir
from povid_kedro.modeling.generate import render_prompt
from povid_kedro.modeling.hf_dir import save_model_dir
from tests.support.tiny import TINY_MODEL

from .conftest import PROMPT


def test_image_tokens_match_patches(fresh, model_cfg, scenes):
    model, processor = fresh
    assert isinstance(model, LlavaForConditionalGeneration)
    batch = processor(
        text=[render_prompt(processor, PROMPT)], images=[scenes[0][0]], return_tensors="pt"
    )
    n_image = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_image == model_cfg.num_image_tokens == (32 // 8) ** 2
    assert tuple(batch["pixel_values"].shape) == (1, 3, 32, 32)
    # One BOS: the template writes it and the tokenizer adds none.
    assert int((batch["input_ids"] == processor.tokenizer.bos_token_id).sum()) == 1


def test_save_and_auto_load_round_trip(trained, scenes, tmp_path):
    model, processor = trained
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(model2) is type(model)
    text = [render_prompt(processor, PROMPT)] * 2
    images = [scenes[0][0], scenes[1][0]]
    batch = processor(text=text, images=images, return_tensors="pt")
    batch2 = processor2(text=text, images=images, return_tensors="pt")
    assert batch.keys() == batch2.keys()
    for key in batch:
        assert torch.equal(batch[key], batch2[key])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2.eval()(**batch2).logits)


# 64 px in 16 px stem patches is a 4x4 grid: 16 stem tokens (layer 0), or 2x2 after the
# attention stage's subsampling (layer -1).
@pytest.mark.parametrize(("layer", "tokens"), [(-1, 4), (0, 16)])
def test_levit_tower_fits_the_stock_llava_and_round_trips(
    tokenizer, scenes, tmp_path, layer, tokens
):
    cfg = dataclasses.replace(
        TINY_MODEL, vision_tower="levit", image_size=64, patch_size=16, vision_feature_layer=layer
    )
    model, processor = build_model_and_processor(cfg, tokenizer)
    assert type(model.model.vision_tower).__name__ == "LevitModel"
    images = [scenes[0][0], scenes[1][0]]
    batch = processor(
        text=[render_prompt(processor, PROMPT)] * 2, images=images, return_tensors="pt"
    )
    n_image = int((batch["input_ids"][0] == model.config.image_token_id).sum())
    assert n_image == cfg.num_image_tokens == tokens
    model.train()
    with torch.no_grad():
        model(**batch)  # a training-mode forward moves the BatchNorm running statistics
    model.eval()
    moved = model.model.vision_tower.patch_embeddings.embedding_layer_1.batch_norm.running_mean
    assert moved.abs().sum() > 0
    save_model_dir(model, processor, tmp_path)
    model2, processor2 = load_model_dir(tmp_path)  # validates image-token count against config
    batch2 = processor2(
        text=[render_prompt(processor2, PROMPT)] * 2, images=images, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch2).logits)


def test_unknown_vision_tower_and_bad_levit_patch_are_refused():
    with pytest.raises(ValueError, match="vision_tower must be 'clip' or 'levit'"):
        ModelConfig(vision_tower="swin")
    with pytest.raises(ValueError, match="levit: patch_size must be 16"):
        ModelConfig(vision_tower="levit", patch_size=8)
    with pytest.raises(ValueError, match="levit: vision_feature_layer must be 0"):
        ModelConfig(vision_tower="levit", vision_feature_layer=2)
