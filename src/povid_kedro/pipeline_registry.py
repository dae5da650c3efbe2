"""Project pipelines."""

from __future__ import annotations

import importlib

from kedro.pipeline import Pipeline

# In data-flow order. Listed, not discovered: Kedro's lazy discovery imports only the
# requested name, so a typo surfaced as an ImportError and the composed ``povid`` (no
# directory of its own) could not be requested at all.
PIPELINES = (
    "embedded_world",
    "ingest_ground_truth",
    "base_model",
    "inject_hallucinations",
    "noise_trigger",
    "dpo_training",
    "evaluate",
)
# Run on request only, after a default run: `kedro run --pipeline ablation` trains every
# ablation row for every seed (about an hour on 2 CPU cores).
ON_REQUEST = ("ablation",)


class _Pipelines(dict[str, Pipeline]):
    """The registry; an unknown name is a ``KeyError`` that lists the pipelines."""

    def __missing__(self, name: str) -> Pipeline:
        raise KeyError(f"there is no pipeline {name!r}; the pipelines are: {', '.join(self)}")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    ``__default__`` runs everything on the embedded default, world generation included.
    ``povid`` is the same without ``embedded_world``: the real-scale entry point
    (``kedro run --env llava15 --pipeline povid``), where the raw data already exists.
    ``ablation`` is in neither.
    """
    pipelines = _Pipelines(
        (name, importlib.import_module(f"povid_kedro.pipelines.{name}").create_pipeline())
        for name in (*PIPELINES, *ON_REQUEST)
    )
    pipelines["povid"] = sum(
        (pipelines[n] for n in PIPELINES if n != "embedded_world"), Pipeline([])
    )
    pipelines["__default__"] = sum((pipelines[n] for n in PIPELINES), Pipeline([]))
    return pipelines
