"""Kedro dataset that hands an OpenAI-compatible endpoint's settings (and key) to a node."""

from __future__ import annotations

import logging
import os
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from povid_kedro.hallucination.base import ClientConfig

logger = logging.getLogger(__name__)


class OpenAIClientDataset(AbstractDataset[None, ClientConfig]):
    """Load-only: the endpoint's base URL, model and API key as a :class:`ClientConfig`.

    Nodes stay pure (no environment or network access): they receive this object and pass it
    to the injector, which opens the connection. The key comes from Kedro's
    ``credentials.yml`` entry (``credentials: {api_key: ...}``) or else from the
    ``OPENAI_API_KEY`` environment variable. It never appears in ``repr``, ``_describe`` or
    logs; endpoints without auth (a local vLLM server) work without one.

    Example catalog entry::

        openai_client:
          type: povid_kedro.datasets.openai_client.OpenAIClientDataset
          base_url: https://api.openai.com/v1
          model: gpt-4o
          credentials: openai      # conf/local/credentials.yml: openai: {api_key: sk-...}

    Args:
        base_url: Endpoint base URL, ending in ``/v1``.
        model: Model name; ``None`` leaves the choice to the parameters.
        credentials: ``{"api_key": ...}`` as Kedro passes it.
        metadata: Free-form metadata (kedro-viz).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not base_url:
            raise DatasetError("OpenAIClientDataset needs a base_url")
        unknown = sorted(set(credentials or {}) - {"api_key"})
        if unknown:
            # Name the keys only, never their values.
            raise DatasetError(f"OpenAIClientDataset credentials: unknown key(s) {unknown}")
        self._base_url = base_url
        self._model = model
        self._api_key: str | None = (credentials or {}).get("api_key") or None
        self.metadata = metadata

    def load(self) -> ClientConfig:
        """The endpoint settings, key from credentials or ``OPENAI_API_KEY``."""
        key = self._api_key or os.environ.get("OPENAI_API_KEY") or None
        if self._api_key:
            source = "the catalog entry's credentials (conf/local/credentials.yml)"
        elif key:
            source = "the OPENAI_API_KEY environment variable"
        else:
            source = "nowhere (no credentials entry and no OPENAI_API_KEY)"
        if key is None:
            # Debug only: the default (rules) run loads this too and never calls the endpoint.
            logger.debug(
                "no API key for %s (credentials or OPENAI_API_KEY): requests go without one",
                self._base_url,
            )
        return ClientConfig(
            base_url=self._base_url, api_key=key, model=self._model, key_source=source
        )

    def save(self, data: None) -> None:
        """Not supported: the dataset is load-only."""
        raise DatasetError("OpenAIClientDataset is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"base_url": self._base_url, "model": self._model}
