"""Read instruction data into one canonical ground-truth table.

Two input formats, told apart per record:

- LLaVA-Instruct (``detail_23k.json``, ``complex_reasoning_77k.json``, ...):
  ``{id, image, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, value}, ...]}``;
- POVID's published preference data: the same plus ``rejected_conversations`` of the same shape,
  whose ``gpt`` turns are the dispreferred answers.

Every (human, gpt) turn becomes one row. Records that cannot be used are never dropped
silently: each goes to the quarantine table with a reason code and a message that names the
file, the record and the fix.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from povid_kedro.config_reader import read_dataclass
from povid_kedro.ingest.images import ImageFolder, ImagePathError, ImageReadError
from povid_kedro.parallel import process_map
from povid_kedro.schema import (
    DESCRIPTION,
    GROUND_TRUTH_COLUMNS,
    IMAGE_TOKEN,
    REASONING,
    TASK_TYPES,
)

logger = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["source", "index", "id", "image", "reason", "message"]

# Reason codes, so that quarantine tables can be filtered and counted.
NOT_AN_OBJECT = "not_an_object"
MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
MISSING_IMAGE = "missing_image"
IMAGE_ESCAPES_ROOT = "image_escapes_root"
IMAGE_NOT_FOUND = "image_not_found"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_NOT_RGB = "image_not_rgb"
MALFORMED_CONVERSATION = "malformed_conversation"
MISSING_ANSWER = "missing_answer"
PROMPT_WITHOUT_IMAGE_TOKEN = "prompt_without_image_token"
# A whole input file with no record (index -1 in the quarantine table).
EMPTY_FILE = "empty_file"
REJECTED_MISMATCH = "rejected_mismatch"


@dataclass
class IngestConfig:
    """Parameters of ``ingest_ground_truth`` (``conf/base/parameters_ingest_ground_truth.yml``).

    Attributes:
        task_types: Task type per input file (by its name without suffix): ``description``,
            ``reasoning``, ``vqa`` or ``auto``. Files not listed use ``auto``.
        description_prompts: Instructions that mark a detailed-description sample (``auto``).
        sample_size: Rows to keep after stratified sampling by task type; ``None`` keeps all.
        eval_fraction: Share of images whose rows go to the evaluation split.
        seed: Seed of sampling and splitting.
        non_rgb: ``quarantine`` non-RGB images, or ``accept`` them (consumers convert to RGB).
        log_examples: How many quarantined records to log per reason.
    """

    task_types: dict[str, str] = field(default_factory=dict)
    description_prompts: list[str] = field(default_factory=list)
    sample_size: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    non_rgb: Literal["quarantine", "accept"] = "quarantine"
    log_examples: int = 5

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> IngestConfig:
        """Build and validate from the parameters mapping."""
        cfg = read_dataclass(cls, params, "ingest_ground_truth")
        for name, kind in cfg.task_types.items():
            if kind not in (*TASK_TYPES, "auto"):
                raise ValueError(
                    f"ingest_ground_truth.task_types.{name}: {kind!r} is not one of "
                    f"{[*TASK_TYPES, 'auto']}"
                )
        if not 0.0 <= cfg.eval_fraction < 1.0:
            raise ValueError("ingest_ground_truth.eval_fraction must be in [0, 1)")
        if cfg.sample_size is not None and cfg.sample_size <= 0:
            raise ValueError("ingest_ground_truth.sample_size must be positive or null")
        if cfg.non_rgb not in ("quarantine", "accept"):
            raise ValueError("ingest_ground_truth.non_rgb must be 'quarantine' or 'accept'")
        return cfg


class NoValidRecordsError(ValueError):
    """Raised when ingest finds nothing usable."""


def _normalize_prompt(text: str) -> str:
    return " ".join(text.replace(IMAGE_TOKEN, " ").split()).strip().lower()


class _Quarantine:
    """Collects rejected records with their reason."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, source: str, index: int, record: Any, reason: str, message: str) -> None:
        rec = record if isinstance(record, dict) else {}
        rec_id = rec.get("id")
        image = rec.get("image")
        self.rows.append(
            {
                "source": source,
                "index": index,
                "id": None if rec_id is None else str(rec_id),
                "image": image if isinstance(image, str) else None,
                "reason": reason,
                "message": f"{source}[{index}] (id={rec_id!r}): {message}",
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=QUARANTINE_COLUMNS).astype(
            {"source": "string", "id": "string", "image": "string", "reason": "string"}
        )


def _turns(conversation: Any) -> list[tuple[str, str]] | str:
    """(question, answer) pairs of a conversation, or an error message."""
    if not isinstance(conversation, list) or not conversation:
        return "conversations must be a non-empty list of {from, value} turns"
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(conversation), 2):
        human = conversation[i]
        gpt = conversation[i + 1] if i + 1 < len(conversation) else None
        if not isinstance(human, dict) or human.get("from") != "human":
            return f"turn {i} must be from 'human'"
        if gpt is None:
            return f"turn {i} (human) has no answer after it; add the 'gpt' turn"
        if not isinstance(gpt, dict) or gpt.get("from") != "gpt":
            return f"turn {i + 1} must be from 'gpt'"
        question, answer = human.get("value"), gpt.get("value")
        if not isinstance(question, str) or not question.strip():
            return f"turn {i} has an empty question"
        if not isinstance(answer, str) or not answer.strip():
            return f"turn {i + 1} has an empty answer"
        pairs.append((question, answer))
    return pairs


def _image_problem(
    images: ImageFolder, relpath: str, non_rgb: str, cache: dict[str, tuple[str, str] | None]
) -> tuple[str, str] | None:
    """Reason and message if the image cannot be used; results are cached per path."""
    if relpath in cache:
        return cache[relpath]
    problem: tuple[str, str] | None = None
    try:
        image = images.open(relpath)
    except ImagePathError as err:
        problem = (IMAGE_ESCAPES_ROOT, f"{err}; image paths must stay inside {images.root}")
    except ImageReadError as err:
        missing = "not found" in str(err)
        problem = (
            IMAGE_NOT_FOUND if missing else IMAGE_UNREADABLE,
            f"{err}; fix the file or the record's 'image' field",
        )
    else:
        if image.mode != "RGB" and non_rgb == "quarantine":
            problem = (
                IMAGE_NOT_RGB,
                f"image {relpath!r} is mode {image.mode}, not RGB; convert it to RGB or set "
                "ingest_ground_truth.non_rgb: accept",
            )
    cache[relpath] = problem
    return problem


def _load_file(source: str, loaded: Callable[[], Any] | Any) -> list[Any]:
    try:
        records = loaded() if callable(loaded) else loaded
    except Exception as err:
        raise ValueError(
            f"input file {source!r} is not valid JSON ({err}); fix or remove the file"
        ) from err
    if not isinstance(records, list):
        raise ValueError(
            f"input file {source!r} holds a {type(records).__name__}, expected a JSON list "
            "of LLaVA-Instruct or POVID preference records"
        )
    return records


@dataclass(frozen=True)
class _ImageCheck:
    """:func:`_image_problem` as a picklable callable, for :func:`process_map`."""

    root: Path
    non_rgb: str

    def __call__(self, relpath: str) -> tuple[str, str] | None:
        return _image_problem(ImageFolder(self.root), relpath, self.non_rgb, {})


def read_records(
    files: Mapping[str, Callable[[], Any] | Any],
    images: ImageFolder,
    cfg: IngestConfig,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse instruction files into the canonical table and the quarantine table.

    Args:
        files: Input file name (without suffix) -> its parsed JSON list, or a callable that
            loads it (as Kedro's ``PartitionedDataset`` gives).
        images: The image root that record ``image`` paths are relative to.
        cfg: Ingest parameters.

    Returns:
        ``(ground_truth, quarantine)`` with columns ``GROUND_TRUTH_COLUMNS`` and
        ``QUARANTINE_COLUMNS``.

    Raises:
        ValueError: If a file is not valid JSON or not a list of records: the whole file is
            unusable, and ingesting the other files alone would silently lose it.
    """
    description_prompts = {_normalize_prompt(p) for p in cfg.description_prompts}
    quarantine = _Quarantine()
    rows: list[dict[str, Any]] = []
    seen_ids: dict[str, str] = {}
    loaded_files = {source: _load_file(source, files[source]) for source in sorted(files)}
    # Every image a record names is decoded once, over several processes (decoding holds the
    # GIL); the records then read the verdicts in order.
    paths = sorted(
        {
            record["image"]
            for records in loaded_files.values()
            for record in records
            if isinstance(record, dict) and isinstance(record.get("image"), str)
        }
    )
    checked = process_map(_ImageCheck(images.root, cfg.non_rgb), paths)
    image_cache: dict[str, tuple[str, str] | None] = dict(zip(paths, checked, strict=True))

    for source, records in loaded_files.items():
        if not records:
            # Often a failed export next to good files: say so instead of ingesting the rest.
            message = "holds no records (an empty JSON list); fill it or remove it"
            logger.warning("input file %r %s", source, message)
            quarantine.add(source, -1, None, EMPTY_FILE, message)
            continue
        task_type = cfg.task_types.get(source, "auto")
        for index, record in enumerate(records):
            rows.extend(
                _read_one(
                    source,
                    index,
                    record,
                    task_type,
                    description_prompts,
                    images,
                    cfg,
                    quarantine,
                    seen_ids,
                    image_cache,
                )
            )

    ground_truth = pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)
    ground_truth = ground_truth.astype(
        {
            "id": "string",
            "image": "string",
            "task_type": "string",
            "prompt": "string",
            "answer": "string",
            "rejected": "string",
            "source": "string",
            "turn": "int64",
        }
    )
    return ground_truth, quarantine.frame()


def _read_one(
    source: str,
    index: int,
    record: Any,
    task_type: str,
    description_prompts: set[str],
    images: ImageFolder,
    cfg: IngestConfig,
    quarantine: _Quarantine,
    seen_ids: dict[str, str],
    image_cache: dict[str, tuple[str, str] | None],
) -> list[dict[str, Any]]:
    """Rows of one record; on any problem, quarantine it and return nothing."""

    def reject(reason: str, message: str) -> list[dict[str, Any]]:
        quarantine.add(source, index, record, reason, message)
        return []

    if not isinstance(record, dict):
        return reject(NOT_AN_OBJECT, f"record is a {type(record).__name__}, not a JSON object")
    rec_id = record.get("id")
    if rec_id is None or (isinstance(rec_id, str) and not rec_id.strip()):
        return reject(MISSING_ID, "record has no 'id'; give every record a unique id")
    rec_id = str(rec_id)
    where = f"{source}[{index}]"
    if rec_id in seen_ids and not seen_ids[rec_id].startswith(f"{source}["):
        # LLaVA-Instruct's files key records by image id, and one image has records in several
        # (detail_23k and complex_reasoning_77k): the later file's id is qualified by its name.
        rec_id = f"{source}-{rec_id}"
    if rec_id in seen_ids:
        return reject(
            DUPLICATE_ID,
            f"id {rec_id!r} was already used by {seen_ids[rec_id]}; ids must be unique",
        )
    seen_ids[rec_id] = where

    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        return reject(MISSING_IMAGE, "record has no 'image'; text-only samples are not supported")

    turns = _turns(record.get("conversations"))
    if isinstance(turns, str):
        reason = MISSING_ANSWER if "answer" in turns else MALFORMED_CONVERSATION
        return reject(reason, f"conversations: {turns}")
    if IMAGE_TOKEN not in turns[0][0]:
        return reject(
            PROMPT_WITHOUT_IMAGE_TOKEN,
            f"the first human turn has no {IMAGE_TOKEN!r} placeholder; add it where the image "
            "goes (LLaVA puts it before the question)",
        )

    rejected_answers: list[str | None] = [None] * len(turns)
    if "rejected_conversations" in record:
        rejected = _turns(record["rejected_conversations"])
        if isinstance(rejected, str):
            reason = MISSING_ANSWER if "answer" in rejected else MALFORMED_CONVERSATION
            return reject(reason, f"rejected_conversations: {rejected}")
        if len(rejected) != len(turns) or any(
            _normalize_prompt(q) != _normalize_prompt(rq)
            for (q, _), (rq, _) in zip(turns, rejected, strict=True)
        ):
            return reject(
                REJECTED_MISMATCH,
                "rejected_conversations must ask the same questions as conversations",
            )
        rejected_answers = [answer.strip() for _, answer in rejected]

    problem = _image_problem(images, image, cfg.non_rgb, image_cache)
    if problem is not None:
        return reject(*problem)

    kind = task_type
    if kind == "auto":
        kind = DESCRIPTION if _normalize_prompt(turns[0][0]) in description_prompts else REASONING
    multi = len(turns) > 1
    row_ids = [f"{rec_id}_{turn}" for turn in range(len(turns))] if multi else [rec_id]
    for turn, row_id in enumerate(row_ids):
        # Turn ids share the namespace of record ids: record "r" with two turns and another
        # record "r_1" must not both give a row "r_1" (ids key the noise and the pairs).
        if multi and row_id in seen_ids:
            return reject(
                DUPLICATE_ID,
                f"turn {turn} of this record gets the id {row_id!r}, already used by "
                f"{seen_ids[row_id]}; rename one of the two records",
            )
    for turn, row_id in enumerate(row_ids):
        seen_ids.setdefault(row_id, f"{where} (turn {turn} of record {rec_id!r})")
    rows = []
    for turn, ((question, answer), row_id) in enumerate(zip(turns, row_ids, strict=True)):
        # Each turn is trained as its own sample with the image, so every prompt carries
        # exactly one image placeholder.
        prompt = question if turn == 0 else f"{IMAGE_TOKEN}\n{question.strip()}"
        rejected_answer = rejected_answers[turn]
        rows.append(
            {
                "id": row_id,
                "image": image,
                "task_type": kind,
                "prompt": prompt,
                "answer": answer.strip(),
                "rejected": None if rejected_answer is None else rejected_answer.strip(),
                "source": source,
                "turn": turn,
            }
        )
    return rows


def sample_stratified(
    frame: pd.DataFrame, size: int | None, seed: int, by: str = "task_type"
) -> pd.DataFrame:
    """Sample ``size`` rows keeping each stratum's share (largest-remainder rounding).

    A ``size`` at or above the table's length keeps every row.
    """
    if size is None or size >= len(frame):
        if size is not None:
            logger.warning("sample_size %d >= %d valid rows: keeping all", size, len(frame))
        return frame.reset_index(drop=True)
    counts = frame[by].value_counts().sort_index()
    quotas = counts / counts.sum() * size
    alloc = np.floor(quotas).astype(int)
    remainder = size - int(alloc.sum())
    for key in (quotas - alloc).sort_values(ascending=False, kind="stable").index[:remainder]:
        alloc[key] += 1
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for key, n in alloc.items():
        positions = np.flatnonzero((frame[by] == key).to_numpy())
        keep.extend(rng.choice(positions, size=int(n), replace=False).tolist())
    return frame.iloc[sorted(keep)].reset_index(drop=True)


def split_by_image(
    frame: pd.DataFrame, eval_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into train/eval so that no image is on both sides."""
    images = np.array(sorted(frame["image"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(images)
    n_eval = math.floor(len(images) * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and len(images) > 1:
        n_eval = 1
    eval_images = set(images[:n_eval].tolist())
    is_eval = frame["image"].isin(eval_images)
    return frame[~is_eval].reset_index(drop=True), frame[is_eval].reset_index(drop=True)


def summarize_quarantine(quarantine: pd.DataFrame, log_examples: int) -> None:
    """Log the count per reason and a few example messages."""
    for reason, group in quarantine.groupby("reason", sort=True):
        logger.warning("ingest quarantined %d record(s): %s", len(group), reason)
        for message in group["message"].head(log_examples):
            logger.warning("  %s", message)


def ingest(
    files: Mapping[str, Callable[[], Any] | Any], images: ImageFolder, cfg: IngestConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Read, validate, sample and split.

    Returns:
        ``(train, eval, quarantine, counts)``.

    Raises:
        NoValidRecordsError: If no record survives validation.
    """
    ground_truth, quarantine = read_records(files, images, cfg)
    summarize_quarantine(quarantine, cfg.log_examples)
    if ground_truth.empty:
        by_reason = Counter(quarantine["reason"])
        examples = "; ".join(quarantine["message"].head(3))
        raise NoValidRecordsError(
            f"ingest_ground_truth found no valid record in {len(files)} file(s): "
            f"{len(quarantine)} quarantined ({dict(by_reason)}). "
            f"First problems: {examples or 'none'}"
            + ("" if files else " (the input folder holds no JSON file)")
        )
    sampled = sample_stratified(ground_truth, cfg.sample_size, cfg.seed)
    train, evaluation = split_by_image(sampled, cfg.eval_fraction, cfg.seed)
    counts: dict[str, float] = {
        "rows_valid": float(len(ground_truth)),
        "records_quarantined": float((quarantine["reason"] != EMPTY_FILE).sum()),
        "files_empty": float((quarantine["reason"] == EMPTY_FILE).sum()),
        "rows_sampled": float(len(sampled)),
        "rows_train": float(len(train)),
        "rows_eval": float(len(evaluation)),
        "images_train": float(train["image"].nunique()),
        "images_eval": float(evaluation["image"].nunique()),
        "rows_with_rejected": float(sampled["rejected"].notna().sum()),
    }
    for kind in TASK_TYPES:
        counts[f"rows_{kind}"] = float((sampled["task_type"] == kind).sum())
    for reason, n in Counter(quarantine["reason"]).items():
        counts[f"quarantined_{reason}"] = float(n)
    logger.info(
        "ingest: %d valid rows (%d quarantined records) -> %d sampled: %d train / %d eval rows",
        len(ground_truth),
        len(quarantine),
        len(sampled),
        len(train),
        len(evaluation),
    )
    return train, evaluation, quarantine, counts
