"""A stage trained by several processes under ``accelerate launch``, its caller keeping the I/O.

The caller (a Kedro node) hands over its model, pairs and image root; they are written to a
work directory, ``accelerate launch`` starts ``num_processes`` copies of this module on it, each
runs the same :func:`~povid_kedro.training.trainer.train_stage1` / ``train_stage2`` (the
transformers trainer shards the batches and averages the gradients: DDP, or DeepSpeed / FSDP from
an accelerate config), and the main process writes the merged model and the report back. The
caller loads them, so catalog outputs and MLflow records are written by one process only.

    python -m povid_kedro.training.launch WORK_DIR    # what each launched process runs
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.modeling.hf_dir import load_model_dir, save_model_dir
from povid_kedro.training.config import ProcessSettings, StageConfig
from povid_kedro.training.data import InvalidPair
from povid_kedro.training.noise import NoiseConfig
from povid_kedro.training.trainer import TrainReport, train_stage1, train_stage2

logger = logging.getLogger(__name__)

_JOB, _PAIRS, _MODEL_IN, _MODEL_OUT, _REPORT = (
    "job.json",
    "pairs.parquet",
    "model_in",
    "model_out",
    "report.json",
)


def launch_command(work_dir: Path, processes: ProcessSettings) -> list[str]:
    """The ``accelerate launch`` command line that trains the job in ``work_dir``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes.accelerate_config:
        cmd += ["--config_file", processes.accelerate_config]
    else:
        # Without a config file, --multi_gpu selects accelerate's torchrun launcher; on a machine
        # without GPUs the trainer then runs DDP over gloo (it is told use_cpu).
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += [
        "--num_processes",
        str(processes.num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(processes.main_process_port),
        "--module",
        __name__,
        str(work_dir),
    ]
    return cmd


def train_stage_processes(
    stage: str,
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    images: ImageFolder,
    cfg: StageConfig,
    noise: NoiseConfig | None,
    processes: ProcessSettings,
) -> tuple[Any, TrainReport]:
    """Train one stage with ``processes.num_processes`` processes; return what
    :func:`~povid_kedro.training.trainer.train_stage1` / ``train_stage2`` return.

    Raises:
        ValueError: If ``processes.accelerate_config`` names no file.
        RuntimeError: If the launched processes fail (the message carries the end of their log).
    """
    if processes.accelerate_config and not Path(processes.accelerate_config).is_file():
        raise ValueError(
            f"dpo_training.processes.accelerate_config: {processes.accelerate_config} does not "
            "exist (paths are relative to the project root); see conf/base/accelerate/"
        )
    with tempfile.TemporaryDirectory(prefix=f"povid-{stage}-procs-") as tmp:
        work = Path(tmp)
        save_model_dir(model, processor, work / _MODEL_IN)
        pairs.to_parquet(work / _PAIRS)
        job = {
            "stage": stage,
            "cfg": dataclasses.asdict(cfg),
            "noise": dataclasses.asdict(noise) if noise is not None else None,
            "images": str(images.root),
        }
        (work / _JOB).write_text(json.dumps(job))
        cmd = launch_command(work, processes)
        logger.info("%s: %d processes: %s", stage, processes.num_processes, " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (work / _REPORT).is_file():
            raise RuntimeError(
                f"{stage} with {processes.num_processes} processes failed (exit "
                f"{done.returncode}); the end of their log:\n{done.stderr[-4000:]}"
            )
        merged, _ = load_model_dir(work / _MODEL_OUT)
        report = _report_from_json(json.loads((work / _REPORT).read_text()))
    return merged, report


def _report_from_json(values: dict[str, Any]) -> TrainReport:
    values["invalid_pairs"] = [InvalidPair(*row) for row in values["invalid_pairs"]]
    return TrainReport(**values)


def main(work_dir: str) -> None:
    """One launched process: train the job in ``work_dir``; the main process writes the result."""
    work = Path(work_dir)
    job = json.loads((work / _JOB).read_text())
    model, processor = load_model_dir(work / _MODEL_IN)
    pairs = pd.read_parquet(work / _PAIRS)
    load_image = ImageFolder(job["images"]).open
    if job["stage"] == "stage1":
        merged, report = train_stage1(model, processor, pairs, load_image, job["cfg"])
    else:
        merged, report = train_stage2(model, processor, pairs, load_image, job["cfg"], job["noise"])
    if int(os.environ.get("RANK", "0")) == 0:
        save_model_dir(merged, processor, work / _MODEL_OUT)
        # Written last: its presence tells the caller the model directory is complete.
        (work / _REPORT).write_text(json.dumps(dataclasses.asdict(report)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1])
