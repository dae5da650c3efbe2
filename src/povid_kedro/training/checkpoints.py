"""Resumable stages: which checkpoint directory belongs to which run, and what a checkpoint adds
to the transformers trainer's own (adapter, optimiser, scheduler, RNG states, trainer state).

A stage with an ``output_dir`` claims it with a fingerprint of everything that decides its result
(the stage config, the branches and noise, the training pair ids, the starting weights). A later
run with the same fingerprint resumes from the newest *complete* checkpoint; a different run is
refused, so a checkpoint is never resumed into the wrong training. The cached reference
log-probs are saved once beside the checkpoints, and each checkpoint carries the per-step
metrics recorded so far, so a resumed stage reports its whole history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

RUN_FILE = "povid_run.json"
"""The fingerprint of the run that owns a stage's ``output_dir``."""
REFERENCE_FILE = "reference_logps.pt"
"""The cached reference log-probs of the run's training pairs."""
STEPS_FILE = "povid_steps.json"
"""Per-step metrics up to a checkpoint; written last, so it marks the checkpoint complete."""

# Settings that change where and how often things are written, not what is trained.
NOT_IN_FINGERPRINT = frozenset(
    {
        "output_dir",
        "resume",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "report_to",
        "num_threads",
        "pixel_cache",
    }
)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_fingerprint(
    stage: str,
    branches: str,
    config: Mapping[str, Any],
    pair_ids: Sequence[str],
    weights_sha256: str,
) -> dict[str, Any]:
    """What decides a stage's result, as a JSON-able record with its digest under ``sha256``."""
    record = {
        "stage": stage,
        "branches": branches,
        "config": {
            k: v for k, v in sorted(config.items()) if k.split(".")[0] not in NOT_IN_FINGERPRINT
        },
        "pairs_sha256": hashlib.sha256("\n".join(pair_ids).encode()).hexdigest(),
        "n_pairs": len(pair_ids),
        "weights_sha256": weights_sha256,
    }
    record["sha256"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = [
        (int(m.group(1)), path)
        for path in directory.iterdir()
        if path.is_dir() and (m := _CHECKPOINT.match(path.name))
    ]
    return sorted(found)


def claim_output_dir(directory: Path, fingerprint: Mapping[str, Any], resume: bool) -> Path | None:
    """Make ``directory`` this run's and return the checkpoint to resume from, if any.

    Args:
        directory: The stage's ``output_dir`` (created when missing).
        fingerprint: :func:`run_fingerprint` of this run.
        resume: Resume from a checkpoint of this run (``False``: refuse a directory that holds
            checkpoints rather than overwrite them).

    Returns:
        The newest complete checkpoint, or ``None`` to start from step 0.

    Raises:
        ValueError: If the directory holds another run's checkpoints (the message names both
            fingerprints' differences and the fix), or any checkpoint while ``resume`` is off.
    """
    directory.mkdir(parents=True, exist_ok=True)
    run_file = directory / RUN_FILE
    checkpoints = _checkpoints(directory)
    if run_file.is_file():
        owner = json.loads(run_file.read_text())
        if owner.get("sha256") != fingerprint["sha256"] and not checkpoints:
            # Another run stopped before its first checkpoint: nothing to lose but its reference
            # cache, which is not this run's.
            logger.info("%s: taking over from a run that left no checkpoint", directory)
            (directory / REFERENCE_FILE).unlink(missing_ok=True)
        elif owner.get("sha256") != fingerprint["sha256"]:
            differs = sorted(
                key
                for key in set(owner) | set(fingerprint)
                if key != "sha256" and owner.get(key) != fingerprint.get(key)
            )
            raise ValueError(
                f"{directory} holds checkpoints of another {owner.get('stage')} run (it differs "
                f"in {differs}); point output_dir at a new directory, or delete this one to "
                "start over"
            )
    elif checkpoints:
        raise ValueError(
            f"{directory} holds checkpoints ({checkpoints[-1][1].name}) but no {RUN_FILE} saying "
            "which run made them; point output_dir at a new directory, or delete this one"
        )
    if checkpoints and not resume:
        raise ValueError(
            f"{directory} holds checkpoints of this run and resume is off; set resume: true to "
            "continue from the newest, or delete the directory to start over"
        )
    _write_json(run_file, dict(fingerprint))
    for step, path in reversed(checkpoints):
        if (path / STEPS_FILE).is_file():
            logger.info("resuming from %s (step %d)", path, step)
            return path
        # A kill while the trainer wrote it: it cannot be loaded, and the step is redone.
        logger.warning("removing incomplete checkpoint %s (the run was stopped while saving)", path)
        shutil.rmtree(path, ignore_errors=True)  # another process may be removing it too
    return None


def save_reference(directory: Path, reference: Mapping[str, torch.Tensor]) -> None:
    """Save the cached reference log-probs (atomically: a kill leaves none or all)."""
    _replace_atomically(
        directory / REFERENCE_FILE, lambda partial: torch.save(dict(reference), partial)
    )


def load_reference(directory: Path) -> dict[str, torch.Tensor] | None:
    """The cached reference log-probs saved by this run, or ``None``."""
    path = directory / REFERENCE_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None


def load_steps(checkpoint: Path) -> list[dict[str, float]]:
    """Per-step metrics recorded up to ``checkpoint``."""
    return [dict(row) for row in json.loads((checkpoint / STEPS_FILE).read_text())]


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` a sibling file, then rename it to ``path``: a kill leaves the old file or the
    new one. One name per process: every process of a multi-process stage writes the same."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


def _write_json(path: Path, value: Any) -> None:
    _replace_atomically(
        path, lambda partial: partial.write_text(json.dumps(value, indent=1, sort_keys=True))
    )


class StepsCheckpointer(TrainerCallback):
    """Writes the metrics recorded so far into each checkpoint, after the trainer's own files."""

    def __init__(self, steps: Callable[[], list[dict[str, float]]]) -> None:
        self._steps = steps

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            _write_json(checkpoint / STEPS_FILE, self._steps())
