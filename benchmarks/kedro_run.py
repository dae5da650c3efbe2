"""Benchmark: the default `kedro run` end to end, with each node's time and peak memory.

Runs `kedro run` (the command `make run` runs) as a subprocess in a temporary copy of the
project's configuration, times it and takes its peak resident memory, then reads from the run's
own MLflow store what the node hook recorded (``node.<name>.seconds``,
``node.<name>.peak_rss_mb``) and reports the total against the default run's 15-minute budget
and the slowest nodes. About 19 minutes on 2 cores, so `make bench` leaves it out; run it on its
own:

    .venv/bin/python benchmarks/run.py --only kedro_run
    .venv/bin/python benchmarks/kedro_run.py [--nodes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from world_ingest import project_copy

BUDGET_S = 15 * 60.0


def node_metrics(project: Path) -> dict[str, dict[str, float]]:
    """Node name -> {seconds, peak_rss_mb}, over the MLflow runs of the project's store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    nodes: dict[str, dict[str, float]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            for key, value in run.data.metrics.items():
                if key.startswith("node.") and key.endswith((".seconds", ".peak_rss_mb")):
                    name, measure = key[len("node.") :].rsplit(".", 1)
                    nodes.setdefault(name, {})[measure] = value
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="slowest nodes to list")
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args(argv)
    kedro = Path(sys.executable).with_name("kedro")
    with tempfile.TemporaryDirectory() as tmp:
        project = project_copy(Path(tmp))
        start = time.perf_counter()
        done = subprocess.run(
            [str(kedro), "run"],
            cwd=project,
            env=os.environ.copy(),
            capture_output=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        # ru_maxrss of the children: the kedro process (kB on Linux).
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode(errors="replace")[-3000:])
            return done.returncode
        nodes = node_metrics(project)
    slowest = sorted(nodes.items(), key=lambda item: -item[1].get("seconds", 0.0))
    node_seconds = sum(values.get("seconds", 0.0) for values in nodes.values())
    print(  # noqa: T201
        f"kedro run: {seconds:.0f} s ({seconds / BUDGET_S:.2f} of the {BUDGET_S / 60:.0f}-minute "
        f"budget), peak memory {peak_gib:.2f} GiB; node time {node_seconds:.0f} s"
    )
    for name, values in slowest[: args.nodes]:
        print(f"  {name:45s} {values['seconds']:7.1f} s {values['peak_rss_mb']:7.0f} MiB")  # noqa: T201
    if args.json:
        rows = [
            {
                "measure": "`kedro run` (every pipeline, the default world): budget / measured",
                "result": f"{seconds:.0f} s (budget {BUDGET_S:.0f} s), peak memory "
                f"{peak_gib:.2f} GiB, {len(nodes)} nodes",
                "ratio": BUDGET_S / seconds,
            }
        ]
        rows += [
            {
                "measure": f"`kedro run`: node `{name}`",
                "result": f"{values['seconds']:.1f} s, peak memory {values['peak_rss_mb']:.0f} MiB",
                "ratio": None,
            }
            for name, values in slowest[: args.nodes]
        ]
        args.json.write_text(json.dumps({"threads": None, "rows": rows}, indent=2))
    return 0 if seconds <= BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
