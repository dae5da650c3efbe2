"""inject_hallucinations through a Kedro session against a real loopback Chat Completions
server, with the key from the environment: pairs come back, a rerun is served from the cache,
and the key is nowhere in what the run leaves behind."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from povid_kedro.testing.chat_server import ChatServer, rewrite_quoted
from povid_kedro.testing.synthetic import hallucinate
from tests.support.kedro_project import run_pipeline

pytestmark = pytest.mark.slow

SECRET = "sk-test-DO-NOT-LEAK-5f1c9e"


def test_openai_injector_through_kedro(project, monkeypatch, caplog):
    run_pipeline(project, "embedded_world")
    run_pipeline(project, "ingest_ground_truth")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with ChatServer() as server:
        server.set_responder(rewrite_quoted(hallucinate))
        params = {
            "openai_base_url": server.base_url,
            "inject_hallucinations": {
                "injector": "openai",
                "openai": {"model": "test-model", "concurrency": 16, "rpm": None, "tpm": None},
            },
        }
        run_pipeline(project, "inject_hallucinations", params)
        first = len(server.requests)
        pairs = pd.read_parquet(project / "data/04_feature/preference_pairs.parquet")
        failures = pd.read_csv(project / "data/04_feature/injection_failures.csv")
        # Every description and reasoning row becomes a pair or a failure (VQA rows are not sent).
        truth = sum(
            pd.read_parquet(project / f"data/03_primary/ground_truth_{s}.parquet")["task_type"]
            .isin(["description", "reasoning"])
            .sum()
            for s in ("train", "eval")
        )
        assert len(pairs) + len(failures) == truth
        assert len(pairs) > 0.9 * truth
        assert set(pairs["injector"]) == {"openai"}
        assert first >= len(pairs)
        assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in server.requests)

        # A second run pays for nothing: every answer comes from the on-disk cache.
        run_pipeline(project, "inject_hallucinations", params)
        assert len(server.requests) == first

    leaked = [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert leaked == []  # data/, the cache, mlflow.db and MLflow artifacts included
    assert SECRET not in caplog.text
