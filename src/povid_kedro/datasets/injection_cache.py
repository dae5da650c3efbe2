"""Kedro dataset that opens the hallucination injector's on-disk answer cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from povid_kedro.hallucination.cache import InjectionCache


class InjectionCacheDataset(AbstractDataset[InjectionCache, InjectionCache]):
    """The injector's answer cache, as a node input.

    ``load`` opens (creating if missing) the cache folder and returns the
    :class:`~povid_kedro.hallucination.cache.InjectionCache`; the injector writes to it
    record by record while it runs, so a killed run keeps what it paid for.

    ``save`` accepts only the cache object of this same folder and just closes its file
    (records are already durable): a node may list the cache as an output to make the
    dependency visible in kedro-viz, but nothing else can be saved here.

    Example catalog entry::

        injection_cache:
          type: povid_kedro.datasets.injection_cache.InjectionCacheDataset
          filepath: data/02_intermediate/injection_cache

    Args:
        filepath: The cache folder.
        fsync: Flush every record to disk (default); off trades durability for speed.
        metadata: Free-form metadata (kedro-viz).
    """

    def __init__(
        self, filepath: str, fsync: bool = True, metadata: dict[str, Any] | None = None
    ) -> None:
        self._filepath = Path(filepath)
        self._fsync = fsync
        self.metadata = metadata

    def load(self) -> InjectionCache:
        """Open the cache (the folder is created when missing)."""
        return InjectionCache(self._filepath, fsync=self._fsync)

    def save(self, data: InjectionCache) -> None:
        """Close the cache's file; anything but this folder's cache is an error."""
        if not isinstance(data, InjectionCache):
            raise DatasetError(
                f"InjectionCacheDataset({self._filepath}) is written by the injector; "
                f"save accepts only its InjectionCache, not {type(data).__name__}"
            )
        if data.directory.resolve() != self._filepath.resolve():
            raise DatasetError(
                f"InjectionCacheDataset({self._filepath}) cannot save the cache of {data.directory}"
            )
        data.close()

    def _exists(self) -> bool:
        return self._filepath.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "fsync": self._fsync}
