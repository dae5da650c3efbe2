"""A pipeline run before its upstream fails naming the pipeline to run first."""

from __future__ import annotations

import pytest

from povid_kedro.hooks import MissingInputsError
from tests.support.kedro_project import run_pipeline


def test_running_a_pipeline_before_its_inputs_exist_names_the_pipeline(project):
    with pytest.raises(MissingInputsError) as err:
        run_pipeline(project, "inject_hallucinations")
    message = str(err.value)
    assert "ground_truth_train: made by the ingest_ground_truth pipeline" in message
    assert "kedro run --pipeline ingest_ground_truth" in message
    assert "train_images: made by the embedded_world pipeline" in message
