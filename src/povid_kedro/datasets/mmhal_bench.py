"""Kedro dataset for MMHal-Bench (``response_template.json`` + its ``images/`` folder)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from povid_kedro.ingest.images import ImageFolder

logger = logging.getLogger(__name__)


class MMHalBenchDataset(AbstractDataset[None, dict[str, Any] | None]):
    """Load-only: the benchmark's records and image folder, or ``None`` when it is not there.

    MMHal-Bench is optional: without its files ``evaluate`` skips it with a log line.

    Args:
        filepath: ``response_template.json``.
        image_dir: Folder of the benchmark's images (named as the ends of ``image_src``).
    """

    def __init__(self, filepath: str, image_dir: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self._image_dir = Path(image_dir)
        self.metadata = metadata

    def load(self) -> dict[str, Any] | None:
        if not self._filepath.is_file():
            return None
        try:
            records = json.loads(self._filepath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{self._filepath} is not valid JSON: {err}") from err
        if not isinstance(records, list) or not records:
            raise DatasetError(f"{self._filepath} must be a non-empty JSON list of records")
        return {"records": records, "images": ImageFolder(self._image_dir)}

    def save(self, data: None) -> None:
        raise DatasetError("MMHalBenchDataset is read-only")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "image_dir": str(self._image_dir)}
