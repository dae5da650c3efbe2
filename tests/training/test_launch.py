"""Multi-process training: the launch command, and a failed launch reported with its log."""

from __future__ import annotations

import pytest
from accelerate.utils import DistributedType

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.training.config import ProcessSettings, StageConfig
from povid_kedro.training.launch import launch_command, train_stage_processes
from povid_kedro.training.trainer import _require_launched_type


def test_the_command_is_accelerate_launch_of_this_module(tmp_path):
    ddp = launch_command(tmp_path, ProcessSettings(num_processes=4, main_process_port=29555))
    assert ddp[1:3] == ["-m", "accelerate.commands.launch"]
    assert ["--num_processes", "4"] == ddp[ddp.index("--num_processes") :][:2]
    assert ddp[-3:] == ["--module", "povid_kedro.training.launch", str(tmp_path)]
    zero2 = launch_command(
        tmp_path, ProcessSettings(num_processes=2, accelerate_config="conf/base/accelerate/x.yaml")
    )
    assert "--config_file" in zero2 and "--multi_gpu" not in zero2


def test_fewer_than_one_process_is_refused():
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        ProcessSettings.from_dict({"num_processes": 0})


def test_a_missing_accelerate_config_is_named_before_anything_starts(fresh, pairs, tmp_path):
    model, processor = fresh
    settings = ProcessSettings(num_processes=2, accelerate_config=str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=r"processes.accelerate_config: .*missing\.yaml does not"):
        train_stage_processes(
            "stage1", model, processor, pairs, ImageFolder(tmp_path), StageConfig(), None, settings
        )


def test_a_failed_launch_raises_with_the_end_of_the_processes_log(fresh, pairs, tmp_path):
    model, processor = fresh
    config = tmp_path / "broken.yaml"
    config.write_text("distributed_type: NO_SUCH_TYPE\nnum_processes: 2\n")
    settings = ProcessSettings(num_processes=2, accelerate_config=str(config))
    with pytest.raises(RuntimeError, match=r"(?s)stage1 with 2 processes failed .*NO_SUCH_TYPE"):
        train_stage_processes(
            "stage1", model, processor, pairs, ImageFolder(tmp_path), StageConfig(), None, settings
        )


@pytest.mark.parametrize("asked", ["DEEPSPEED", "FSDP"])
def test_deepspeed_or_fsdp_asked_and_not_set_up_is_refused(monkeypatch, asked):
    # What accelerate does on CPUs: use_cpu turns either into DDP (MULTI_CPU) without a word.
    monkeypatch.setenv(f"ACCELERATE_USE_{asked}", "true")
    with pytest.raises(RuntimeError, match=f"asks for {asked}, but accelerate set up MULTI_CPU"):
        _require_launched_type(DistributedType.MULTI_CPU)
    _require_launched_type(DistributedType(asked))
