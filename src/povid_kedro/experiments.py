"""What the experiment drivers and benchmarks in ``scripts/`` share with ``kedro run``.

They read the project's parameters through Kedro's config loader with the project's own
settings (environments, ``globals.yml``, the soft parameter merge), so the values a script
tries are the values the pipelines read; overrides are merged in with :func:`deep_merge`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from povid_kedro.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_parameters(env: str | None = None, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The merged ``parameters`` of ``conf/base`` and ``env`` (default: ``conf/local``)."""
    loader = OmegaConfigLoader(str(root / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return dict(loader["parameters"])


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, recursively for nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
