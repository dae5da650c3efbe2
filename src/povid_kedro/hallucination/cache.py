"""A persistent, append-only cache of API answers, safe against a run killed half-way.

One JSON object per line in ``<directory>/entries.jsonl``. Each record is written with a
single ``write`` on an ``O_APPEND`` descriptor and fsynced, so a crash loses at most the
record being written; a torn last line is skipped (with a warning) on the next load, and the
next record starts on a fresh line. Keys are sha256 digests of what determines the answer
(model, prompt version, hallucination type, sample id, image and answer hashes) — never
credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENTRIES_FILE = "entries.jsonl"


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(
    *,
    model: str,
    prompt_version: str,
    hallucination_type: str,
    sample_id: str,
    image_hash: str,
    answer_hash: str,
) -> str:
    """The cache key of one request: sha256 over its determining fields.

    Args:
        model: Model name.
        prompt_version: Version of the prompt set.
        hallucination_type: The type asked for.
        sample_id: The sample's id.
        image_hash: Hash of the image pixels.
        answer_hash: Hash of the ground-truth answer.

    Returns:
        A 64-character hex digest.
    """
    fields = [model, prompt_version, hallucination_type, sample_id, image_hash, answer_hash]
    return sha256_text(json.dumps(fields, ensure_ascii=False))


class InjectionCache:
    """Append-only JSONL cache of injection answers, keyed by :func:`cache_key`.

    Thread-safe: writes may come from a worker thread while the event loop reads.

    Args:
        directory: Folder of the cache (created if missing).
        fsync: Flush each record to disk (survives a power loss, not only a killed process).
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / ENTRIES_FILE
        self.fsync = fsync
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        self.skipped_lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = record["key"]
                except (ValueError, KeyError, TypeError):
                    # A torn record from a killed run: that sample is simply asked again.
                    self.skipped_lines += 1
                    logger.warning(
                        "injection cache %s: skipping unreadable line %d", self.path, lineno
                    )
                    continue
                self._entries[key] = record

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            size = os.fstat(fd).st_size
            if size:
                with self.path.open("rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        # Terminate a torn last line so the next record is readable.
                        os.write(fd, b"\n")
            self._fd = fd
        return self._fd

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            return dict(entry) if entry is not None else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key``, durably, before returning.

        Args:
            key: A :func:`cache_key`.
            entry: JSON-serialisable fields (the raw reply, validated text, usage, ...).
        """
        record = {"key": key, "created": time.time(), **entry}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            os.write(fd, line)
            if self.fsync:
                os.fsync(fd)
            self._entries[key] = record

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> Iterator[str]:
        """The stored keys (a snapshot)."""
        with self._lock:
            return iter(list(self._entries))

    def entries(self) -> list[dict[str, Any]]:
        """All stored entries (a snapshot), last write per key."""
        with self._lock:
            return [dict(e) for e in self._entries.values()]

    def close(self) -> None:
        """Close the file descriptor (the cache stays usable; it reopens on the next put)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __repr__(self) -> str:
        return f"InjectionCache(directory={str(self.directory)!r}, entries={len(self)})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for Kedro runners: the descriptor and lock are rebuilt on the other side.
        return {"directory": str(self.directory), "fsync": self.fsync}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], fsync=state["fsync"])  # type: ignore[misc]
