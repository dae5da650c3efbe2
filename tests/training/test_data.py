"""Pair checks (reported by id, never trained on) and the batch layout."""

from __future__ import annotations

import copy

import pytest
import torch

from povid_kedro.training.data import (
    ImageBank,
    PairCollator,
    count_image_tokens,
    encode_pairs,
    require_pairs,
)
from povid_kedro.training.noise import NoiseConfig
from tests.modeling.conftest import PROMPT
from tests.training.conftest import MODEL_CFG


def _reasons(encoded):
    return {pair.id: pair.message for pair in encoded.invalid}


def _codes(encoded):
    return {pair.id: pair.reason for pair in encoded.invalid}


def test_bad_pairs_are_reported_by_id_and_dropped(fresh, pairs):
    _, processor = fresh
    frame = pairs.copy()
    frame.loc[1, "rejected"] = frame.loc[1, "chosen"]
    frame.loc[2, "rejected"] = "   "
    frame.loc[3, "prompt"] = PROMPT + " please" * 200
    frame.loc[4, "id"] = frame.loc[0, "id"]
    frame.loc[5, "prompt"] = "<image> <image> Describe both."
    encoded = encode_pairs(processor, frame, max_length=96)
    reasons = _reasons(encoded)
    assert "identical" in reasons["s1"]
    assert "empty rejected" in reasons["s2"]
    assert "no room for the answer" in reasons["s3"]
    assert "duplicate id" in reasons["s0"]
    assert "<image>" in reasons["s5"]
    assert _codes(encoded) == {
        "s1": "identical_answers",
        "s2": "empty_answer",
        "s3": "prompt_too_long",
        "s0": "duplicate_id",
        "s5": "image_tokens",
    }
    assert set(encoded.ids) == {"s0", "s6", "s7", "s8", "s9"}  # row 4 became a second s0
    assert len(encoded.ids) == len(set(encoded.ids))


def test_image_tokens_survive_truncation(fresh, pairs):
    _, processor = fresh
    n_image = MODEL_CFG.num_image_tokens
    prompt_len = len(encode_pairs(processor, pairs.iloc[:1], 512).prompt_ids[0])
    # Room for exactly 2 answer tokens: answers are cut, the image tokens stay whole.
    frame = pairs.assign(rejected="Nothing is there, only a black background.")
    encoded = encode_pairs(processor, frame, max_length=prompt_len + 2)
    assert encoded.n_truncated == len(encoded) > 0
    for prompt, chosen in zip(encoded.prompt_ids, encoded.chosen_ids, strict=True):
        assert sum(t == processor.image_token_id for t in prompt) == n_image
        assert len(prompt) + len(chosen) <= prompt_len + 2
    # Room for no answer at all: every pair is reported, and training would refuse to start.
    none_left = encode_pairs(processor, frame, max_length=prompt_len)
    assert len(none_left) == 0 and len(none_left.invalid) == len(pairs)
    with pytest.raises(ValueError, match="all 10 training preference pairs are invalid"):
        require_pairs(none_left, len(pairs))
    with pytest.raises(ValueError, match="no training preference pairs"):
        require_pairs(none_left, 0)


def test_chosen_and_rejected_identical_after_truncation_are_reported(fresh, pairs):
    _, processor = fresh
    prompt_len = len(encode_pairs(processor, pairs.iloc[:1], 512).prompt_ids[0])
    # hallucinate() only changes the end of the caption: one answer token cannot tell them apart.
    encoded = encode_pairs(processor, pairs, max_length=prompt_len + 1)
    assert len(encoded) == 0
    assert all("after cutting" in pair.message for pair in encoded.invalid)
    assert {pair.reason for pair in encoded.invalid} == {"identical_after_cut"}


def test_prompt_must_be_a_prefix_of_the_conversation(fresh, pairs):
    _, processor = fresh
    broken = copy.deepcopy(processor)
    # A template that adds a header only when the conversation has an answer.
    broken.chat_template = (
        "{% if messages|length > 1 %}SYSTEM {% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
        "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    encoded = encode_pairs(broken, pairs, 96)
    assert len(encoded) == 0
    assert all("prefix" in pair.message for pair in encoded.invalid)


def test_missing_columns_and_broken_images(fresh, pairs, load_image):
    _, processor = fresh
    with pytest.raises(ValueError, match="noisy_rejected"):
        encode_pairs(processor, pairs.drop(columns="noisy_rejected"), 96, with_noisy_rejected=True)
    frame = pairs.copy()
    frame.loc[0, "image"] = "img/missing.png"
    encoded = encode_pairs(processor, frame, 96)
    broken = ImageBank(processor, load_image).check(encoded)
    assert broken and broken[0].id == "s0" and "cannot be loaded" in broken[0].message
    assert broken[0].reason == "image_unreadable"


def test_collator_lays_out_blocks_for_few_forwards(fresh, pairs, load_image):
    _, processor = fresh
    pad = processor.tokenizer.pad_token_id
    encoded = encode_pairs(processor, pairs, 96, with_noisy_rejected=True)
    bank = ImageBank(processor, load_image, noise=NoiseConfig(step=300, seed=1))
    batch = PairCollator(encoded, bank, pad, "teacher_forced")([{"pair": 0}, {"pair": 3}])
    assert batch["input_ids"].shape[0] == 4  # [chosen; rejected]
    assert batch["pixel_values"].shape[0] == 2  # one clean image per pair
    assert batch["noisy_pixel_values"].shape == batch["pixel_values"].shape
    assert not torch.equal(batch["noisy_pixel_values"], batch["pixel_values"])
    # Labels cover the answers only, and chosen rows match the encoded ids.
    n_prompt = len(encoded.prompt_ids[0])
    assert (batch["labels"][:, :n_prompt] == -100).all()
    answer = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert answer == encoded.chosen_ids[0]
    uncached = ImageBank(processor, load_image, noise=NoiseConfig(step=300, seed=1), cache=False)
    again = PairCollator(encoded, uncached, pad, "teacher_forced")([3])
    assert torch.equal(again["noisy_pixel_values"][0], batch["noisy_pixel_values"][1])
    assert torch.equal(again["pixel_values"][0], batch["pixel_values"][1])
    assert not uncached._clean and not uncached._noisy

    generated = PairCollator(encoded, bank, pad, "generated")([0, 1, 2])
    assert generated["input_ids"].shape[0] == 9  # [chosen; rejected; noisy_rejected]
    assert "noisy_pixel_values" not in generated
    assert count_image_tokens(processor) == MODEL_CFG.num_image_tokens
