"""Kedro dataset for one alias of a registered model in the MLflow model registry."""

from __future__ import annotations

import tempfile
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from povid_kedro.evaluation.gate import WEIGHTS_TAG
from povid_kedro.modeling import save_model_dir
from povid_kedro.modeling.hf_dir import weights_digest
from povid_kedro.training.registry import log_and_register


class MlflowRegistryDataset(AbstractDataset[Any, dict[str, Any] | None]):
    """``models:/<model_name>@<alias>``.

    ``save`` takes either ``(model, processor)``, which is logged into the active run as an
    MLflow pyfunc model (``predict`` describes images), registered as a new version (tagged
    with its weights digest, ``weights_sha256``), and given the alias; or ``{"version": v,
    "tags": {...}}``, which moves the alias to an existing version and tags it (how
    ``evaluate`` promotes a champion). ``load`` returns ``{"version", "tags", "run_id"}`` of
    the version the alias points at, or ``None``.

    Args:
        model_name: Registered model name.
        alias: The alias (``candidate``, ``champion``).
        model_config: Settings of the served model (prompt, max_new_tokens, ...).
    """

    def __init__(
        self,
        model_name: str,
        alias: str,
        model_config: dict[str, Any] | None = None,
        metadata: dict | None = None,
    ) -> None:
        self._model_name = model_name
        self._alias = alias
        self._model_config = model_config or {}
        self.metadata = metadata

    def load(self) -> dict[str, Any] | None:
        try:
            version = MlflowClient().get_model_version_by_alias(self._model_name, self._alias)
        except MlflowException:
            return None
        return {
            "version": int(version.version),
            "tags": dict(version.tags),
            "run_id": version.run_id,
        }

    def save(self, data: Any) -> None:
        client = MlflowClient()
        if isinstance(data, dict):
            if data.get("version") is None:  # a gate that promoted nothing: alias unchanged
                return
            version = str(data["version"])
            client.set_registered_model_alias(self._model_name, self._alias, version)
            for key, value in data.get("tags", {}).items():
                client.set_model_version_tag(self._model_name, version, key, str(value))
            return
        if not isinstance(data, tuple) or len(data) != 2:
            raise DatasetError(
                f"MlflowRegistryDataset({self._model_name}@{self._alias}) saves (model, "
                f"processor) or {{'version', 'tags'}}, not {type(data).__name__}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            save_model_dir(*data, tmp)
            log_and_register(
                tmp,
                self._model_name,
                self._alias,
                model_config=self._model_config,
                version_tags={WEIGHTS_TAG: weights_digest(data[0])},
            )

    def _exists(self) -> bool:
        return self.load() is not None

    def _describe(self) -> dict[str, Any]:
        return {"model_name": self._model_name, "alias": self._alias}
