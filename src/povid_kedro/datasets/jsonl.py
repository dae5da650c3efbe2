"""Kedro dataset for JSON Lines files (POPE question files, captions, answers)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class JSONLinesDataset(AbstractDataset[list[dict], list[dict]]):
    """One JSON object per line; loads and saves a list of dicts.

    A line that is not valid JSON fails the load with the file and line number.

    Args:
        filepath: The ``.jsonl`` (or POPE's ``.json``) file.
    """

    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> list[dict]:
        if not self._filepath.is_file():
            raise DatasetError(f"{self._filepath} does not exist")
        records = []
        with self._filepath.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(
                        f"{self._filepath}:{lineno}: not valid JSON ({err.msg}); "
                        "each line must be one JSON object"
                    ) from err
        return records

    def save(self, data: list[dict]) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_name(self._filepath.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in data:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
