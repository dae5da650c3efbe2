"""Supervised training: answer-only labels, loss goes down, runs are deterministic."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from povid_kedro.modeling import (
    SFTRow,
    TrainConfig,
    build_model_and_processor,
    rows_from_llava_instruct,
    train_sft,
)
from povid_kedro.modeling.data import SFTCollator, encode_rows
from povid_kedro.modeling.train import (
    _task_stream,
    accumulate_step,
    cosine_lr,
    weighted_lm_loss,
)
from povid_kedro.schema import IGNORE_INDEX

from .conftest import PROMPT


def test_labels_cover_the_answer_only(fresh, scenes):
    _, processor = fresh
    image, caption = scenes[0]
    features = encode_rows(processor, [SFTRow(image, PROMPT, caption)], max_length=96)
    ids, labels = features.input_ids[0], features.labels[0]
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(answer) == " " + caption + "</s>"
    batch = SFTCollator(features, processor.tokenizer.pad_token_id)([0])
    assert tuple(batch["pixel_values"].shape) == (1, 3, 32, 32)


def test_text_only_rows_mix_with_image_rows(fresh, scenes):
    model, processor = fresh
    rows = [SFTRow(scenes[0][0], PROMPT, scenes[0][1]), SFTRow(None, None, scenes[1][1])]
    features = encode_rows(processor, rows, max_length=96)
    batch = SFTCollator(features, processor.tokenizer.pad_token_id)([0, 1])
    assert batch["pixel_values"].shape[0] == 1
    assert torch.isfinite(model(**batch).loss)


def test_prompt_longer_than_max_length_is_an_error(fresh, scenes):
    _, processor = fresh
    with pytest.raises(ValueError, match="max_length"):
        encode_rows(processor, [SFTRow(scenes[0][0], PROMPT, "x")], max_length=10)


def test_a_few_steps_reduce_the_loss_and_are_deterministic(model_cfg, tokenizer, scenes):
    rows = [SFTRow(image, PROMPT, caption) for image, caption in scenes[:8]]
    cfg = TrainConfig(steps=25, batch_size=8, lr=1e-2, max_length=96, seed=3, log_every=0)
    seen = []
    results = []
    for _ in range(2):
        model, processor = build_model_and_processor(model_cfg, tokenizer)
        results.append(
            train_sft(
                model, processor, rows, cfg, callback=lambda *a: seen.append(a), progress=False
            )
        )
    first, second = results
    assert len(first.losses) == 25
    assert first.losses[-1] < 0.5 * first.losses[0]
    assert first.losses == second.losses
    assert [s[0] for s in seen[:25]] == ["sft"] * 25


def test_text_warmup_phase(model_cfg, tokenizer, scenes):
    model, processor = build_model_and_processor(model_cfg, tokenizer)
    cfg = TrainConfig(steps=2, batch_size=4, text_warmup_steps=3, max_length=96, log_every=0)
    rows = [SFTRow(image, PROMPT, caption) for image, caption in scenes[:4]]
    result = train_sft(
        model, processor, rows, cfg, text_rows=[c for _, c in scenes[:8]], progress=False
    )
    assert len(result.text_losses) == 3 and len(result.losses) == 2


def test_cosine_schedule():
    lrs = [cosine_lr(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_rows_from_llava_instruct(scenes):
    image = scenes[0][0]
    record = {
        "id": "r1",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Any shape?"},
            {"from": "gpt", "value": "A circle."},
        ],
    }
    rows = rows_from_llava_instruct([record], {"a.png": image})
    assert [(r.prompt, r.answer) for r in rows] == [
        ("<image>\nWhat colour is it?", "Red."),
        ("<image>\nAny shape?", "A circle."),
    ]
    assert all(r.image is image for r in rows)
    (packed,) = rows_from_llava_instruct([record], {"a.png": image}, pack_turns=True)
    assert packed.history == [("<image>\nWhat colour is it?", "Red.")]
    assert (packed.prompt, packed.answer, packed.image) == ("Any shape?", "A circle.", image)


def test_sample_mean_loss_weighs_every_row_equally(fresh, scenes):
    model, processor = fresh
    rows = [SFTRow(scenes[0][0], PROMPT, scenes[0][1]), SFTRow(scenes[1][0], PROMPT, "Yes")]
    features = encode_rows(processor, rows, max_length=96)
    batch = SFTCollator(features, processor.tokenizer.pad_token_id)([0, 1])
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    # By hand: each row's mean next-token loss over its labelled tokens, then the mean of rows.
    per_row = []
    for row in range(2):
        losses = [
            -torch.log_softmax(logits[row, t - 1], dim=-1)[labels[row, t]]
            for t in range(1, labels.shape[1])
            if labels[row, t] != IGNORE_INDEX
        ]
        per_row.append(torch.stack(losses).mean())
    expected = torch.stack(per_row).mean()
    sample = weighted_lm_loss(logits, labels, normalization="sample")
    assert sample.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        token_mean = model(**batch, labels=labels).loss
    # The short answer counts for half of the sample-mean loss but far less of the token mean.
    assert not torch.isclose(token_mean, expected)
    assert weighted_lm_loss(logits, labels).item() == pytest.approx(token_mean.item(), rel=1e-5)
    # Weight 3 on the short row: it counts as if its tokens were there three times.
    weights = torch.tensor([1.0, 3.0])
    n = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).float()
    by_hand = (per_row[0] * n[0] + 3 * per_row[1] * n[1]) / (n[0] + 3 * n[1])
    assert weighted_lm_loss(logits, labels, weights).item() == pytest.approx(
        by_hand.item(), rel=1e-5
    )


def test_sample_normalised_training_runs(model_cfg, tokenizer, scenes):
    rows = [SFTRow(image, PROMPT, caption) for image, caption in scenes[:8]]
    rows += [SFTRow(image, PROMPT, "Yes") for image, _ in scenes[:8]]
    model, processor = build_model_and_processor(model_cfg, tokenizer)
    cfg = TrainConfig(
        steps=20, batch_size=8, lr=1e-2, max_length=96, log_every=0, loss_normalization="sample"
    )
    result = train_sft(model, processor, rows, cfg, progress=False)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    with pytest.raises(ValueError, match="loss_normalization"):
        TrainConfig(loss_normalization="mean")


def test_task_batch_fixes_each_steps_composition():
    tasks = ["description"] * 10 + ["vqa"] * 30
    stream = _task_stream(tasks, {"description": 4, "vqa": 2}, torch.Generator().manual_seed(0))
    seen = []
    for _ in range(5):
        batch = next(stream)
        assert [tasks[i] for i in batch] == ["description"] * 4 + ["vqa"] * 2
        seen += batch[:4]
    # Descriptions cycle through their own epochs: the first 8 draws are 8 distinct rows.
    assert len(set(seen[:8])) == 8
    with pytest.raises(ValueError, match="does not match"):
        next(_task_stream(tasks, {"description": 4}, torch.Generator()))
    with pytest.raises(ValueError, match="task_batch"):
        TrainConfig(task_batch={"vqa": 0})


@pytest.mark.parametrize("normalization", ["token", "sample"])
def test_a_step_split_by_task_has_the_loss_and_gradient_of_the_whole_batch(
    fresh, scenes, normalization
):
    model, processor = fresh
    rows = [SFTRow(image, PROMPT, caption) for image, caption in scenes[:3]]
    rows += [SFTRow(image, PROMPT, "Yes", weight=4.0, task="vqa") for image, _ in scenes[3:5]]
    collate = SFTCollator(encode_rows(processor, rows, max_length=96), 0)

    def grads():
        out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out

    batch = collate([0, 1, 2, 3, 4])
    labels, weights = batch.pop("labels"), batch.pop("loss_weights")
    whole = weighted_lm_loss(model(**batch).logits, labels, weights, normalization)
    whole.backward()
    expected = grads()
    loss, own = accumulate_step(model, [collate([0, 1, 2]), collate([3, 4])], normalization)
    got = grads()
    assert loss == pytest.approx(whole.item(), rel=1e-5)
    # Each micro-batch's own loss is that of its rows alone (e.g. a task's curve in MLflow).
    short = collate([3, 4])
    labels, weights = short.pop("labels"), short.pop("loss_weights")
    with torch.no_grad():
        alone = weighted_lm_loss(model(**short).logits, labels, weights, normalization)
    assert own[1] == pytest.approx(alone.item(), rel=1e-5)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_a_packed_conversation_trains_every_answer_with_the_image_once(fresh, scenes):
    _, processor = fresh
    image = scenes[0][0]
    row = SFTRow(image, "What colour is it?", "Red.", history=[(PROMPT, "A circle.")])
    features = encode_rows(processor, [row], max_length=200)
    ids, labels = features.input_ids[0], features.labels[0]
    tokenizer = processor.tokenizer
    text = tokenizer.decode(ids).replace(processor.image_token, "")
    assert text == (
        "<s>USER: \nDescribe the image. ASSISTANT: A circle.</s>"
        "USER: What colour is it? ASSISTANT: Red.</s>"
    )
    trained = [t if lab != IGNORE_INDEX else None for t, lab in zip(ids, labels, strict=True)]
    spans, current = [], []
    for t in trained:
        if t is None and current:
            spans.append(tokenizer.decode(current))
            current = []
        elif t is not None:
            current.append(t)
    spans.append(tokenizer.decode(current))
    assert spans == [" A circle.</s>", " Red.</s>"]
    # The unpacked rows pay for the image twice.
    unpacked = rows_from_llava_instruct(
        [
            {
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": PROMPT},
                    {"from": "gpt", "value": "A circle."},
                    {"from": "human", "value": "What colour is it?"},
                    {"from": "gpt", "value": "Red."},
                ],
            }
        ],
        {"a.png": image},
    )
    n_image = sum(
        f.count(processor.image_token_id)
        for f in encode_rows(processor, unpacked, max_length=200).input_ids
    )
    assert n_image == 2 * ids.count(processor.image_token_id) > 0


@pytest.mark.parametrize("renders_kept", [4096, 1])
def test_a_row_encodes_the_same_whatever_rows_are_beside_it(
    fresh, scenes, monkeypatch, renders_kept
):
    # Rows sharing their first turns share renders and token pieces inside encode_rows; with one
    # render kept, every shared prefix has been dropped by the time the next row needs it.
    from povid_kedro.modeling import data

    monkeypatch.setattr(data, "_ChatRenderer", partial(data._ChatRenderer, size=renders_kept))
    _, processor = fresh
    (a, caption_a), (b, caption_b) = scenes[0], scenes[1]
    rows = [
        SFTRow(a, "Is it red?", "Yes", history=[(PROMPT, caption_a)]),
        SFTRow(b, "Is it red?", "No", history=[(PROMPT, caption_a)]),
        SFTRow(b, "Is it blue?", "No", history=[(PROMPT, caption_b)]),
        SFTRow(a, PROMPT, caption_a),
        SFTRow(None, None, caption_b),
        SFTRow(b, "Is it red?", "Yes", history=[(PROMPT, caption_a)]),
    ]
    together = encode_rows(processor, rows, max_length=200)
    for i, row in enumerate(rows):
        alone = encode_rows(processor, [row], max_length=200)
        assert together.input_ids[i] == alone.input_ids[0]
        assert together.labels[i] == alone.labels[0]
    assert together.input_ids[0] != together.input_ids[1]  # the answers differ
    assert together.image_index == [0, 1, 1, 0, -1, 1]


def test_each_task_has_its_own_loss_curve(model_cfg, tokenizer, scenes):
    from povid_kedro.modeling.scratch import loss_history

    rows = [SFTRow(image, PROMPT, caption, task="description") for image, caption in scenes[:8]]
    rows += [SFTRow(image, PROMPT, "Yes", weight=5.0, task="vqa") for image, _ in scenes[8:16]]
    model, processor = build_model_and_processor(model_cfg, tokenizer)
    cfg = TrainConfig(
        steps=6, lr=1e-2, max_length=96, log_every=0, task_batch={"description": 4, "vqa": 2}
    )
    result = train_sft(model, processor, rows, cfg, progress=False)
    assert sorted(result.task_losses) == ["description", "vqa"]
    assert all(len(v) == 6 for v in result.task_losses.values())
    # The one-word answers are learnt far faster than the descriptions.
    assert result.task_losses["vqa"][-1] < result.task_losses["description"][-1]
    history = loss_history(result, every=3)
    assert [p["step"] for p in history["sft_loss_vqa"]] == [3, 6]
