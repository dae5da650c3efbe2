"""Model directories are replaced whole: a kill while saving leaves the previous model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import torch

from povid_kedro.datasets.hf_model import HFModelDataset
from povid_kedro.modeling.hf_dir import COMPLETE_FILE, weights_digest

# The child loads the saved model, changes its weights, and saves it again through the dataset;
# it is killed by SIGKILL once the new files are written, before they are swapped in.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import povid_kedro.modeling.hf_dir as hf_dir
    from povid_kedro.datasets.hf_model import HFModelDataset

    dataset = HFModelDataset(sys.argv[1])
    model, processor = dataset.load()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    written = hf_dir.save_model_dir

    def save_then_die(*args, **kwargs):
        written(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    hf_dir.save_model_dir = save_then_die
    dataset.save((model, processor))
    """
)


def test_a_kill_while_saving_leaves_the_previous_model(tmp_path, fresh):
    model, processor = fresh
    target = tmp_path / "06_models" / "stage2_model"
    dataset = HFModelDataset(str(target))
    dataset.save((model, processor))
    digest = weights_digest(model)
    assert json.loads((target / COMPLETE_FILE).read_text())["weights_sha256"] == digest
    assert weights_digest(dataset.load()[0]) == digest  # the same digest after a round trip

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(target)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    partial = list(target.parent.glob(".stage2_model.partial-*"))
    assert len(partial) == 1 and (partial[0] / "config.json").is_file()
    assert not (partial[0] / COMPLETE_FILE).exists()
    # The catalog path still holds the previous, complete model.
    assert dataset.exists()
    assert weights_digest(dataset.load()[0]) == digest

    # The next save replaces it whole and clears what the killed run left.
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    dataset.save((model, processor))
    assert weights_digest(dataset.load()[0]) == weights_digest(model) != digest
    assert sorted(p.name for p in target.parent.iterdir()) == ["stage2_model"]


def test_a_directory_without_weights_is_not_a_model(tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert not HFModelDataset(str(half)).exists()
