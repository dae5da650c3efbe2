"""Tiny fixtures for the model library: fake shape images, a tokenizer, a briefly trained model."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from povid_kedro.modeling import (
    ModelConfig,
    SFTRow,
    TokenizerConfig,
    TrainConfig,
    build_model_and_processor,
    train_sft,
    train_tokenizer,
)
from tests.support.tiny import TINY_MODEL

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
SHAPES = ("circle", "square")
PROMPT = "<image>\nDescribe the image."
IMAGE_SIZE = TINY_MODEL.image_size  # the scenes are drawn at the tiny model's input size


def make_scene(rng: random.Random) -> tuple[Image.Image, str]:
    """A 32×32 image with one or two coloured shapes and its exhaustive caption."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(image)
    parts = []
    for column in range(rng.randint(1, 2)):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        box = [2 + 16 * column, 8, 14 + 16 * column, 20]
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        parts.append(f"a {colour} {shape}")
    return image, "There is " + " and ".join(parts) + "."


@pytest.fixture(scope="session")
def scenes() -> list[tuple[Image.Image, str]]:
    rng = random.Random(0)
    return [make_scene(rng) for _ in range(64)]


@pytest.fixture(scope="session")
def tokenizer(scenes):
    texts = [caption for _, caption in scenes] + [PROMPT, "What colour is it? Any shape."]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1))


@pytest.fixture(scope="session")
def model_cfg() -> ModelConfig:
    return TINY_MODEL


@pytest.fixture()
def fresh(model_cfg, tokenizer):
    """A newly initialised (model, processor)."""
    return build_model_and_processor(model_cfg, tokenizer)


@pytest.fixture(scope="session")
def trained(model_cfg, tokenizer, scenes):
    """A (model, processor) trained for a few seconds, so that its answers vary with the image."""
    model, processor = build_model_and_processor(model_cfg, tokenizer)
    rows = [SFTRow(image, PROMPT, caption) for image, caption in scenes]
    train_sft(
        model,
        processor,
        rows,
        TrainConfig(steps=60, batch_size=16, lr=1e-2, max_length=96, log_every=0),
        progress=False,
    )
    return model, processor
