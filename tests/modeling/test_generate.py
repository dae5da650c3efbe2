"""Generation: batched equals one at a time, sampling is seeded, stop strings cut, a repeated
image is encoded once without changing an answer."""

from __future__ import annotations

import importlib

import pytest
import torch

from povid_kedro.modeling import build_model_and_processor
from povid_kedro.modeling.generate import cut_at_stop, generate, to_messages

from .conftest import PROMPT

# The module, not the function the package exports under the same name.
generate_module = importlib.import_module("povid_kedro.modeling.generate")

# Prompts of different lengths, so the batch really is left padded.
PROMPTS = [
    PROMPT,
    "<image>\nWhat colour is it?",
    "Describe the image.",
    "<image>\nAny shape? Describe the image. What colour is it?",
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Any shape?"}]}],
]


@pytest.fixture(scope="module")
def scrambled(model_cfg, tokenizer):
    """A model with large random weights: its answers depend on every position and pixel, so a
    wrong attention mask or position id under left padding changes them."""
    model, processor = build_model_and_processor(model_cfg, tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3, generator=generator)
    return model, processor


def test_batched_equals_one_at_a_time(scrambled, scenes):
    model, processor = scrambled
    images = [image for image, _ in scenes[: len(PROMPTS)]]
    batched = generate(
        model, processor, images, PROMPTS, max_new_tokens=16, batch_size=8, progress=False
    )
    single = [
        generate(model, processor, [im], [p], max_new_tokens=16, batch_size=1, progress=False)[0]
        for im, p in zip(images, PROMPTS, strict=True)
    ]
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)


def test_answers_are_new_text_only(trained, scenes):
    model, processor = trained
    (answer,) = generate(
        model, processor, [scenes[0][0]], [PROMPT], max_new_tokens=16, progress=False
    )
    # The trained model answers in the captions' form; no prompt or special tokens come back.
    assert answer.startswith("There is a ") and answer.endswith(".")


def test_batch_size_does_not_change_greedy_answers(scrambled, scenes):
    model, processor = scrambled
    images = [image for image, _ in scenes[:7]]
    prompts = [PROMPT] * 7
    kwargs = {"max_new_tokens": 12, "progress": False}
    assert generate(model, processor, images, prompts, batch_size=3, **kwargs) == generate(
        model, processor, images, prompts, batch_size=7, **kwargs
    )


def test_sampling_is_seeded(trained, scenes):
    model, processor = trained
    images = [image for image, _ in scenes[:6]]
    kwargs = {"max_new_tokens": 12, "do_sample": True, "temperature": 2.0, "progress": False}
    state = torch.random.get_rng_state()
    first = generate(model, processor, images, [PROMPT] * 6, seed=1, **kwargs)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert first == generate(model, processor, images, [PROMPT] * 6, seed=1, **kwargs)
    assert first != generate(model, processor, images, [PROMPT] * 6, seed=2, **kwargs)


def test_stop_strings(trained, scenes):
    model, processor = trained
    images = [image for image, _ in scenes[:3]]
    kwargs = {"max_new_tokens": 16, "progress": False}
    full = generate(model, processor, images, [PROMPT] * 3, **kwargs)
    cut = generate(model, processor, images, [PROMPT] * 3, stop_strings=[" a "], **kwargs)
    assert cut == [answer.split(" a ")[0] for answer in full] == ["There is"] * 3
    assert cut_at_stop("one. two. three", [". t", "wo"]) == "one"


def test_string_prompt_becomes_an_image_message():
    assert to_messages("<image>\nDescribe.") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}
    ]


def test_repeated_image_is_encoded_once_with_the_same_answers(scrambled, scenes, monkeypatch):
    model, processor = scrambled
    assert generate_module._can_share_images(model, processor)
    # Three images, asked about 2, 3 and 1 times, rows interleaved, prompts of different lengths.
    a, b, c = (image for image, _ in scenes[:3])
    images = [a, b, a, b, c, b]
    prompts = [PROMPTS[i] for i in (0, 0, 1, 3, 0, 1)]
    encoded: list[int] = []
    hook = model.model.vision_tower.register_forward_hook(
        lambda _m, args, _out: encoded.append(args[0].shape[0])
    )
    try:
        kwargs = {"max_new_tokens": 12, "batch_size": 8, "progress": False}
        shared = generate(model, processor, images, prompts, **kwargs)
        assert encoded == [3]  # one vision-tower pass over the three distinct images
        monkeypatch.setattr(generate_module, "_can_share_images", lambda _m, _p: False)
        per_row = generate(model, processor, [im.copy() for im in images], prompts, **kwargs)
        assert encoded == [3, 6]
    finally:
        hook.remove()
    assert shared == per_row
    assert shared[0] != shared[2]  # same image, other prompt: the answers really differ
