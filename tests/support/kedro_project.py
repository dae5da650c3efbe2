"""A throw-away copy of the project for tests that run real Kedro sessions."""

from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[2]

# A small world keeps session tests to seconds; the defaults are exercised by the benchmarks.
SMALL_WORLD = {"embedded_world": {"n_train_images": 120, "n_eval_images": 40}}


def make_project(where: Path) -> Path:
    """Copy the configuration (not conf/local) into ``where`` and bootstrap it there."""
    shutil.copytree(ROOT / "conf", where / "conf", ignore=shutil.ignore_patterns("local"))
    (where / "conf" / "local").mkdir()
    # An absolute store: mlflow caches its SQL engine by URI, so a relative sqlite:///mlflow.db
    # would keep writing to the first test's database within one process.
    base = (ROOT / "conf" / "base" / "mlflow.yml").read_text()
    (where / "conf" / "local" / "mlflow.yml").write_text(
        base.replace("sqlite:///mlflow.db", f"sqlite:///{where / 'mlflow.db'}")
    )
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    shutil.copy(ROOT / ".telemetry", where / ".telemetry")
    (where / "src").mkdir()  # the package itself is imported from the install
    bootstrap_project(where)
    return where


def run_pipeline(
    project: Path,
    pipeline: str,
    runtime_params: dict[str, Any] | None = None,
    env: str | None = None,
):
    """``kedro run --pipeline <pipeline> [--env <env>]`` in-process, on the small world."""
    params = {**SMALL_WORLD, **(runtime_params or {})}
    with KedroSession.create(project_path=project, runtime_params=params, env=env) as session:
        outputs = session.run(pipeline_names=[pipeline])
    # kedro-mlflow 2.0.3 re-enters its run once per node (for threaded runners) and closes it
    # once, which leaves it on mlflow's stack in this process; a CLI run ends with its process.
    # Close it, as a second `kedro run` process would start clean.
    while mlflow.active_run():
        mlflow.end_run()
    return outputs


def free_port() -> int:
    """A free loopback port below 49152 (kedro viz refuses the ephemeral range the OS hands
    out)."""
    for port in random.Random().sample(range(20000, 40000), 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 40000")
