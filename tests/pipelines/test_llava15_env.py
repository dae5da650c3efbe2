"""`kedro run --env llava15 --pipeline povid` end to end on stand-ins in the real formats (COCO,
LLaVA-Instruct, POPE files, a tiny random model of LLaVA-1.5's architecture as the pretrained
directory), with the OpenAI-compatible injector against a loopback server: the real-scale
configuration cannot rot unnoticed."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from mlflow import MlflowClient

from povid_kedro.modeling import load_model_dir
from povid_kedro.testing.chat_server import ChatServer, rewrite_quoted
from povid_kedro.testing.synthetic import hallucinate
from tests.support.kedro_project import ROOT, free_port, make_project, run_pipeline
from tests.support.llava15 import write_standins

pytestmark = pytest.mark.slow

N_TRAIN, N_EVAL, SAMPLE = 16, 8, 5
FAST = {
    "max_steps": 2,
    "batch_size": 2,
    "bf16": False,  # bf16 autocast on a CPU is slow; gradient checkpointing stays on
    "logging_steps": 1,
    "lora": {"r": 4, "alpha": 8},
}


@pytest.fixture(scope="module")
def llava15_run(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("llava15"))
    write_standins(project, N_TRAIN, N_EVAL)
    # The catalog reads CHAIR's synonym list from the package's resources, as in a checkout.
    shutil.copytree(
        ROOT / "src" / "povid_kedro" / "resources", project / "src/povid_kedro/resources"
    )
    mp = pytest.MonkeyPatch()
    mp.chdir(project)  # pretrained_path is relative to the project, as for `kedro run`
    mp.setenv("OPENAI_API_KEY", "sk-test-llava15")
    try:
        with ChatServer() as server:
            server.set_responder(rewrite_quoted(hallucinate))
            params = {
                "openai_base_url": server.base_url,
                "ingest_ground_truth": {"sample_size": None, "eval_fraction": 0.2},
                # No rate limits: at conf's tpm each request reserves its max_tokens (4 s apiece).
                "inject_hallucinations": {
                    "openai": {"model": "test-model", "rpm": None, "tpm": None}
                },
                # Two training processes (DDP over gloo) instead of its ZeRO-2 config, which
                # needs GPUs: the node launches them and keeps the I/O.
                "dpo_training": {
                    "stage1": FAST,
                    "stage2": FAST,
                    "processes": {
                        "num_processes": 2,
                        "main_process_port": free_port(),
                        "accelerate_config": None,
                    },
                },
                "evaluate": {
                    "sample_images": SAMPLE,
                    "description_generation": {"max_new_tokens": 16, "batch_size": 4},
                    "pope_generation": {"batch_size": 8},
                },
            }
            run_pipeline(project, "povid", params, env="llava15")
            yield project, server
    finally:
        mp.undo()


def test_pairs_come_from_the_openai_injector_for_both_instruction_files(llava15_run):
    project, server = llava15_run
    pairs = pd.read_parquet(project / "data/04_feature/preference_pairs.parquet")
    assert set(pairs["injector"]) == {"openai"}
    # detail_23k and complex_reasoning_77k key one image's records by the same id: both kept.
    assert pairs["task_type"].value_counts().to_dict() == {
        "description": N_TRAIN,
        "reasoning": N_TRAIN,
    }
    assert len(server.requests) == len(pairs)


def test_stages_train_the_llava15_architecture_in_one_mlflow_run_and_version(llava15_run):
    project, _ = llava15_run
    model, processor = load_model_dir(project / "data/06_models/stage2_model")
    config = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.vision_config.patch_size == 14
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.text_config.model_type == "llama"
    assert processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
    ).endswith("USER: <image>\nHi ASSISTANT:")
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("povid_kedro")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_name for run in runs] == ["povid"]  # the processes opened none
    # The launched processes' training curves, recorded by the node's process.
    assert {"stage1.loss", "stage2.loss"} <= set(runs[0].data.metrics)
    versions = client.search_model_versions("name='povid-llava-1.5-7b'")
    assert len(versions) == 1


def test_chair_on_a_seeded_sample_and_pope_on_every_question_file_row(llava15_run):
    project, _ = llava15_run
    reporting = project / "data/08_reporting"
    output = project / "data/07_model_output/stage2/captions.jsonl"
    captions = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(captions) == SAMPLE
    annotations = project / "data/01_raw/coco/annotations/instances_val2014.json"
    instances = json.loads(annotations.read_text())
    assert {c["image_id"] for c in captions} < {i["id"] for i in instances["images"]}
    pope = json.loads((reporting / "stage2/pope.json").read_text())
    for split in ("random", "popular", "adversarial"):
        counts = pope[split]
        assert counts["TP"] + counts["FP"] + counts["TN"] + counts["FN"] == 2 * N_EVAL, split
    report = (reporting / "evaluation_report.md").read_text()
    assert all(f"| {model} |" in report for model in ("base", "stage1", "stage2"))
