"""Fixtures: the real parameters file, a real loopback chat server, synthetic samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from povid_kedro.experiments import deep_merge, project_parameters
from povid_kedro.testing.chat_server import ChatServer, rewrite_quoted
from povid_kedro.testing.synthetic import hallucinate, make_loader, make_samples

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(scope="session")
def base_params() -> dict[str, Any]:
    """The project's ``inject_hallucinations`` parameters, as Kedro would pass them."""
    return project_parameters()["inject_hallucinations"]


@pytest.fixture
def server() -> Iterator[ChatServer]:
    """A fresh loopback chat server answering like a cooperative model."""
    with ChatServer() as srv:
        srv.set_responder(rewrite_quoted(hallucinate))
        yield srv


@pytest.fixture
def openai_params(base_params: dict[str, Any], server: ChatServer) -> dict[str, Any]:
    """Parameters for the openai injector against the test server, with fast retries."""
    return deep_merge(
        base_params,
        {
            "injector": "openai",
            "openai": {
                "base_url": server.base_url,
                "model": "test-model",
                "concurrency": 4,
                "rpm": None,
                "tpm": None,
                "timeout": 2.0,
                "retries": 2,
                "backoff_base": 0.01,
                "backoff_max": 0.05,
                "progress": False,
                "price_per_1k_prompt_tokens": 0.001,
                "price_per_1k_completion_tokens": 0.002,
            },
        },
    )


@pytest.fixture
def samples():
    """Twelve synthetic rows (descriptions and reasoning)."""
    return make_samples(12, seed=3)


@pytest.fixture
def load_image() -> Callable[[str], Image.Image]:
    """A deterministic image per path."""
    return make_loader()
