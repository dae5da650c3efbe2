"""The config dataclasses' defaults are the values ``conf/base`` gives ``kedro run``.

A ``ModelConfig()`` in a test, a benchmark or a notebook must be the model the pipeline trains;
a default that drifts from ``conf/base`` fails here. The differences kept on purpose are listed
with their reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image

from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import build_model_and_processor, train_tokenizer
from povid_kedro.modeling.config import ModelConfig, TokenizerConfig, TrainConfig
from povid_kedro.modeling.vision import VisionPretrainConfig
from povid_kedro.training.config import Stage2Config, StageConfig
from povid_kedro.training.noise import NoiseConfig
from povid_kedro.world.config import PopeConfig, TextConfig, VisualConfig, WorldConfig

# Library defaults that are published values, while conf/base holds the values tuned for the
# embedded default: a user at real scale starts from the paper's, not from the tiny world's.
KEPT = {
    # the paper's noise step k (of 1000); 350 was chosen by the noise-step sweep on the world
    ("noise_trigger", "step"),
    # {} = GenerateConfig's own defaults; conf spells the decoding settings out
    ("noise_trigger", "generate"),
    # task names and word lists belong to the data (the world's vocabulary, its task types):
    # a library default would hide a broken configuration
    ("train", "task_batch"),
    ("text", "detail_prompts"),
    ("text", "question_weights"),
    ("text", "irregular_plurals"),
    ("stage1", "task_mix"),
    ("stage2", "task_mix"),
    # trl's DPOTrainer defaults (one epoch, no step cap, batch 8, no SFT term, q/v LoRA of the
    # language model only): the stages' library behaviour matches trl's unless configured
    *(
        (stage, key)
        for stage in ("stage1", "stage2")
        for key in (
            "ld_alpha",
            "sft_weight",
            "num_train_epochs",
            "max_steps",
            "batch_size",
            "reference_batch_size",
            "logging_steps",
            "lora",
            "noise_positions",
        )
    ),
}

GROUPS = [
    (ModelConfig, ("base_model", "model")),
    (TokenizerConfig, ("base_model", "tokenizer")),
    (TrainConfig, ("base_model", "train")),
    (VisionPretrainConfig, ("base_model", "vision_pretraining")),
    (TextConfig, ("embedded_world", "text")),
    (VisualConfig, ("embedded_world", "visual")),
    (PopeConfig, ("embedded_world", "pope")),
    (NoiseConfig, ("noise_trigger",)),
    (StageConfig, ("dpo_training", "stage1")),
    (Stage2Config, ("dpo_training", "stage2")),
]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize(("cls", "path"), GROUPS, ids=lambda x: getattr(x, "__name__", None))
def test_defaults_are_the_base_configuration(cls: type, path: tuple[str, ...]) -> None:
    conf: Any = project_parameters()
    for key in path:
        conf = conf[key]
    where = path[-1]
    drifted = {}
    for field in dataclasses.fields(cls):
        default = _default(field)
        if field.name not in conf or default is dataclasses.MISSING or (where, field.name) in KEPT:
            continue
        if _plain(default) != _plain(conf[field.name]):
            drifted[field.name] = (default, conf[field.name])
    assert not drifted, f"{cls.__name__} defaults differ from conf/base {'.'.join(path)}: {drifted}"


def test_the_levit_environment_builds_its_tower_and_world():
    # `kedro run --env levit`: the LeViT stem's 36 tokens on a world with larger glyphs.
    params = project_parameters("levit")
    cfg = ModelConfig.from_dict(params["base_model"]["model"])
    world = WorldConfig.from_dict(params["embedded_world"])
    assert cfg.vision_tower == "levit" and cfg.num_image_tokens == 36
    assert world.sizes["large"] == (27, 30)
    tokenizer = train_tokenizer(["a red cup.", "USER: <image>"], TokenizerConfig(vocab_size=64))
    model, processor = build_model_and_processor(cfg, tokenizer)
    image = Image.new("RGB", (world.image_size, world.image_size))
    batch = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 36
    assert model.model.get_image_features(batch["pixel_values"]).pooler_output[0].shape[0] == 36


def test_the_pretrained_tower_environment_is_levit_with_a_pretrained_frozen_tower():
    levit, params = project_parameters("levit"), project_parameters("pretrained_tower")
    assert params["base_model"]["model"] == levit["base_model"]["model"]
    assert params["embedded_world"] == levit["embedded_world"]
    cfg = VisionPretrainConfig.from_dict(params["base_model"]["vision_pretraining"])
    assert cfg.epochs > 0 and cfg.freeze
