"""Shared test set-up: offline, no telemetry, no writes outside temp dirs."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the project in a temp dir, used as the working directory."""
    from tests.support.kedro_project import make_project

    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)
