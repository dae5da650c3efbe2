"""Tiny random models of the other image-text families, built from configs (offline) with the
tests' trained tokenizer: LLaVA-NeXT (``LlavaNextForConditionalGeneration``, whose processor
tiles an image into a size-dependent grid of crops, so the image-token count varies per image)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from povid_kedro.schema import IMAGE_TOKEN
from tests.support.tiny import TINY_MODEL

# LLaVA-NeXT's "anyres" at the tests' size: a 32 px base view plus 32 px crops on the grid that
# fits the image best (1x1, 1x2, 2x1 or 2x2 crops).
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def tiny_llava_next(tokenizer, seed: int = 0):
    """A freshly initialised tiny LLaVA-NeXT (CLIP tower, Llama LM) and its processor."""
    cfg = TINY_MODEL
    vision = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        intermediate_size=cfg.vision_intermediate_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
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
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by "default"
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )
    return model, processor
