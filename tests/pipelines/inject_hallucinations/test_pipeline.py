"""The inject_hallucinations pipeline (rules injector) run by a Kedro runner on a filled catalog."""

from __future__ import annotations

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.experiments import project_parameters
from povid_kedro.pipelines.inject_hallucinations import create_pipeline
from povid_kedro.testing.synthetic import SCENES, make_loader, make_samples

OUTPUTS = (
    "preference_pairs",
    "injection_failures",
    "injection_metrics",
    "povid_preferences",
    "trl_preferences",
    "injection_report",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    samples = make_samples(40, seed=5)
    load = make_loader()
    folder = ImageFolderDataset(str(tmp_path_factory.mktemp("images")))
    folder.save({path: load(path) for path in samples["image"]})
    vocabulary = sorted({o for _, objects in SCENES.values() for o in objects})
    catalog = DataCatalog()
    catalog["ground_truth_train"] = MemoryDataset(samples.iloc[:30], copy_mode="assign")
    catalog["ground_truth_eval"] = MemoryDataset(samples.iloc[30:], copy_mode="assign")
    catalog["train_images"] = MemoryDataset(folder.load(), copy_mode="assign")
    catalog["object_synonyms"] = MemoryDataset("\n".join(vocabulary))
    # The rules injector uses neither the endpoint nor the cache of paid-for answers.
    catalog["openai_client"] = MemoryDataset(None)
    catalog["injection_cache"] = MemoryDataset(None)
    params = project_parameters()["inject_hallucinations"]
    assert params["injector"] == "rules"
    catalog["params:inject_hallucinations"] = MemoryDataset(params)
    for name in OUTPUTS:
        catalog[name] = MemoryDataset(copy_mode="assign")
    # Read by the export node too: a file, as in the project's catalog (the runner releases
    # an intermediate MemoryDataset once its last reader has run).
    catalog["preference_pairs"] = ParquetDataset(
        filepath=str(tmp_path_factory.mktemp("pairs") / "preference_pairs.parquet")
    )
    SequentialRunner().run(create_pipeline(), catalog)
    return samples, {name: catalog.load(name) for name in OUTPUTS}


def test_every_sample_becomes_a_pair_or_a_recorded_failure(run):
    samples, out = run
    pairs, failures = out["preference_pairs"], out["injection_failures"]
    assert sorted([*pairs["id"], *failures["id"]]) == sorted(samples["id"])
    assert len(pairs) >= 0.9 * len(samples)
    split = dict(zip(pairs["id"], pairs["split"], strict=True))
    assert {split[i] for i in samples["id"].iloc[30:] if i in split} == {"eval"}
    assert {split[i] for i in samples["id"].iloc[:30] if i in split} == {"train"}
    assert out["injection_metrics"]
    assert all(set(m) == {"value", "step"} for m in out["injection_metrics"].values())


def test_exports_pair_the_ground_truth_with_a_different_rejection(run):
    samples, out = run
    trl, pairs = out["trl_preferences"], out["preference_pairs"]
    assert {"image", "prompt", "chosen", "rejected", "id", "split", "task_type"} <= set(trl)
    assert len(trl) == len(pairs) == len(out["povid_preferences"])
    truth = dict(zip(samples["id"], samples["answer"], strict=True))
    rows = trl.to_dict("records")
    assert all(truth[r["id"]] in str(r["chosen"]) for r in rows)
    assert all(str(r["rejected"]) != str(r["chosen"]) for r in rows)
    assert any(i in out["injection_report"] for i in pairs["id"])
