"""The evaluate pipeline run by a Kedro runner on a catalog filled here: a small embedded world,
one tiny LLaVA evaluated under the three model namespaces, the report and the champion gate.
The registry round trip itself is covered by the session test."""

from __future__ import annotations

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from povid_kedro.datasets.image_folder import ImageFolderDataset
from povid_kedro.evaluation.gate import WEIGHTS_TAG
from povid_kedro.experiments import deep_merge, project_parameters
from povid_kedro.modeling import (
    SFTRow,
    TokenizerConfig,
    TrainConfig,
    build_model_and_processor,
    train_sft,
    train_tokenizer,
)
from povid_kedro.modeling.generate import generate
from povid_kedro.modeling.hf_dir import weights_digest
from povid_kedro.pipelines.evaluate import create_pipeline
from povid_kedro.pipelines.evaluate.pipeline import MODELS
from povid_kedro.world import WorldConfig, generate_world
from tests.support.tiny import TINY_WORLD_MODEL, KeptDataset

N_IMAGES = 6
PROMPT = project_parameters()["evaluate"]["description_prompt"]
N_QUESTIONS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    params = deep_merge(
        project_parameters()["embedded_world"], {"n_train_images": 4, "n_eval_images": N_IMAGES}
    )
    world = generate_world(WorldConfig.from_dict(params))
    folder = ImageFolderDataset(str(tmp_path_factory.mktemp("eval") / "val2014"))
    folder.save(world.eval_images)
    texts = [t["value"] for r in world.instructions["detail"] for t in r["conversations"]] + [
        c["caption"] for c in world.captions["annotations"]
    ]
    evaluate = project_parameters()["evaluate"]
    tokenizer = train_tokenizer(
        [*texts, evaluate["description_prompt"], evaluate["pope_template"]],
        TokenizerConfig(vocab_size=400, min_frequency=1),
    )
    model, processor = build_model_and_processor(TINY_WORLD_MODEL, tokenizer)
    # A few steps on the training descriptions, so the model says something to score.
    rows = [
        SFTRow(
            image=world.train_images[r["image"]],
            prompt=PROMPT,
            answer=r["conversations"][1]["value"],
        )
        for r in world.instructions["detail"]
    ]
    cfg = TrainConfig(steps=150, batch_size=4, lr=1e-2, text_warmup_steps=0, num_threads=1)
    train_sft(model, processor, rows, cfg, progress=False)
    return world, folder.load(), (model, processor)


def _run(world, candidate_digest=None, champion=None):
    world, images, model = world
    params = project_parameters()["evaluate"]
    params = {
        **params,
        "max_images": N_IMAGES,
        "max_pope_questions": N_QUESTIONS,
        "description_generation": {**params["description_generation"], "max_new_tokens": 32},
    }
    digest = candidate_digest or weights_digest(model[0])
    catalog = DataCatalog()
    inputs = {
        "eval_images": images,
        "eval_instances": world.instances,
        "eval_captions": world.captions,
        "object_synonyms": world.synonyms,
        **{f"pope_{split}": questions for split, questions in world.pope.items()},
        "cooccurrence_partners": world.meta["partners"],
        "description_grammar": {"sentence_forms": world.description_grammar},
        "mmhal_bench": None,
        "judge_client": None,
        "stage2_candidate": {"version": 3, "tags": {WEIGHTS_TAG: digest}},
        "champion": champion,
        "params:evaluate": params,
        # The same weights under every namespace: the base model is its own candidate.
        **{entry: model for entry in MODELS.values()},
    }
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    for name in create_pipeline().all_outputs():
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


@pytest.fixture(scope="module")
def evaluated(world):
    return _run(world)


def test_every_model_is_scored_on_the_same_images_and_questions(evaluated):
    summaries = {ns: evaluated.load(f"{ns}.summary") for ns in MODELS}
    for ns in MODELS:
        assert len(evaluated.load(f"{ns}.captions")) == N_IMAGES
        answers = evaluated.load(f"{ns}.pope_answers")
        assert {split: len(a) for split, a in answers.items()} == dict.fromkeys(
            ("random", "popular", "adversarial"), N_QUESTIONS
        )
        assert {"chair_s", "chair_i", "recall", "pope_f1_mean"} <= summaries[ns].keys()
        metrics = evaluated.load(f"{ns}.metrics")
        assert metrics["chair_s"] == {"value": summaries[ns]["chair_s"], "step": 0}
    assert summaries["base"]["objects_per_image"] > 0  # CHAIR measured on named objects
    # Greedy decoding of the same weights: the same numbers in every namespace.
    assert summaries["base"] == summaries["stage1"] == summaries["stage2"]
    mmhal = evaluated.load("stage2.mmhal")
    assert "benchmark files not found" in mmhal["skipped"]


def test_pope_asks_a_question_shared_by_splits_once_without_changing_its_answer(world, evaluated):
    world, images, (model, processor) = world
    params = project_parameters()["evaluate"]
    firsts = {split: questions[:N_QUESTIONS] for split, questions in world.pope.items()}
    asked = {(q["image"], q["text"]) for questions in firsts.values() for q in questions}
    assert len(asked) < 3 * N_QUESTIONS  # the splits do share questions
    answers = evaluated.load("base.pope_answers")
    for split, questions in firsts.items():
        # Each question alone, in file order, its image opened for it: the plain path.
        alone = generate(
            model,
            processor,
            [images.open(q["image"]).convert("RGB") for q in questions],
            [params["pope_template"].format(question=q["text"]) for q in questions],
            **{**params["pope_generation"], "progress": False},
        )
        assert [a["text"] for a in answers[split]] == alone
        assert [a["question_id"] for a in answers[split]] == [q["question_id"] for q in questions]


def test_a_candidate_no_better_than_its_base_is_not_promoted(evaluated):
    decision = evaluated.load("gate_decision")
    assert decision["promoted"] is False and decision["candidate_version"] == 3
    assert "is not lower than the base model's" in decision["reason"]
    assert evaluated.load("champion_update")["version"] is None  # no alias moves
    assert decision["evaluation_set"]["eval_images"] == N_IMAGES
    report = evaluated.load("evaluation_report")
    for ns in MODELS:
        assert f"| {ns} " in report
    assert "not promoted" in report and decision["reason"] in report


def test_the_gallery_shows_every_model_on_the_evaluated_images(evaluated):
    page = evaluated.load("evaluation_gallery")
    shown = min(N_IMAGES, project_parameters()["evaluate"]["gallery"]["images"])
    assert page.count('<section class="item"') == shown
    assert page.count("data:image/png;base64,") == shown
    for ns in MODELS:
        assert page.count(f"<h3>{ns}</h3>") == shown


def test_a_candidate_whose_weights_are_not_the_evaluated_ones_is_refused(world):
    catalog = _run(world, candidate_digest="0" * 64)
    decision = catalog.load("gate_decision")
    assert decision["promoted"] is False
    assert "is not registry version 3" in decision["reason"]
