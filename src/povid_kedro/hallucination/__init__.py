"""Hallucination injectors: the dispreferred answer ``y_h-`` of POVID (docs/design.md §1).

``make_injector(params)`` builds the injector named by ``params["injector"]``:

- ``rules``: offline, deterministic rewrites driven by corpus statistics (:mod:`.rules`);
- ``openai``: any OpenAI-compatible Chat Completions endpoint (:mod:`.openai_injector`).

Both return an :class:`InjectionResult` (pairs, failures, numeric stats) and share the
validation gate (:mod:`.validate`). Library code: no Kedro imports here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from povid_kedro.hallucination.base import (
    ADDED_COLUMNS,
    FAILURE_COLUMNS,
    PROVIDED,
    ClientConfig,
    InjectionResult,
    Injector,
    LoadImage,
)
from povid_kedro.hallucination.cache import InjectionCache, cache_key
from povid_kedro.hallucination.config import HALLUCINATION_TYPES, InjectConfig
from povid_kedro.hallucination.formats import diff_report, to_povid_json, to_trl_rows
from povid_kedro.hallucination.rules import RuleInjector, parse_synonyms
from povid_kedro.hallucination.validate import Validator, Verdict

__all__ = [
    "ADDED_COLUMNS",
    "FAILURE_COLUMNS",
    "HALLUCINATION_TYPES",
    "PROVIDED",
    "ClientConfig",
    "InjectConfig",
    "InjectionCache",
    "InjectionResult",
    "Injector",
    "LoadImage",
    "RuleInjector",
    "Validator",
    "Verdict",
    "cache_key",
    "diff_report",
    "make_injector",
    "parse_synonyms",
    "to_povid_json",
    "to_trl_rows",
]


def make_injector(
    params: Mapping[str, Any] | InjectConfig,
    *,
    client_config: ClientConfig | Any | None = None,
    cache: InjectionCache | None = None,
    synonyms: str | Mapping[str, Iterable[str]] | Iterable[str] | None = None,
) -> Injector:
    """Build the injector chosen by ``params["injector"]``.

    Args:
        params: The ``inject_hallucinations`` parameters mapping.
        client_config: Endpoint + key for ``openai`` (an object with ``base_url``,
            ``api_key``, ``model``, e.g. what ``OpenAIClientDataset`` loads); ignored by rules.
        cache: Answer cache for ``openai``; ignored by rules (deterministic and fast).
        synonyms: Synonym list (text in ``canonical, syn1, ...`` lines, or a mapping) that
            defines the rules injector's object vocabulary, e.g. the world's ``synonyms.txt``.

    Returns:
        An injector; call ``inject(samples, load_image)``.
    """
    config = InjectConfig.from_dict(params)
    if config.injector == "openai":
        # Imported here: the openai client is only needed when it is used.
        from povid_kedro.hallucination.openai_injector import OpenAIInjector

        return OpenAIInjector(config, client_config=client_config, cache=cache)
    return RuleInjector(config, synonyms=synonyms)
