"""Kedro dataset for a large JSON document read only by the node that needs it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class LazyJSONDataset(AbstractDataset[Any, Callable[[], Any]]):
    """A JSON document loaded as a zero-argument callable that reads it (as Kedro's
    ``PartitionedDataset`` hands out partitions), so a node input that its parameters leave
    unused costs nothing: COCO's ``instances_train2017.json`` is 450 MB and is read only when
    on-policy pairs are made.

    Args:
        filepath: The ``.json`` file. Loading does not need it to exist; calling does.
    """

    # The run's missing-input check (hooks.UpstreamCheckHooks) lets it through: the node that
    # calls it says what is missing, and one that does not call it needs nothing.
    loads_without_data = True

    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Callable[[], Any]:
        path = self._filepath

        def read() -> Any:
            if not path.is_file():
                raise DatasetError(
                    f"{path} does not exist; put the document there or point the catalog at it"
                )
            with path.open(encoding="utf-8") as handle:
                return json.load(handle)

        return read

    def save(self, data: Any) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_name(self._filepath.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
