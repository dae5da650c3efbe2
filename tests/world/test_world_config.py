"""WorldConfig.from_dict: clear errors that name the bad key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from povid_kedro.experiments import project_parameters
from povid_kedro.world import WorldConfig


@pytest.fixture
def params() -> dict[str, Any]:
    return copy.deepcopy(project_parameters()["embedded_world"])


def _raises(params: dict[str, Any], *fragments: str) -> None:
    with pytest.raises(ValueError) as info:
        WorldConfig.from_dict(params)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_defaults_are_valid(params: dict[str, Any]) -> None:
    WorldConfig.from_dict(params)


def test_unknown_keys_are_named(params: dict[str, Any]) -> None:
    params["n_images"] = 3
    _raises(params, "embedded_world: unknown keys ['n_images']")


def test_unknown_nested_keys_are_named(params: dict[str, Any]) -> None:
    params["visual"]["nosie_std"] = 3.0
    _raises(params, "embedded_world.visual: unknown keys ['nosie_std']")
    del params["visual"]["nosie_std"]
    params["categories"]["cup"]["colour"] = "red"
    _raises(params, "embedded_world.categories.cup: unknown keys ['colour']")


def test_missing_key(params: dict[str, Any]) -> None:
    del params["seed"]
    _raises(params, "embedded_world: missing keys ['seed']")


def test_unknown_partner(params: dict[str, Any]) -> None:
    params["categories"]["fork"]["partner"] = "plate"
    _raises(params, "embedded_world.categories.fork.partner", "plate")


def test_unknown_scene_of_a_category(params: dict[str, Any]) -> None:
    params["categories"]["fork"]["scene"] = "office"
    _raises(params, "embedded_world.categories.fork.scene", "office")


@pytest.mark.parametrize("value", [1.5, -0.1, "0.5", True])
def test_bad_probability(params: dict[str, Any], value: Any) -> None:
    params["cooccurrence"]["train"] = value
    _raises(params, "embedded_world.cooccurrence.train", "probability")


def test_empty_vocabulary(params: dict[str, Any]) -> None:
    params["categories"] = {}
    _raises(params, "embedded_world.categories")
    params = copy.deepcopy(project_parameters()["embedded_world"])
    params["colours"] = {}
    _raises(params, "embedded_world.colours", "empty")


def test_shared_glyph(params: dict[str, Any]) -> None:
    params["categories"]["fork"]["glyph"] = "ring"
    _raises(params, "embedded_world.categories.fork.glyph", "cup")


def test_unknown_glyph(params: dict[str, Any]) -> None:
    params["categories"]["fork"]["glyph"] = "spiral"
    _raises(params, "embedded_world.categories.fork.glyph", "spiral")


def test_word_naming_two_categories(params: dict[str, Any]) -> None:
    params["categories"]["boat"]["synonyms"] = ["bike"]
    _raises(params, "embedded_world.categories", "bike")


def test_object_word_in_scene_text(params: dict[str, Any]) -> None:
    params["scenes"]["kitchen"]["phrases"].append("a table with cups")
    _raises(params, "embedded_world.scenes.kitchen.phrases", "cups")


def test_too_many_objects_for_the_grid(params: dict[str, Any]) -> None:
    params["objects_per_scene"]["max"] = 5
    _raises(params, "embedded_world.objects_per_scene.max")


def test_size_must_fit_a_cell(params: dict[str, Any]) -> None:
    params["sizes"]["large"] = [22, 40]
    _raises(params, "embedded_world.sizes.large")


def test_scene_without_categories(params: dict[str, Any]) -> None:
    params["scenes"]["office"] = dict(params["scenes"]["park"], phrases=["an office"])
    _raises(params, "embedded_world.scenes.office")


def test_misspelt_key_is_reported_as_unknown(params: dict[str, Any]) -> None:
    params["n_train_image"] = params.pop("n_train_images")
    _raises(params, "embedded_world: unknown keys ['n_train_image']")
    params = copy.deepcopy(project_parameters()["embedded_world"])
    params["categories"]["cup"]["glpyh"] = params["categories"]["cup"].pop("glyph")
    _raises(params, "embedded_world.categories.cup: unknown keys ['glpyh']")
