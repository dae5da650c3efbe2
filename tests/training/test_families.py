"""Other model families through the same engine: a tiny random LLaVA-NeXT, whose image-token
count follows each image's size, is encoded, batched, noised and trained by POVID's stage 2."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from povid_kedro.modeling import load_model_dir
from povid_kedro.modeling.generate import generate
from povid_kedro.modeling.hf_dir import save_model_dir
from povid_kedro.schema import IMAGE_TOKEN
from povid_kedro.training import train_stage2
from povid_kedro.training.data import (
    NOISY_PREFIX,
    PAIR_IDENTICAL_AFTER_CUT,
    PAIR_PROMPT_TOO_LONG,
    ImageBank,
    PairCollator,
    encode_pairs,
    image_inputs,
)
from povid_kedro.training.noise import NoiseConfig, noisy_image
from povid_kedro.training.trainer import POVIDTrainer
from tests.support.families import tiny_llava_next
from tests.training.conftest import FAST, NOISE


@pytest.fixture(scope="module")
def next_images(images) -> dict[str, Image.Image]:
    """The test scenes at three shapes (square, wide, tall): three crop grids, three counts."""
    shapes = [(32, 32), (64, 32), (32, 64)]
    return {
        path: image.resize(shapes[i % 3]) for i, (path, image) in enumerate(sorted(images.items()))
    }


@pytest.fixture()
def llava_next(tokenizer):
    return tiny_llava_next(tokenizer)


def _own_count(processor, image: Image.Image) -> int:
    """Image tokens the processor itself gives this image."""
    ids = processor(text=[IMAGE_TOKEN], images=[image], add_special_tokens=False)["input_ids"][0]
    return sum(1 for t in ids if t == processor.image_token_id)


def test_each_prompt_holds_its_images_own_token_count_and_survives_truncation(
    llava_next, pairs, next_images
):
    _, processor = llava_next
    bank = ImageBank(processor, next_images.__getitem__)
    with pytest.raises(ValueError, match="image_size"):
        encode_pairs(processor, pairs, 512)

    encoded = encode_pairs(processor, pairs, 512, image_size=bank.size)
    assert len(encoded) == len(pairs) and not encoded.invalid
    counts = [sum(1 for t in ids if t == processor.image_token_id) for ids in encoded.prompt_ids]
    assert counts == [_own_count(processor, next_images[p]) for p in encoded.images]
    assert len(set(counts)) == 3  # the three shapes tile differently

    # 3 answer tokens fit after the longest prompt: answers are cut, image tokens never (pairs
    # whose answers become equal once cut are refused as such).
    longest = max(len(ids) for ids in encoded.prompt_ids)
    short = encode_pairs(processor, pairs, longest + 3, image_size=bank.size)
    full = dict(zip(encoded.ids, encoded.prompt_ids, strict=True))
    assert short.n_truncated >= 1
    assert [full[i] for i in short.ids] == short.prompt_ids
    assert {p.reason for p in short.invalid} <= {PAIR_IDENTICAL_AFTER_CUT}
    assert all(
        len(prompt) + len(answer) <= longest + 3
        for prompt, answer in zip(short.prompt_ids, short.chosen_ids, strict=True)
    )
    # A limit below an image's tokens refuses that pair instead of cutting into the image.
    tight = encode_pairs(processor, pairs, min(counts) + 12, image_size=bank.size)
    assert tight.invalid and {p.reason for p in tight.invalid} == {PAIR_PROMPT_TOO_LONG}
    assert all(
        sum(1 for t in ids if t == processor.image_token_id)
        == _own_count(processor, next_images[p])
        for ids, p in zip(tight.prompt_ids, tight.images, strict=True)
    )


def test_mixed_crop_counts_batch_like_single_images(llava_next, pairs, next_images):
    model, processor = llava_next
    bank = ImageBank(processor, next_images.__getitem__)
    encoded = encode_pairs(processor, pairs, 512, image_size=bank.size)
    collator = PairCollator(encoded, bank, processor.tokenizer.pad_token_id, "stage1")
    batch = collator([0, 1, 2])
    images = image_inputs(batch)
    assert set(images) == {"pixel_values", "image_sizes"}
    crops = [bank.clean([p])["pixel_values"].shape[1] for p in encoded.images[:3]]
    assert len(set(crops)) > 1 and images["pixel_values"].shape[1] == max(crops)  # zero-padded
    with torch.no_grad():
        together = model(
            input_ids=batch["input_ids"][:3],
            attention_mask=batch["attention_mask"][:3],
            **images,
        ).logits
        for row in range(3):
            alone = collator([row])
            n = int(alone["attention_mask"][0].sum())
            logits = model(
                input_ids=alone["input_ids"][:1],
                attention_mask=alone["attention_mask"][:1],
                **image_inputs(alone),
            ).logits
            torch.testing.assert_close(together[row, :n], logits[0, :n], rtol=1e-4, atol=1e-4)


def test_teacher_forced_noisy_branch_uses_the_clean_branchs_token_positions(
    llava_next, pairs, next_images
):
    model, processor = llava_next
    bank = ImageBank(processor, next_images.__getitem__, noise=NOISE)
    encoded = encode_pairs(processor, pairs, 512, image_size=bank.size)
    batch = PairCollator(encoded, bank, processor.tokenizer.pad_token_id, "teacher_forced")(
        [0, 1, 2, 3]
    )
    clean, noisy = image_inputs(batch), image_inputs(batch, NOISY_PREFIX)
    assert set(noisy) == set(clean)
    assert torch.equal(noisy["image_sizes"], clean["image_sizes"])
    assert noisy["pixel_values"].shape == clean["pixel_values"].shape
    ids, mask = batch["input_ids"][:4], batch["attention_mask"][:4]
    with torch.no_grad():
        on_clean = POVIDTrainer._logits(model, ids, mask, clean, ids.shape[1])
        # The noisy forward's layout with the clean pixels in it gives the clean logits exactly:
        # the same image tokens at the same positions; only the pixels differ.
        swapped = {**noisy, "pixel_values": clean["pixel_values"]}
        torch.testing.assert_close(
            POVIDTrainer._logits(model, ids, mask, swapped, ids.shape[1]), on_clean
        )
        on_noisy = POVIDTrainer._logits(model, ids, mask, noisy, ids.shape[1])
    assert not torch.allclose(on_noisy, on_clean)


def test_noise_trigger_and_stage2_train_llava_next_and_it_round_trips(
    llava_next, pairs, next_images, tmp_path
):
    model, processor = llava_next
    load = next_images.__getitem__
    # noise_trigger's generated y_n-: the model's own answers under the noisy images.
    noise = NoiseConfig(step=300, seed=3, mode="generated")
    noisy = [
        noisy_image(load(p), i, noise) for i, p in zip(pairs["id"], pairs["image"], strict=True)
    ]
    answers = generate(
        model, processor, noisy, list(pairs["prompt"]), max_new_tokens=12, progress=False
    )
    generated = pairs.assign(noisy_rejected=answers)
    same = generated["noisy_rejected"].str.strip() == generated["chosen"].str.strip()
    generated.loc[same, "noisy_rejected"] = "There is a blue circle."

    for frame, cfg in ((pairs, NOISE), (generated, noise)):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        merged, report = train_stage2(model, processor, frame, load, FAST, cfg)
        first, last = report.step_metrics[0], report.step_metrics[-1]
        assert report.n_train_pairs == 8 and not report.invalid_pairs
        assert last["noise/margins"] > first["noise/margins"]
        assert last["loss"] < first["loss"] - 0.05
        changed = [n for n, p in merged.named_parameters() if not torch.equal(p, before[n])]
        assert any("language_model" in n for n in changed)
        assert type(merged).__name__ == "LlavaNextForConditionalGeneration"

    save_model_dir(merged, processor, tmp_path / "next")
    loaded, loaded_processor = load_model_dir(tmp_path / "next")
    assert type(loaded).__name__ == "LlavaNextForConditionalGeneration"
    for name, param in loaded.state_dict().items():
        torch.testing.assert_close(param, merged.state_dict()[name])
    texts = generate(
        loaded,
        loaded_processor,
        [load(p) for p in pairs["image"][:3]],
        list(pairs["prompt"][:3]),
        max_new_tokens=8,
        progress=False,
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_a_patch_row_image_layout_is_refused_with_the_reason(next_images):
    # Qwen2-VL's image processor (its processor class needs torchvision, which this project's
    # environment leaves out): one row per patch, not per image.
    from types import SimpleNamespace

    from transformers import Qwen2VLImageProcessorPil

    qwen = SimpleNamespace(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=256, max_pixels=4096, patch_size=8)
    )
    bank = ImageBank(qwen, next_images.__getitem__)
    with pytest.raises(ValueError, match="Qwen2-VL's layout.*Model families"):
        bank.clean([next(iter(next_images))])
