"""The two-stage engine on a tiny LLaVA: margins move, caching is exact, NaN stops cleanly."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch
from transformers import LlavaForConditionalGeneration, TrainerCallback

from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import build_model_and_processor, load_model_dir
from povid_kedro.training import (
    DPOTrainingConfig,
    NonFiniteLossError,
    StageConfig,
    train_stage1,
    train_stage2,
)
from povid_kedro.training.noise import NoiseConfig
from tests.training.conftest import FAST, MODEL_CFG, NOISE, margins


def _train_rows(pairs):
    return pairs[pairs["split"] == "train"]


def _params(model, part):
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


def _changed(before, model):
    now = dict(model.named_parameters())
    return any(not torch.equal(value, now[name]) for name, value in before.items())


def test_stage1_moves_the_margin_and_skips_invalid_pairs(fresh, pairs, load_image, caplog):
    model, processor = fresh
    reference = copy.deepcopy(model)
    frame = pairs.copy()
    frame.loc[2, "rejected"] = frame.loc[2, "chosen"]
    merged, report = train_stage1(model, processor, frame, load_image, FAST)

    assert isinstance(merged, LlavaForConditionalGeneration)
    assert "forward" not in merged.__dict__  # trl's fused-head patch does not leave with it
    assert report.invalid_pairs == [
        ("s2", "identical_answers", "chosen and rejected are identical")
    ]
    # Each skipped pair is logged once, with the count per reason.
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("pair s2 not trained on" in m for m in logged) == 1
    assert any("1 pairs not trained on (identical_answers 1)" in m for m in logged)
    assert (report.n_train_pairs, report.n_eval_pairs) == (7, 2)
    assert report.steps == len(report.step_metrics) == 6
    first, last = report.step_metrics[0], report.step_metrics[-1]
    assert {"loss", "step_seconds", "learning_rate", "hallucination/accuracy"} <= set(last)
    assert "noise/loss" not in last
    assert last["hallucination/margins"] > first["hallucination/margins"]
    assert "eval/hallucination/margins" in report.eval_metrics
    # An independent computation on the fixed training batch agrees on the direction.
    moved = margins(merged, reference, processor, _train_rows(pairs), load_image)
    assert moved["hallucination"] > 0.05


def test_stage2_teacher_forced_moves_both_margins(fresh, pairs, load_image):
    model, processor = fresh
    reference = copy.deepcopy(model)
    merged, report = train_stage2(model, processor, pairs, load_image, FAST, NOISE)
    last = report.step_metrics[-1]
    assert report.branches == "teacher_forced"
    assert {"hallucination/margins", "noise/margins"} <= set(last)
    assert last["loss"] == pytest.approx(
        0.5 * last["hallucination/loss"] + 0.5 * last["noise/loss"]
    )
    moved = margins(merged, reference, processor, _train_rows(pairs), load_image, noise=NOISE)
    assert moved["hallucination"] > 0.05
    assert moved["noise"] > 0.05


def test_stage2_generated_mode_uses_the_noisy_rejected_column(fresh, pairs, load_image):
    model, processor = fresh
    noise = NoiseConfig(step=300, seed=3, mode="generated")
    _, report = train_stage2(model, processor, pairs, load_image, {**FAST, "max_steps": 3}, noise)
    assert report.branches == "generated"
    assert report.step_metrics[-1]["noise/margins"] > report.step_metrics[0]["noise/margins"]
    with pytest.raises(ValueError, match="noisy_rejected"):
        train_stage2(
            model, processor, pairs.drop(columns="noisy_rejected"), load_image, FAST, noise
        )


def test_cached_and_uncached_reference_give_the_same_loss(fresh, pairs, load_image):
    model, processor = fresh
    twin = copy.deepcopy(model)
    cfg = {**FAST, "max_steps": 3, "batch_size": 4, "gradient_accumulation_steps": 2}
    _, cached = train_stage2(model, processor, pairs, load_image, cfg, NOISE)
    _, uncached = train_stage2(
        twin, processor, pairs, load_image, {**cfg, "cache_reference": False}, NOISE
    )
    assert cached.reference_seconds > 0 and uncached.reference_seconds == 0
    for a, b in zip(cached.step_metrics, uncached.step_metrics, strict=True):
        for key in ("loss", "hallucination/loss", "noise/loss", "noise/margins"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


class _ArmAfter(TrainerCallback):
    """Makes every later forward produce NaN once ``step`` optimiser steps are done."""

    def __init__(self, step: int, flag: dict) -> None:
        self.step, self.flag = step, flag

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            self.flag["nan"] = True


def test_nan_loss_stops_and_keeps_the_last_good_model(fresh, pairs, load_image, tmp_path):
    model, processor = fresh
    flag = {"nan": False}
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: output * float("nan") if flag["nan"] else None
    )
    cfg = {**FAST, "batch_size": 4, "output_dir": str(tmp_path / "ckpt")}
    with pytest.raises(NonFiniteLossError, match="at step 3") as caught:
        train_stage1(model, processor, pairs, load_image, cfg, callbacks=[_ArmAfter(2, flag)])
    err = caught.value
    assert err.step == 2 and err.report is not None and err.report.steps == 2
    assert "last good model" in str(err) and err.checkpoint_dir in str(err)
    saved, _ = load_model_dir(err.checkpoint_dir)
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    # It is the model after step 2: the failing step applied no update.
    flag["nan"] = False
    for (name, p), q in zip(model.named_parameters(), saved.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_projector_learning_rate_and_full_finetuning(fresh, pairs, load_image):
    model, processor = fresh
    vision, projector = _params(model, "vision_tower"), _params(model, "multi_modal_projector")
    lora = {"r": 4, "alpha": 8, "train_projector": True, "projector_lr": 1e-2}
    cfg = {**FAST, "max_steps": 2, "gradient_checkpointing": True, "lora": lora}
    merged, _ = train_stage1(model, processor, pairs, load_image, cfg)
    assert _changed(projector, merged) and not _changed(vision, merged)
    assert not merged.is_activation_checkpointing

    language = _params(merged, "language_model.layers.0.mlp")
    full = {**FAST, "max_steps": 2, "lora": {"enabled": False}}
    merged, _ = train_stage1(merged, processor, pairs, load_image, full)
    assert _changed(language, merged) and not _changed(vision, merged)


def test_configs_reject_unknown_keys_and_parameter_files_load():
    with pytest.raises(ValueError, match="unknown keys"):
        StageConfig.from_dict({"learning_rat": 1e-3})
    with pytest.raises(ValueError, match=r"dpo_training\.stage2\.lora: unknown keys"):
        DPOTrainingConfig.from_dict({"stage2": {"lora": {"rank": 8}}})
    with pytest.raises(ValueError, match="lm_head"):
        StageConfig.from_dict({"lora": {"target_modules": r".*(lm_head|q_proj)"}})
    with pytest.raises(ValueError, match="loss_type"):
        StageConfig(loss_type="kto")
    params = project_parameters()
    dpo, noise = params["dpo_training"], params["noise_trigger"]
    cfg = DPOTrainingConfig.from_dict(dpo)
    assert cfg.stage2.hallucination_weight == cfg.stage2.noise_weight == 0.5
    noise.pop("figure", None)  # drives the noise_trigger figure node only
    assert NoiseConfig.from_dict(noise).mode == "teacher_forced"


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_sequence_logps_equal_stock_trl_on_the_same_batch(
    fresh, pairs, images, load_image, tmp_path
):
    """The POVID encoding + log-probs reproduce trl's own DPOTrainer numbers exactly."""
    from datasets import Dataset
    from trl import DPOTrainer

    from povid_kedro.training.data import ImageBank, PairCollator, encode_pairs
    from povid_kedro.training.trainer import POVIDTrainer, dpo_args, lora_config

    model, processor = fresh
    frame = _train_rows(pairs).iloc[:4]
    cfg = StageConfig.from_dict(FAST)

    def message(role, text, image=False):
        return [
            {
                "role": role,
                "content": [{"type": "image"}] * image + [{"type": "text", "text": text}],
            }
        ]

    rows = [
        {
            "images": [images[r.image]],
            "prompt": message("user", r.prompt.replace("<image>", "").strip(), image=True),
            "chosen": message("assistant", r.chosen),
            "rejected": message("assistant", r.rejected),
        }
        for r in frame.itertuples()
    ]
    stock = DPOTrainer(
        model=copy.deepcopy(model),
        args=dpo_args(cfg, str(tmp_path / "trl")),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=lora_config(cfg),
    )
    trl_chosen, trl_rejected = stock.compute_ref_log_probs(
        stock.model, stock.data_collator([dict(r) for r in rows])
    )
    encoded = encode_pairs(processor, frame, cfg.max_length)
    collator = PairCollator(
        encoded, ImageBank(processor, load_image), processor.tokenizer.pad_token_id
    )
    ours = POVIDTrainer(
        copy.deepcopy(model),
        dpo_args(cfg, str(tmp_path / "povid")),
        processor,
        Dataset.from_dict({"pair": list(range(len(encoded)))}),
        collator,
        cfg,
        peft_config=lora_config(cfg),
    ).reference_logps(collator(list(range(len(encoded)))))
    assert torch.allclose(ours["chosen_h"], trl_chosen, atol=1e-4)
    assert torch.allclose(ours["rejected_h"], trl_rejected, atol=1e-4)


def test_stage2_runs_with_bf16_and_checkpointing(fresh, pairs, load_image):
    model, processor = fresh
    cfg = {**FAST, "max_steps": 2, "bf16": True, "gradient_checkpointing": True}
    merged, report = train_stage2(model, processor, pairs, load_image, cfg, NOISE)
    assert report.steps == 2 and all(torch.isfinite(p).all() for p in merged.parameters())
    assert next(merged.parameters()).dtype == torch.float32
    assert "forward" not in merged.__dict__  # accelerate's autocast wrapper is gone too


def test_only_the_pairs_the_steps_reach_are_prepared(fresh, pairs, load_image):
    model, processor = fresh
    cfg = {**FAST, "max_steps": 1, "batch_size": 4}
    _, report = train_stage1(copy.deepcopy(model), processor, pairs, load_image, cfg)
    assert (report.n_train_pairs, report.n_unused_pairs) == (4, 4)
    assert report.summary()["unused_pairs"] == 4
    _, report = train_stage1(
        model, processor, pairs, load_image, {**cfg, "pairs_for_steps_only": False}
    )
    assert (report.n_train_pairs, report.n_unused_pairs) == (8, 0)


def test_sft_term_adds_the_chosen_nll(fresh, pairs, load_image):
    model, processor = fresh
    cfg = {**FAST, "max_steps": 1, "sft_weight": 0.5}
    _, report = train_stage1(copy.deepcopy(model), processor, pairs, load_image, cfg)
    step = report.step_metrics[0]
    # At the first step the policy is the reference, so the DPO part is exactly log 2.
    assert step["hallucination/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert step["sft/nll_chosen"] > 0
    assert step["loss"] == pytest.approx(math.log(2) + 0.5 * step["sft/nll_chosen"], rel=1e-4)


def test_sft_only_control_is_a_configuration_of_the_same_trainer(fresh, pairs, load_image):
    """DPO weights 0 + sft_weight: the chosen answers' NLL alone, same steps, data and lr."""
    model, processor = fresh
    cfg = {**FAST, "max_steps": 2, "sft_weight": 1.0, "hallucination_weight": 0.0}
    _, report = train_stage1(copy.deepcopy(model), processor, pairs, load_image, cfg)
    for step in report.step_metrics:
        assert step["loss"] == pytest.approx(step["sft/nll_chosen"], rel=1e-5)
    stage2 = {**cfg, "noise_weight": 0.0}
    _, report = train_stage2(copy.deepcopy(model), processor, pairs, load_image, stage2)
    assert report.step_metrics[0]["loss"] == pytest.approx(
        report.step_metrics[0]["sft/nll_chosen"], rel=1e-5
    )
    with pytest.raises(ValueError, match="nothing to train"):
        StageConfig(hallucination_weight=0.0)
    with pytest.raises(ValueError, match="nothing to train"):
        DPOTrainingConfig.from_dict({"stage2": {"hallucination_weight": 0, "noise_weight": 0}})


def test_task_types_select_the_pairs_trained_on(fresh, pairs, load_image):
    model, processor = fresh
    typed = pairs.assign(task_type=["description"] * 5 + ["reasoning"] * (len(pairs) - 5))
    cfg = {**FAST, "max_steps": 1, "task_mix": {"description": 1.0}, "pairs_for_steps_only": False}
    _, report = train_stage1(copy.deepcopy(model), processor, typed, load_image, cfg)
    n_train_descriptions = int(((typed["split"] == "train") & (typed.index < 5)).sum())
    assert report.n_train_pairs == n_train_descriptions
    with pytest.raises(ValueError, match="that no pair has"):
        train_stage1(model, processor, typed, load_image, {**cfg, "task_mix": {"vqa": 1.0}})
    with pytest.raises(ValueError, match="no task_type column"):
        train_stage1(model, processor, pairs, load_image, cfg)


def test_task_mix_draws_the_steps_pairs_by_share(fresh, pairs, load_image, caplog):
    model, processor = fresh
    many = pd.concat([pairs.assign(id=pairs["id"] + f"_{k}") for k in range(4)], ignore_index=True)
    many["task_type"] = ["vqa" if i % 4 else "description" for i in range(len(many))]
    # 4 steps x 2 pairs: 8 pairs, half of each task although vqa pairs are 3 in 4.
    cfg = {**FAST, "max_steps": 4, "batch_size": 2, "task_mix": {"description": 1, "vqa": 1}}
    with caplog.at_level("INFO", logger="povid_kedro.training.trainer"):
        _, report = train_stage1(copy.deepcopy(model), processor, many, load_image, cfg)
    assert report.n_train_pairs == 8
    assert "8 pairs for the steps by task_mix: {'description': 4, 'vqa': 4}" in caplog.text
    assert report.n_unused_pairs == int((many["split"] == "train").sum()) - 8


def test_levit_batchnorm_statistics_stay_frozen_and_the_first_step_matches_the_reference(
    tokenizer, pairs, load_image
):
    # LeViT's BatchNorm layers do not train under LoRA: their running statistics must not learn
    # from DPO batches (noisy images included), and the policy must normalise as the cached
    # reference did, so the first step's margins are those of two equal models: zero.
    cfg = dataclasses.replace(MODEL_CFG, vision_tower="levit", image_size=64, patch_size=16)
    model, processor = build_model_and_processor(cfg, tokenizer)
    model.train()
    with torch.no_grad():  # non-trivial running statistics, as a trained base model has
        model.model.vision_tower(torch.randn(8, 3, 64, 64) * 2 + 1)
    model.eval()
    before = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    assert before
    merged, report = train_stage2(model, processor, pairs, load_image, FAST, NOISE)
    after = dict(merged.named_buffers())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    first = report.step_metrics[0]
    assert first["hallucination/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["noise/margins"] == pytest.approx(0.0, abs=1e-5)
    assert report.step_metrics[-1]["hallucination/margins"] > 1e-3  # and then it learns
