"""Every parameter group, checked before the first node runs.

A typo (``evaluate.max_image``), a wrong type (``max_steps=abc``) or a bad value must stop a run
at start-up with the key, what was expected and where the group is defined, not after an hour
of training or never. Each group is built by the reader its nodes use (the config dataclasses'
``from_dict``, which name unknown keys), then every field is checked against its annotation
with pydantic; the two groups that nodes read as plain mappings (``evaluate``, ``base_model``)
get pydantic models here.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, TypeAdapter, ValidationError

from povid_kedro.evaluation.gate import check_guard_names
from povid_kedro.hallucination import InjectConfig
from povid_kedro.hallucination.onpolicy import OnPolicyConfig
from povid_kedro.ingest import IngestConfig
from povid_kedro.modeling.config import GenerateConfig, ModelConfig, TokenizerConfig, TrainConfig
from povid_kedro.modeling.vision import VisionPretrainConfig
from povid_kedro.training import DPOTrainingConfig
from povid_kedro.training.noise import NoiseConfig, noise_fields
from povid_kedro.world import WorldConfig


class ParameterError(ValueError):
    """A parameter group that cannot be used: the group, the key and the fix in the message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Gate(_Strict):
    max_pope_f1_drop: float
    first_against_base: bool = True
    no_collapse: dict[str, float] | None = None


class _Mmhal(_Strict):
    judge_model: str | None = None
    prompt_template: str
    generation: dict[str, Any]
    temperature: float
    max_tokens: PositiveInt


class _Gallery(_Strict):
    images: int
    seed: int = 0
    image_side: PositiveInt = 192


class EvaluateParams(_Strict):
    """The ``evaluate`` group (``conf/base/parameters_evaluate.yml`` documents each key)."""

    description_prompt: str
    description_generation: dict[str, Any]
    pope_template: str
    pope_generation: dict[str, Any]
    max_images: PositiveInt | None = None
    sample_images: PositiveInt | None = None
    sample_seed: int = 0
    max_pope_questions: PositiveInt | None = None
    mmhal: _Mmhal
    gate: _Gate
    gallery: _Gallery


class BaseModelParams(_Strict):
    """The ``base_model`` group (``conf/base/parameters_base_model.yml``)."""

    source: Literal["scratch", "pretrained"]
    pretrained_path: str | None = None
    tasks: list[str]
    task_weights: dict[str, float] | None = None
    pack_turns: bool = True
    text_warmup: bool = True
    tokenizer: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    vision_pretraining: dict[str, Any] | None = None


def _evaluate(values: Mapping[str, Any]) -> None:
    params = EvaluateParams.model_validate(dict(values))
    check_guard_names(params.gate.no_collapse or {})
    for key, generation in (
        ("description_generation", params.description_generation),
        ("pope_generation", params.pope_generation),
        ("mmhal.generation", params.mmhal.generation),
    ):
        _build(GenerateConfig, generation, key)


def _base_model(values: Mapping[str, Any]) -> None:
    params = BaseModelParams.model_validate(dict(values))
    if params.source == "pretrained" and not params.pretrained_path:
        raise ValueError("source 'pretrained' needs pretrained_path (a model directory)")
    _build(TokenizerConfig, params.tokenizer, "tokenizer")
    _build(ModelConfig, params.model, "model")
    _build(TrainConfig, params.train, "train")
    _build(VisionPretrainConfig, params.vision_pretraining or {}, "vision_pretraining")


def _noise(values: Mapping[str, Any]) -> None:
    noise = _build(NoiseConfig, noise_fields(values), "")
    _build(GenerateConfig, noise.generate, "generate")


class AblationParams(_Strict):
    """The ``ablation`` group (``conf/base/parameters_ablation.yml``)."""

    seeds: list[int]
    validation_images: PositiveInt
    pope_questions: PositiveInt | None = None
    noise_steps: list[PositiveInt] = []
    rows: dict[str, dict[str, Any] | None]
    only: list[str] | None = None


def _ablation(values: Mapping[str, Any]) -> None:
    # Imported here: the ablation module imports this one (deep_merge).
    from povid_kedro.evaluation.ablation import ablation_rows

    params = AblationParams.model_validate(dict(values))
    if not params.seeds:
        raise ValueError("seeds: empty; give at least one DPO seed")
    ablation_rows(params.rows, params.noise_steps, params.only)


def _reader(cls: type) -> Callable[[Mapping[str, Any]], Any]:
    return lambda values: _build(cls, values, "")


READERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "embedded_world": _reader(WorldConfig),
    "ingest_ground_truth": _reader(IngestConfig),
    "inject_hallucinations": _reader(InjectConfig),
    "noise_trigger": _noise,
    "base_model": _base_model,
    "dpo_training": _reader(DPOTrainingConfig),
    "on_policy": _reader(OnPolicyConfig),
    "evaluate": _evaluate,
    "ablation": _ablation,
}
"""Parameter group -> its check: the reader its nodes use, after the values' types."""


def validate_group(group: str, values: Mapping[str, Any], source: str) -> None:
    """Check one parameter group as its nodes will read it.

    Args:
        group: The group name (a top-level key of the parameters).
        values: Its values, with every environment and ``--params`` override applied.
        source: Where it is defined (file names), for the message.

    Raises:
        ParameterError: Naming the group, the key, what was expected and ``source``.
    """
    check = READERS.get(group)
    if check is None:
        return
    try:
        check(values)
    except ValidationError as err:
        raise ParameterError(f"parameters {group!r} ({source}):\n{_pydantic_lines(err)}") from err
    except (TypeError, ValueError) as err:
        raise ParameterError(f"parameters {group!r} ({source}): {err}") from err


def _build(cls: Any, values: Mapping[str, Any] | None, where: str) -> Any:
    """``cls.from_dict(values)`` (``cls``: a config dataclass) after checking each value's type
    against its field's."""
    _check_types(cls, values or {}, where)
    return cls.from_dict(dict(values or {}))


def _pydantic_lines(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (a typo?)")
        elif problem["type"] == "missing":
            lines.append(f"  - {key}: missing")
        else:
            lines.append(f"  - {key}: {problem['msg']}, got {problem['input']!r}")
    return "\n".join(lines)


def _check_types(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Each scalar value of a mapping against the annotation of the dataclass field it sets
    (nested dataclasses too); unknown keys and containers are left to the reader."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        key = f"{where}.{field.name}" if where else field.name
        hint = hints.get(field.name, Any)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            _check_types(hint, value, key)
            continue
        if not _is_scalar(hint):
            continue  # containers: the reader converts them (e.g. a mapping into a tuple)
        try:
            # Strict: no "12" for 12, no 1 for True (ints still stand for floats).
            TypeAdapter(hint).validate_python(value, strict=True)
        except ValidationError as err:
            expected = getattr(hint, "__name__", str(hint).replace("typing.", ""))
            raise ParameterError(f"{key}: expected {expected}, got {value!r:.80}") from err


def _is_scalar(hint: Any) -> bool:
    """Numbers, strings, booleans, and optional ones."""
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(a is type(None) or _is_scalar(a) for a in args)
    return hint in (int, float, str, bool)


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, recursively for nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
