"""Kedro dataset for a Hugging Face model directory (model + processor, ``save_pretrained``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from povid_kedro.modeling.hf_dir import COMPLETE_FILE, load_model_dir, save_model_dir_atomic

REFERENCE_FILE = "model_reference.json"


@dataclass(frozen=True)
class ModelReference:
    """A model that lives elsewhere (e.g. a local ``llava-hf/llava-1.5-7b-hf``): saving it
    records where it is instead of copying gigabytes of weights."""

    path: str


class HFModelDataset(AbstractDataset[Any, tuple[Any, Any]]):
    """A model directory that loads exactly like ``llava-hf/llava-1.5-7b-hf``.

    ``load`` returns ``(model, processor)`` through ``AutoModelForImageTextToText`` and
    ``AutoProcessor``, validated (image token, chat template, image token count). ``save`` takes
    ``(model, processor)`` and writes both with ``save_pretrained`` into a temporary sibling
    directory that replaces the old one only when complete (with ``povid_model.json``: the
    weights digest and the MLflow run that wrote it), or a :class:`ModelReference`, which
    writes only a pointer to the directory it names.

    Args:
        path: The directory.
        dtype: Weight dtype on load (``float32``, ``bfloat16``, ``auto``); ``None``: default.
        device: Device on load; ``None``: CPU.
    """

    def __init__(
        self,
        path: str,
        dtype: str | None = None,
        device: str | None = None,
        metadata: dict | None = None,
    ) -> None:
        self._path = Path(path)
        self._dtype = dtype
        self._device = device
        self.metadata = metadata

    def _resolved(self) -> Path:
        reference = self._path / REFERENCE_FILE
        if reference.is_file():
            return Path(json.loads(reference.read_text())["path"])
        return self._path

    def load(self) -> tuple[Any, Any]:
        return load_model_dir(self._resolved(), dtype=self._dtype, device=self._device)

    def save(self, data: Any) -> None:
        if isinstance(data, ModelReference):
            self._path.mkdir(parents=True, exist_ok=True)
            for entry in self._path.iterdir():  # a pointer replaces a saved model whole
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            (self._path / REFERENCE_FILE).write_text(
                json.dumps({"path": str(Path(data.path).resolve())})
            )
            return
        model, processor = data
        save_model_dir_atomic(model, processor, self._path, {"mlflow_run_id": _active_run_id()})

    def _exists(self) -> bool:
        # A directory this project wrote is complete only with its record (written last); one
        # from elsewhere (a downloaded checkpoint) has its config and weights.
        if (self._path / REFERENCE_FILE).is_file() or (self._path / COMPLETE_FILE).is_file():
            return True
        return (self._path / "config.json").is_file() and any(
            self._path.glob("model*.safetensors*")
        )

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "dtype": self._dtype, "device": self._device}


def _active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else None
