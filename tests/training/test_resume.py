"""A stage killed with SIGKILL resumes from its last complete checkpoint and ends where an
uninterrupted run ends; a checkpoint directory never resumes into another run."""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from povid_kedro.modeling.hf_dir import save_model_dir
from povid_kedro.training import train_stage2
from povid_kedro.training.checkpoints import REFERENCE_FILE, RUN_FILE, STEPS_FILE
from tests.training.conftest import FAST, NOISE

# 8 training pairs in batches of 4: steps 3-6 are in later epochs, so resuming must also
# restore the data order, not only the weights and the optimiser.
RESUMABLE = {**FAST, "max_steps": 6, "batch_size": 4, "save_steps": 2, "save_total_limit": None}

# The child trains stage 2 and SIGKILLs itself: after step 3 (checkpoint-2 complete, step 3
# lost), or inside the save of checkpoint-4 (the trainer's files written, ours not yet).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    from PIL import Image
    from transformers import TrainerCallback
    from povid_kedro.modeling import load_model_dir
    from povid_kedro.training import train_stage2
    from povid_kedro.training.noise import NoiseConfig

    work, output_dir, kill_on, kill_step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if kill_on == "step_end" and state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_save(self, args, state, control, **kwargs):
            if kill_on == "save" and state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    model, processor = load_model_dir(f"{work}/model")
    pairs = pd.read_parquet(f"{work}/pairs.parquet")
    cfg = {**%(cfg)r, "output_dir": output_dir}
    train_stage2(
        model, processor, pairs, lambda p: Image.open(f"{work}/{p}").convert("RGB"), cfg,
        NoiseConfig(**%(noise)r), callbacks=[Kill()],
    )
    sys.exit(3)  # not reached: the run is killed
    """
)


@pytest.fixture()
def work(tmp_path, fresh, pairs, images):
    model, processor = fresh
    save_model_dir(model, processor, tmp_path / "model")
    pairs.to_parquet(tmp_path / "pairs.parquet")
    for name, image in images.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / name)
    return tmp_path


def _killed(work: Path, output_dir: Path, kill_on: str, step: int) -> None:
    script = CHILD % {"cfg": RESUMABLE, "noise": dataclasses.asdict(NOISE)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(work), str(output_dir), kill_on, str(step)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


@pytest.mark.parametrize(("kill_on", "step"), [("step_end", 3), ("save", 4)])
def test_a_killed_stage_resumes_and_ends_where_an_uninterrupted_one_ends(
    work, fresh, pairs, load_image, tmp_path, kill_on, step, caplog
):
    model, processor = fresh
    twin = copy.deepcopy(model)
    expected, full = train_stage2(model, processor, pairs, load_image, RESUMABLE, NOISE)

    output_dir = tmp_path / "stage2"
    _killed(work, output_dir, kill_on, step)
    assert (output_dir / RUN_FILE).is_file() and (output_dir / REFERENCE_FILE).is_file()
    if kill_on == "save":
        assert not (output_dir / f"checkpoint-{step}" / STEPS_FILE).exists()  # left incomplete

    caplog.set_level("INFO", logger="povid_kedro")
    resumed, report = train_stage2(
        twin, processor, pairs, load_image, {**RESUMABLE, "output_dir": str(output_dir)}, NOISE
    )
    # Either way the newest complete checkpoint is step 2's.
    assert f"resuming from {output_dir / 'checkpoint-2'}" in caplog.text
    assert "reference log-probs loaded" in caplog.text
    assert report.reference_seconds == 0  # not recomputed
    assert [row["step"] for row in report.step_metrics] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full.step_metrics, report.step_metrics, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    for (name, p), q in zip(
        expected.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-6), name


def test_a_checkpoint_directory_is_never_resumed_into_another_run(
    work, fresh, pairs, load_image, tmp_path
):
    model, processor = fresh
    output_dir = tmp_path / "stage2"
    _killed(work, output_dir, "step_end", 3)
    other = {**RESUMABLE, "learning_rate": 1e-2, "output_dir": str(output_dir)}
    with pytest.raises(ValueError, match=r"another stage2 run \(it differs in \['config'\]\)"):
        train_stage2(model, processor, pairs, load_image, other, NOISE)
    again = {**RESUMABLE, "output_dir": str(output_dir), "resume": False}
    with pytest.raises(ValueError, match="resume is off"):
        train_stage2(model, processor, pairs, load_image, again, NOISE)


def test_a_directory_without_checkpoints_is_taken_over_with_its_stale_reference_dropped(
    fresh, pairs, load_image, tmp_path
):
    model, processor = fresh
    output_dir = tmp_path / "stage2"
    output_dir.mkdir()
    (output_dir / RUN_FILE).write_text('{"sha256": "another run", "stage": "stage2"}')
    torch.save({"chosen_h": torch.zeros(8)}, output_dir / REFERENCE_FILE)
    cfg = {**RESUMABLE, "max_steps": 1, "save_steps": 0, "output_dir": str(output_dir)}
    _, report = train_stage2(model, processor, pairs, load_image, cfg, NOISE)
    assert report.reference_seconds > 0  # computed for this run, not loaded
    assert json.loads((output_dir / RUN_FILE).read_text())["stage"] == "stage2"
    assert json.loads((output_dir / RUN_FILE).read_text())["sha256"] != "another run"
