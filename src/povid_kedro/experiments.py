"""What the experiment drivers and benchmarks in ``scripts/`` share with ``kedro run``.

They read the project's parameters through Kedro's config loader with the project's own
settings (environments, ``globals.yml``, the soft parameter merge), so the values a script
tries are the values the pipelines read; overrides are merged in with :func:`deep_merge`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from povid_kedro.params import deep_merge
from povid_kedro.settings import CONFIG_LOADER_ARGS

__all__ = ["PROJECT_ROOT", "deep_merge", "project_parameters"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_parameters(env: str | None = None, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The merged ``parameters`` of ``conf/base`` and ``env`` (default: ``conf/local``)."""
    loader = OmegaConfigLoader(str(root / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return dict(loader["parameters"])
