"""Typed view of the ``inject_hallucinations`` parameters.

``conf/base/parameters_inject_hallucinations.yml`` is the single place where values live; the
dataclasses here only give them types, check them, and fail early with the parameter's full name.
Scalars have fallbacks so that a partial mapping (a test, a notebook) still works; word lists and
prompts have none, because a silent built-in vocabulary would hide a broken configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from povid_kedro.config_reader import read_dataclass
from povid_kedro.schema import DESCRIPTION, REASONING, TASK_TYPES

# One-word answers (VQA) are injected only when type_mix lists the task.
REQUIRED_TASK_TYPES = (DESCRIPTION, REASONING)

COOCCURRENCE = "cooccurrence"
RELATION = "relation"
ATTRIBUTE = "attribute"
WRONG_REASONING = "wrong_reasoning"
# Not a hallucination: a present object's sentences left out. Its rejections are shorter than
# the ground truth, so beside added objects (longer) they keep DPO from rewarding shortness.
OMISSION = "omission"
ANSWER_FLIP = "answer_flip"  # a one-word answer turned around: "Yes" <-> "No"
HALLUCINATION_TYPES = (COOCCURRENCE, RELATION, ATTRIBUTE, WRONG_REASONING, OMISSION, ANSWER_FLIP)

_PREFIX = "inject_hallucinations"


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in value or []:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"{where}: each entry must be a [from, to] pair, got {item!r}")
        out.append((str(item[0]), str(item[1])))
    return out


@dataclass
class ValidationConfig:
    """``inject_hallucinations.validation``: what makes a rewritten answer usable.

    Attributes:
        min_ratio: Lowest allowed length of the rejection / length of the chosen answer
            (characters, whitespace-normalised).
        max_ratio: Highest allowed ratio.
        refusal_patterns: Case-insensitive regular expressions; a match anywhere in the first
            200 characters marks a refusal.
        wrapper_patterns: Case-insensitive regular expressions for leading text that frames the
            answer ("Here is the modified answer:"); stripped before validation.
        trailer_patterns: Case-insensitive regular expressions for a trailing paragraph that
            comments on the answer ("Note: I changed ..."); stripped before validation.
    """

    min_ratio: float = 0.5
    max_ratio: float = 2.0
    refusal_patterns: list[str] = field(default_factory=list)
    wrapper_patterns: list[str] = field(default_factory=list)
    trailer_patterns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.min_ratio <= 1 <= self.max_ratio:
            raise ValueError(
                f"{_PREFIX}.validation: need 0 < min_ratio <= 1 <= max_ratio, got "
                f"{self.min_ratio}, {self.max_ratio}"
            )


@dataclass
class RulesConfig:
    """``inject_hallucinations.rules``: the offline rule-based injector.

    Attributes:
        version: Recorded as ``prompt_version`` of rule-made pairs (bump when rules change).
        substitute_share: Share of ``cooccurrence`` edits that replace a present object by a
            co-occurring absent one instead of adding a sentence (length balance:
            always-longer rejections teach DPO to stop early).
        max_edits: Most attribute / relation / fact changes applied to one answer (at least 1).
        synonyms_path: Optional synonym list file (``canonical, syn1, syn2`` per line) that
            defines the object vocabulary; ``object_words`` is used when it is null.
        object_words: Object categories (singular; multi-word allowed) without a synonym list.
        colour_words: Interchangeable colour words.
        shape_words: Interchangeable shape words.
        count_words: Number words for counts >= 2 (``two``, ``three`` ...), in numeric order.
        size_swaps: ``[word, replacement]`` pairs, applied in both directions.
        relation_swaps: ``[phrase, replacement]`` pairs (positions, spatial relations), both ways.
        conclusion_flips: ``[phrase, replacement]`` pairs that invert a conclusion, both ways.
        addition_templates: Sentences that add an object; placeholders ``{a_new}``
            (``a fork``), ``{A_new}`` (``A fork``), ``{relation}``, ``{present}``.
        addition_relations: Relation phrases for ``{relation}``.
    """

    object_words: list[str]
    colour_words: list[str]
    shape_words: list[str]
    count_words: list[str]
    size_swaps: list[list[str]]
    relation_swaps: list[list[str]]
    conclusion_flips: list[list[str]]
    addition_templates: list[str]
    addition_relations: list[str]
    version: str = "rules-v1"
    substitute_share: float = 0.5
    max_edits: int = 2
    synonyms_path: str | None = None

    def __post_init__(self) -> None:
        where = f"{_PREFIX}.rules"
        if not 0.0 <= self.substitute_share <= 1.0:
            raise ValueError(f"{where}.substitute_share must be in [0, 1]")
        if self.max_edits < 1:
            raise ValueError(f"{where}.max_edits must be >= 1")
        for name in ("size_swaps", "relation_swaps", "conclusion_flips"):
            _pairs(getattr(self, name), f"{where}.{name}")
        for template in self.addition_templates:
            if "{a_new}" not in template and "{A_new}" not in template:
                raise ValueError(f"{where}.addition_templates: {template!r} names no new object")


@dataclass
class OpenAIConfig:
    """``inject_hallucinations.openai``: the OpenAI-compatible endpoint and how to call it.

    Attributes:
        base_url: Endpoint base URL (``.../v1``); a client dataset's value wins over this one.
        model: Model name; a client dataset's value wins when it sets one.
        temperature: Sampling temperature.
        max_tokens: Completion token limit per request.
        concurrency: Requests in flight at once.
        rpm: Requests-per-minute limit (null or 0: none).
        tpm: Tokens-per-minute limit (null or 0: none); a request reserves its estimate.
        burst_seconds: Bucket depth in seconds of rate (how bursty a start may be).
        timeout: Per-request timeout in seconds.
        retries: Retries after a failed request (timeouts, 429, 5xx, malformed replies).
        backoff_base: First backoff in seconds; doubles per retry, with jitter.
        backoff_max: Longest backoff in seconds.
        max_retry_after: Longest ``Retry-After`` that is waited for; longer fails the request.
        validation_retries: Re-asks, with the reason, after an unusable answer.
        retry_cached_failures: Ask again for samples whose answer failed validation in an
            earlier run (otherwise the cached failure is reported again).
        image_max_side: Images are downscaled to this longest side before upload (null: never).
        image_token_estimate: Tokens reserved per image for the tpm limit.
        price_per_1k_prompt_tokens: USD, for the cost estimate only.
        price_per_1k_completion_tokens: USD, for the cost estimate only.
        progress: Show a tqdm progress bar.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    temperature: float = 0.7
    max_tokens: int = 512
    concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None
    burst_seconds: float = 1.0
    timeout: float = 60.0
    retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    validation_retries: int = 1
    retry_cached_failures: bool = False
    image_max_side: int | None = 1024
    image_token_estimate: int = 800
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        where = f"{_PREFIX}.openai"
        if self.concurrency < 1:
            raise ValueError(f"{where}.concurrency must be >= 1")
        if self.retries < 0 or self.validation_retries < 0:
            raise ValueError(f"{where}.retries and validation_retries must be >= 0")
        if self.timeout <= 0:
            raise ValueError(f"{where}.timeout must be > 0")
        if self.burst_seconds <= 0:
            raise ValueError(f"{where}.burst_seconds must be > 0")


@dataclass
class InjectConfig:
    """The whole ``inject_hallucinations`` mapping.

    Attributes:
        injector: ``rules`` (offline, default) or ``openai``.
        seed: Seed of type assignment and of every rule choice (per sample, order-free).
        type_mix: Per task type, the weights of its hallucination types.
        validation: See :class:`ValidationConfig`.
        rules: See :class:`RulesConfig` (required for the rules injector).
        openai: See :class:`OpenAIConfig`.
        prompt_version: Key into ``prompts``; part of every cache key.
        report_samples: Pairs shown in the chosen-vs-rejected sample report.
        prompts: ``{version: {hallucination_type: prompt}}``; prompts contain ``{question}``
            and ``{answer}``. A version may add ``retry_note`` (with ``{reason}``), appended to
            the prompt when an answer failed validation and is asked for again.
    """

    injector: str = "rules"
    seed: int = 0
    type_mix: dict[str, dict[str, float]] = field(
        default_factory=lambda: {
            DESCRIPTION: {COOCCURRENCE: 1.0, RELATION: 1.0, ATTRIBUTE: 1.0},
            REASONING: {WRONG_REASONING: 1.0},
        }
    )
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    rules: RulesConfig | None = None
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    prompt_version: str = "v1"
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    report_samples: int = 20

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | InjectConfig) -> InjectConfig:
        """Build and check the configuration from the parameters mapping.

        Args:
            params: The ``inject_hallucinations`` mapping (or an ``InjectConfig``, returned as is).

        Returns:
            The typed configuration.

        Raises:
            ValueError: On unknown keys, missing word lists, bad weights or missing prompts.
        """
        if isinstance(params, InjectConfig):
            return params
        raw = dict(params)
        raw["validation"] = read_dataclass(
            ValidationConfig, raw.get("validation"), f"{_PREFIX}.validation"
        )
        raw["openai"] = read_dataclass(OpenAIConfig, raw.get("openai"), f"{_PREFIX}.openai")
        if raw.get("rules") is not None:
            raw["rules"] = read_dataclass(RulesConfig, raw["rules"], f"{_PREFIX}.rules")
        cfg: InjectConfig = read_dataclass(cls, raw, _PREFIX)
        cfg._check()
        return cfg

    def _check(self) -> None:
        if self.injector not in ("rules", "openai"):
            raise ValueError(
                f"{_PREFIX}.injector must be 'rules' or 'openai', not {self.injector!r}"
            )
        for task, mix in self.type_mix.items():
            if task not in TASK_TYPES:
                raise ValueError(f"{_PREFIX}.type_mix: unknown task type {task!r}")
            bad = sorted(set(mix) - set(HALLUCINATION_TYPES))
            if bad:
                raise ValueError(f"{_PREFIX}.type_mix.{task}: unknown type(s) {bad}")
            if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"{_PREFIX}.type_mix.{task}: weights must be >= 0, sum > 0")
        for task in REQUIRED_TASK_TYPES:
            if task not in self.type_mix:
                raise ValueError(f"{_PREFIX}.type_mix: missing task type {task!r}")
        if self.injector == "rules" and self.rules is None:
            raise ValueError(f"{_PREFIX}.rules is required for the rules injector")
        if self.injector == "openai":
            prompts = self.prompts.get(self.prompt_version)
            if prompts is None:
                raise ValueError(
                    f"{_PREFIX}.prompts has no version {self.prompt_version!r} "
                    f"(prompt_version); known: {sorted(self.prompts)}"
                )
            used = {t for mix in self.type_mix.values() for t, w in mix.items() if w > 0}
            missing = sorted(used - set(prompts))
            if missing:
                raise ValueError(
                    f"{_PREFIX}.prompts.{self.prompt_version}: no prompt for {missing}"
                )
            for name, text in prompts.items():
                if name in HALLUCINATION_TYPES and "{answer}" not in text:
                    raise ValueError(
                        f"{_PREFIX}.prompts.{self.prompt_version}.{name} must contain {{answer}}"
                    )

    @property
    def active_prompts(self) -> dict[str, str]:
        """The prompts of ``prompt_version``."""
        return dict(self.prompts.get(self.prompt_version, {}))
