"""Fixtures for the metric tests: running a metric command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def run_module() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Return a function running ``python -m <module> <args>`` and capturing its output."""

    def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        # The tests must also pass before the package is pip-installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    return run
