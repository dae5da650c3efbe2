"""Tiny fixtures for the training library: shape scenes, preference pairs, a tiny LLaVA."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from PIL import Image

from povid_kedro.modeling import (
    TokenizerConfig,
    build_model_and_processor,
    train_tokenizer,
)
from povid_kedro.training.data import PairCollator, encode_pairs
from povid_kedro.training.losses import sequence_logps, teacher_forced_noisy_logps
from povid_kedro.training.noise import NoiseConfig
from tests.modeling.conftest import PROMPT, make_scene
from tests.support.tiny import TINY_MODEL

MODEL_CFG = TINY_MODEL

# Few, fast steps: a high learning rate and a full-batch step on the 8 training pairs.
FAST = {
    "max_steps": 6,
    "batch_size": 8,
    "learning_rate": 2e-2,
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "constant",
    "logging_steps": 100,
    "lora": {"r": 8, "alpha": 16},
    # One thread: on a machine shared with other jobs, two-thread kernels on tiny tensors stall.
    "num_threads": 1,
}


# Stage 2's noise in the engine tests: a mid-schedule step, seeded.
NOISE = NoiseConfig(step=300, seed=3)


def hallucinate(caption: str) -> str:
    """A rule-made rejection: add a co-occurring object."""
    return caption[:-1] + " and a green square."


@pytest.fixture(scope="session")
def scenes() -> list[tuple[Image.Image, str]]:
    rng = random.Random(7)
    return [make_scene(rng) for _ in range(10)]


@pytest.fixture(scope="session")
def tokenizer(scenes):
    texts = [caption for _, caption in scenes] + [hallucinate(c) for _, c in scenes] + [PROMPT]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1))


@pytest.fixture()
def fresh(tokenizer):
    """A newly initialised (model, processor)."""
    return build_model_and_processor(MODEL_CFG, tokenizer)


@pytest.fixture(scope="session")
def images(scenes) -> dict[str, Image.Image]:
    return {f"img/{i}.png": image for i, (image, _) in enumerate(scenes)}


@pytest.fixture(scope="session")
def load_image(images):
    return images.__getitem__


@pytest.fixture(scope="session")
def pairs(scenes) -> pd.DataFrame:
    """8 train + 2 eval pairs, with a generated-style noisy rejection too."""
    rows = []
    for i, (_, caption) in enumerate(scenes):
        rows.append(
            {
                "id": f"s{i}",
                "image": f"img/{i}.png",
                "prompt": PROMPT,
                "chosen": caption,
                "rejected": hallucinate(caption),
                "noisy_rejected": "There is a red circle and a blue square.",
                "split": "train" if i < 8 else "eval",
            }
        )
    frame = pd.DataFrame(rows)
    # A noisy rejection equal to the chosen answer would be dropped; keep every pair valid.
    same = frame["noisy_rejected"] == frame["chosen"]
    frame.loc[same, "noisy_rejected"] = "There is a blue circle."
    return frame


def margins(policy, reference, processor, frame, load_image, *, noise=None, beta=0.1):
    """Mean DPO reward margin of ``policy`` vs ``reference`` on ``frame``, computed independently.

    Returns ``{"hallucination": m_h}`` and, with a noise config, ``"noise"`` (teacher-forced y_n-,
    each model with its own noisy argmax).
    """
    from povid_kedro.training.data import ImageBank

    encoded = encode_pairs(processor, frame, 128)
    bank = ImageBank(processor, load_image, noise=noise)
    branches = "teacher_forced" if noise is not None else "stage1"
    batch = PairCollator(encoded, bank, processor.tokenizer.pad_token_id, branches)(
        list(range(len(encoded)))
    )
    b = len(encoded)

    @torch.no_grad()
    def logps(model):
        model.eval()
        pixels = batch["pixel_values"].repeat(2, 1, 1, 1)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=pixels,
        ).logits
        seq = sequence_logps(logits, batch["labels"])
        out = {"chosen": seq[:b], "rejected": seq[b:]}
        if noise is not None:
            noisy = model(
                input_ids=batch["input_ids"][:b],
                attention_mask=batch["attention_mask"][:b],
                pixel_values=batch["noisy_pixel_values"],
            ).logits
            out["noisy"] = teacher_forced_noisy_logps(logits[:b], noisy, batch["labels"][:b])
        return out

    pol, ref = logps(policy), logps(reference)
    result = {}
    for name, rejected in (("hallucination", "rejected"), ("noise", "noisy")):
        if rejected in pol:
            chosen_ratio = pol["chosen"] - ref["chosen"]
            rejected_ratio = pol[rejected] - ref[rejected]
            result[name] = float((beta * (chosen_ratio - rejected_ratio)).mean())
    return result
