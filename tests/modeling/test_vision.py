"""Vision-tower pretraining: the tower learns to name the objects its images' descriptions name,
then stays fixed while the language model learns."""

from __future__ import annotations

import dataclasses
import random

import pandas as pd
import pytest
import torch

from povid_kedro.metrics.chair import ObjectExtractor
from povid_kedro.modeling import build_model_and_processor
from povid_kedro.modeling.scratch import train_scratch_model
from povid_kedro.modeling.vision import (
    VisionPretrainConfig,
    presence_labels,
    pretrain_vision_tower,
)
from tests.modeling.conftest import PROMPT, SHAPES, make_scene
from tests.training.conftest import MODEL_CFG

SYNONYMS = "\n".join(SHAPES)


@pytest.fixture(scope="module")
def shape_scenes():
    rng = random.Random(11)
    return [make_scene(rng) for _ in range(96)]


def test_labels_are_the_objects_each_images_descriptions_name():
    objects = ObjectExtractor(SYNONYMS).objects
    paths, categories, labels = presence_labels(
        {"b.png": ["There is a red square."], "a.png": ["A blue circle.", "Two circles."]},
        objects,
    )
    assert (paths, categories) == (["a.png", "b.png"], ["circle", "square"])
    assert labels.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_pretraining_teaches_the_tower_to_name_the_objects_and_freezes_it(tokenizer, shape_scenes):
    model, processor = build_model_and_processor(MODEL_CFG, tokenizer)
    captions = {str(i): [caption] for i, (_, caption) in enumerate(shape_scenes)}
    paths, _, labels = presence_labels(captions, ObjectExtractor(SYNONYMS).objects)
    images = [shape_scenes[int(p)][0] for p in paths]
    cfg = VisionPretrainConfig(epochs=12, batch_size=16, lr=3e-3)
    result = pretrain_vision_tower(model, processor, images, labels, cfg)
    assert result["steps"] == 12 * (96 // 16) == len(result["losses"])
    first, last = result["losses"][:6], result["losses"][-6:]
    assert sum(last) / 6 < 0.5 * sum(first) / 6  # it learnt the shapes, not just the base rate
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())


# LeViT's stem has BatchNorm: with freeze_norm_statistics its running statistics stay too;
# without, they follow the SFT batches (conf/base's choice, docs/experiments.md).
LEVIT = {"vision_tower": "levit", "image_size": 64, "patch_size": 16}
TOWERS = {"clip": ({}, False), "levit": (LEVIT, True), "levit_batch_norms": (LEVIT, False)}


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_the_base_model_trains_its_language_side_on_the_pretrained_frozen_tower(
    shape_scenes, tower
):
    model_overrides, freeze_norms = TOWERS[tower]
    table = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(len(shape_scenes))],
            "task_type": "description",
            "prompt": PROMPT,
            "answer": [caption for _, caption in shape_scenes],
        }
    )
    images = {f"{i}.png": image for i, (image, _) in enumerate(shape_scenes)}
    kwargs = {
        "tasks": ["description"],
        "text_warmup": False,
        "tokenizer": {"vocab_size": 300, "min_frequency": 1},
        "model": {**dataclasses.asdict(MODEL_CFG), **model_overrides},
        "train": {"steps": 3, "batch_size": 4, "lr": 1e-2, "num_threads": 1},
    }
    pretraining = {"epochs": 2, "batch_size": 32, "freeze_norm_statistics": freeze_norms}
    with pytest.raises(ValueError, match="needs `objects`"):
        train_scratch_model(table, images.__getitem__, **kwargs, vision_pretraining=pretraining)

    seen = {}

    def after_pretraining(model):
        seen["tower"] = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
        seen["projector"] = model.model.multi_modal_projector.linear_1.weight.clone()

    model, processor, _ = train_scratch_model(
        table,
        images.__getitem__,
        **kwargs,
        vision_pretraining=pretraining,
        objects=ObjectExtractor(SYNONYMS).objects,
        prepare=after_pretraining,
    )
    fresh, _ = build_model_and_processor(
        dataclasses.replace(MODEL_CFG, **model_overrides), processor.tokenizer
    )
    tower = model.model.vision_tower.state_dict()
    weights = dict(model.model.vision_tower.named_parameters())
    assert all(torch.equal(w, seen["tower"][k]) for k, w in weights.items())  # frozen in SFT
    statistics = [k for k in tower if "running" in k]
    moved = any(not torch.equal(tower[k], seen["tower"][k]) for k in statistics)
    assert moved == (bool(statistics) and not freeze_norms)
    assert not all(  # ...but pretrained: not the freshly initialised tower
        torch.equal(tower[k], v) for k, v in fresh.model.vision_tower.state_dict().items()
    )
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, seen["projector"])
