"""Project hooks."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

logger = logging.getLogger(__name__)


def _every_pipeline() -> dict[str, Pipeline]:
    """Each pipeline package's pipeline, by name.

    Kedro's registry holds only the pipelines a run asked for (``find_pipelines`` is filtered by
    ``--pipeline``), so the producers of missing inputs are looked up here instead.
    """
    import povid_kedro.pipelines as package

    return {
        info.name: importlib.import_module(f"{package.__name__}.{info.name}").create_pipeline()
        for info in pkgutil.iter_modules(package.__path__)
        if info.ispkg
    }


class MissingInputsError(RuntimeError):
    """A pipeline's input does not exist yet."""


class UpstreamCheckHooks:
    """Fail fast, and say which pipeline to run first, when a pipeline's inputs are missing.

    Without this a partial run (``kedro run --pipeline dpo_training``) would stop deep inside a
    node with a file-not-found error about a path, not about the step that makes it.
    """

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        absent = [
            dataset
            for dataset in sorted(pipeline.inputs())
            if not dataset.startswith("params:")
            and dataset != "parameters"
            and not catalog.exists(dataset)
        ]
        if not absent:
            return
        producers: dict[str, str] = {}
        for name, registered in _every_pipeline().items():
            for output in registered.all_outputs():
                producers.setdefault(output, name)
        # Inputs nothing here makes (an optional benchmark, API clients) are the user's to give.
        missing = [(d, producers[d]) for d in absent if d in producers]
        if missing:
            lines = [
                f"  - {dataset}: made by the {producer} pipeline "
                f"(`kedro run --pipeline {producer}`), or point the catalog entry at existing data"
                for dataset, producer in missing
            ]
            raise MissingInputsError(
                "this run needs inputs that do not exist yet:\n" + "\n".join(lines)
            )


class NodeTimerHooks:
    """Log how long each node took, and a summary at the end of the run."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = {}

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        seconds = time.perf_counter() - self._started.pop(node.name, time.perf_counter())
        self._seconds[node.name] = seconds
        logger.info("node %s took %.1f s", node.name, seconds)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._seconds:
            summary = ", ".join(f"{name} {s:.1f} s" for name, s in self._seconds.items())
            logger.info("node times: %s", summary)
        self._seconds = {}
