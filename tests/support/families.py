"""Tiny random models of the other image-text families, built from configs (offline) with the
tests' trained tokenizer: LLaVA-NeXT (``LlavaNextForConditionalGeneration``, whose processor
tiles an image into a size-dependent grid of crops, so the image-token count varies per image)."""

from __future__ import annotations

import dataclasses

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from povid_kedro.modeling.factory import build_llava_config
from povid_kedro.schema import IMAGE_TOKEN
from tests.support.tiny import TINY_MODEL

# LLaVA-NeXT's "anyres" at the tests' size: a 32 px base view plus 32 px crops on the grid that
# fits the image best (1x1, 1x2, 2x1 or 2x2 crops).
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def tiny_llava_next(tokenizer, seed: int = 0):
    """A freshly initialised tiny LLaVA-NeXT (CLIP tower, Llama LM) and its processor."""
    cfg = dataclasses.replace(TINY_MODEL, max_position_embeddings=512)
    llava = build_llava_config(cfg, tokenizer)  # the tiny LLaVA's tower and language model
    config = LlavaNextConfig(
        vision_config=llava.vision_config,
        text_config=llava.text_config,
        image_token_index=llava.image_token_id,
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_layer=llava.vision_feature_layer,
        vision_feature_select_strategy=llava.vision_feature_select_strategy,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_grid_pinpoints=NEXT_PINPOINTS,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by "default"
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )
    return model, processor
