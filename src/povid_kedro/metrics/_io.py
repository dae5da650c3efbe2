"""File reading and CLI helpers shared by the metric commands.

Every reader raises :class:`InputError` with a message that names the file (and the line or
record), so a command can print it and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Exit status of a command whose input is missing or malformed (argparse uses it for usage too).
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """An input file or record is missing, malformed or inconsistent."""


def read_json(path: str | Path) -> Any:
    """Read one JSON document.

    Args:
        path: File to read.

    Returns:
        The decoded document.

    Raises:
        InputError: The file is missing, unreadable or not valid JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file of objects, skipping blank lines.

    Args:
        path: File to read.

    Returns:
        One dict per non-blank line, in file order.

    Raises:
        InputError: See :func:`read_jsonl_numbered`.
    """
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSON Lines file of objects, keeping each record's line number.

    Args:
        path: File to read.

    Returns:
        ``(line number, record)`` per non-blank line, in file order (lines count from 1).

    Raises:
        InputError: The file is missing or empty, a line is not valid JSON, or a line is not an
            object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    records: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise InputError(
                f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}"
            )
        records.append((lineno, record))
    if not records:
        raise InputError(f"{path}: file holds no records")
    return records


def require_keys(record: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Check that a record has every key.

    Args:
        record: The record to check.
        keys: Keys that must be present.
        where: Location used in the message, e.g. ``"answers.jsonl: line 3"``.

    Raises:
        InputError: A key is missing or the record is not a mapping.
    """
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


def require_str(record: Mapping[str, Any], key: str, where: str) -> str:
    """Return ``record[key]``, checking it is a string.

    Args:
        record: The record holding the value.
        key: The key to read.
        where: Location used in the message.

    Returns:
        The string value.

    Raises:
        InputError: The key is missing or its value is not a string.
    """
    require_keys(record, [key], where)
    value = record[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating parent folders.

    Args:
        path: Destination file.
        data: JSON-serialisable value.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_cli(
    parser: argparse.ArgumentParser,
    compute: Callable[[argparse.Namespace], tuple[dict[str, Any], dict[str, Any]]],
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, compute a metric, write the output file and a summary on stdout.

    Args:
        parser: The command's argument parser; it must define ``--output``.
        compute: Maps parsed arguments to ``(full_result, summary)``; it raises
            :class:`InputError` (or ``ValueError``) on bad input.
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, :data:`EXIT_BAD_INPUT` on bad input.
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result, summary = compute(args)
    except ValueError as exc:  # InputError included; library checks raise ValueError
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return EXIT_BAD_INPUT
    try:
        write_json(args.output, result)
    except OSError as exc:
        sys.stderr.write(f"{parser.prog}: error: {args.output}: cannot write ({exc})\n")
        return EXIT_BAD_INPUT
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
