"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    ``__default__`` runs everything on the embedded default, world generation included.
    ``povid`` is the same without ``embedded_world``: the real-scale entry point
    (``kedro run --env llava15 --pipeline povid``), where the raw data already exists.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    pipelines["povid"] = sum(
        (p for name, p in pipelines.items() if name not in {"__default__", "embedded_world"}),
        Pipeline([]),
    )
    return pipelines
