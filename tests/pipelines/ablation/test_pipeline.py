"""The ablation pipeline run by a Kedro runner on a catalog filled here: a small embedded world,
a tiny LLaVA as the base model, every kind of row (SFT-only, stage 2 alone with free answers
under noise, full POVID, on-policy pairs, a swept noise step) over two seeds."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.evaluation.ablation import ablation_rows, row_policy
from povid_kedro.experiments import deep_merge, project_parameters
from povid_kedro.modeling import (
    TokenizerConfig,
    build_model_and_processor,
    train_tokenizer,
)
from povid_kedro.pipelines.ablation import create_pipeline
from povid_kedro.schema import DESCRIPTION
from povid_kedro.world import WorldConfig, generate_world
from tests.support.tiny import TINY_WORLD_MODEL, KeptDataset
from tests.training.conftest import FAST

SEEDS = [0, 1]
N_VAL = 3
ROWS = {
    "sft_only": {
        "stage1": {"hallucination_weight": 0},
        "stage2": {"hallucination_weight": 0, "noise_weight": 0},
    },
    "noise_only_generated": {
        "stages": [2],
        "stage2": {"hallucination_weight": 0},
        "noise": {"mode": "generated"},
    },
    "povid": {},
    # On-policy pairs in both stages: stage 2's sampled from the stage-1 model.
    "on_policy": {
        "on_policy": {
            "stages": [1, 2],
            "samples_per_image": 16,
            "temperature": 1.5,
            "max_new_tokens": 24,
        }
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    params = deep_merge(
        project_parameters()["embedded_world"], {"n_train_images": 8, "n_eval_images": 2}
    )
    world = generate_world(WorldConfig.from_dict(params))
    folder = ImageFolderDataset(str(tmp_path_factory.mktemp("ablation") / "train2014"))
    folder.save(world.train_images)
    prompt = project_parameters()["evaluate"]["description_prompt"]
    chosen = {r["image"]: r["conversations"][1]["value"] for r in world.instructions["detail"]}
    pairs = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(len(chosen))],
            "image": list(chosen),
            "task_type": DESCRIPTION,
            "prompt": prompt,
            "chosen": list(chosen.values()),
            "rejected": [c + " There is a frisbee beside the dog." for c in chosen.values()],
            "split": "train",
        }
    )
    evaluate = project_parameters()["evaluate"]
    tokenizer = train_tokenizer(
        [*chosen.values(), *pairs["rejected"], prompt, evaluate["pope_template"]],
        TokenizerConfig(vocab_size=400, min_frequency=1),
    )
    sources = {
        "train_instances": lambda: world.train_instances,
        "object_synonyms": world.synonyms,
        "cooccurrence_partners": world.meta["partners"],
        # The untrained model writes no sentence of the world's grammar: only repeats count.
        "description_grammar": {"sentence_forms": []},
    }
    model = build_model_and_processor(TINY_WORLD_MODEL, tokenizer)
    return params, folder.load(), pairs, model, sources


def _params(world_params):
    fast = {**FAST, "max_steps": 2, "batch_size": 4}
    dpo = project_parameters()["dpo_training"]
    for stage in ("stage1", "stage2"):
        dpo[stage] = {**dpo[stage], **fast, "lora": {**dpo[stage]["lora"], **FAST["lora"]}}
    evaluate = project_parameters()["evaluate"]
    evaluate["description_generation"] = {
        **evaluate["description_generation"],
        "max_new_tokens": 16,
    }
    noise = project_parameters()["noise_trigger"]
    noise["generate"] = {**noise["generate"], "max_new_tokens": 8}
    ablation = {
        "seeds": SEEDS,
        "validation_images": N_VAL,
        "pope_questions": 2,
        "noise_steps": [200],
        "rows": ROWS,
    }
    return {
        "params:embedded_world": world_params,
        "params:ablation": ablation,
        "params:dpo_training": dpo,
        "params:noise_trigger": noise,
        "params:evaluate": evaluate,
        "params:on_policy": project_parameters()["on_policy"],
    }


@pytest.fixture(scope="module")
def ablated(world, tmp_path_factory):
    world_params, images, pairs, model, sources = world
    before = {k: v.clone() for k, v in model[0].state_dict().items()}
    catalog = DataCatalog()
    inputs = {
        "base_model": model,
        "trl_preferences": pairs,
        "train_images": images,
        **sources,
        **_params(world_params),
    }
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    catalog["ablation_validation_images"] = ImageFolderDataset(
        str(tmp_path_factory.mktemp("val") / "images")
    )
    for name in ("ablation_validation_truth", "ablation_results", "ablation_metrics"):
        catalog[name] = KeptDataset(copy_mode="assign")
    for name in ("ablation_table", "ablation_report", "on_policy_sources"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog, world, before


def test_every_row_is_trained_for_every_seed_and_scored_on_the_validation_split(ablated):
    catalog, (world_params, *_), _ = ablated
    results = catalog.load("ablation_results")
    assert list(results["rows"]) == [*ROWS, "povid_k200"]
    for row in results["rows"].values():
        assert [run["seed"] for run in row["runs"]] == SEEDS
        for run in row["runs"]:
            assert {"chair_s", "recall", "cooc_partner_rate", "pope_random_f1"} <= set(
                run["metrics"]
            )
    assert results["rows"]["noise_only_generated"]["stages"] == [2]
    assert results["rows"]["povid_k200"]["overrides"] == {"noise": {"step": 200}}
    assert results["rows"]["on_policy"]["overrides"] == ROWS["on_policy"]
    # The validation split: its own scenes, none of the evaluation split's.
    truth = catalog.load("ablation_validation_truth")
    assert len(truth["instances"]["images"]) == N_VAL
    evaluation = generate_world(WorldConfig.from_dict(world_params))
    val_images = catalog.load("ablation_validation_images")
    first = sorted(evaluation.eval_images)[0]
    assert val_images.open(first).tobytes() != evaluation.eval_images[first].tobytes()


def test_rows_start_from_the_base_model_which_stays_untouched(ablated):
    catalog, (_, _, _, model, _), before = ablated
    after = model[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_table_report_and_mlflow_metrics_carry_every_row_with_its_spread(ablated):
    catalog = ablated[0]
    results = catalog.load("ablation_results")
    table = catalog.load("ablation_table").set_index("row")
    assert list(table.index) == ["base", *ROWS, "povid_k200"]
    values = [run["metrics"]["chair_s"] for run in results["rows"]["povid"]["runs"]]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert table.loc["povid", "chair_s"] == pytest.approx(mean)
    assert table.loc["povid", "chair_s_se"] == pytest.approx(std / len(values) ** 0.5)
    # The base model is one run: its standard error is its images' sampling error.
    assert table.loc["base", "chair_s_se"] == pytest.approx(results["base"]["chair_s_se"])
    report = catalog.load("ablation_report")
    for row in ("base", *ROWS, "povid_k200"):
        assert f"| {row} |" in report
    assert f"{mean:.3f} ± {std:.3f}" in report
    # The base model is one run: no spread over seeds is claimed for it.
    base_line = next(line for line in report.splitlines() if line.startswith("| base | –"))
    assert "±" not in base_line
    metrics = catalog.load("ablation_metrics")
    assert [p["step"] for p in metrics["povid.chair_s"]] == SEEDS
    assert metrics["base.chair_s"] == [{"step": 0, "value": results["base"]["chair_s"]}]


@pytest.mark.parametrize(
    ("rows", "steps", "message"),
    [
        ({"x": {"stage3": {}}}, (), r"ablation.rows.x: unknown keys \['stage3'\]"),
        ({"x": {"stages": [2, 1]}}, (), r"ablation.rows.x.stages"),
        ({"povid_k250": {}}, (250,), r"\['povid_k250'\] are named twice"),
        ({"base": {}}, (), r"\['base'\] are named twice"),
    ],
)
def test_a_bad_row_names_the_row_and_the_fix(rows, steps, message):
    with pytest.raises(ValueError, match=message):
        ablation_rows(rows, steps)


def test_only_runs_the_named_rows_in_their_order_and_refuses_unknown_names():
    rows = ablation_rows(ROWS, (200,), only=["povid_k200", "sft_only"])
    assert [row.name for row in rows] == ["sft_only", "povid_k200"]
    with pytest.raises(ValueError, match=r"names no row \['povid_k999'\]"):
        ablation_rows(ROWS, (200,), only=["povid_k999"])


def test_rows_train_on_the_pairs_the_run_trains_on():
    made = lambda model, pairs, cfg: pairs  # noqa: E731  the pair maker is not called here
    plain = ablation_rows({"povid": {}, "op": {"on_policy": {"target": "partner"}}})
    run_off = ({"enabled": False, "stages": [1]}, made)
    run_on = ({"enabled": True, "stages": [1, 2], "seed": 7}, made)
    off_row = ablation_rows({"injected": {"on_policy": {"enabled": False}}})[0]
    # The run's parameters off: only a row that names on_policy samples.
    assert row_policy(plain[0], 3, run_off) is None
    named = row_policy(plain[1], 3, run_off)
    assert (named.enabled, named.target, named.stages, named.seed) == (True, "partner", (1,), 3)
    # On: every row samples as the run does (with the row-seed's seed), unless it turns it off.
    follows = row_policy(plain[0], 3, run_on)
    assert (follows.stages, follows.seed) == ((1, 2), 3)
    assert row_policy(off_row, 3, run_on) is None
    with pytest.raises(ValueError, match="names on_policy, but no pair maker"):
        row_policy(plain[1], 0, None)
