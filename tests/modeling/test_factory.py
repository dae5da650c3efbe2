"""Factory: the tiny LLaVA round-trips exactly through save_pretrained and the Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from povid_kedro.modeling.generate import render_prompt

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
