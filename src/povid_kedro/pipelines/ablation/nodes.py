"""Nodes of the ablation pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from povid_kedro.evaluation.ablation import (
    ablation_markdown,
    ablation_mlflow_metrics,
    ablation_rows,
    run_ablation,
    summarise,
)
from povid_kedro.hallucination.onpolicy import PairSources
from povid_kedro.ingest.images import EncodedImages, ImageFolder
from povid_kedro.params import deep_merge
from povid_kedro.pipelines.evaluate.nodes import (
    answer_pope_node,
    describe_eval_images_node,
    score_node,
)
from povid_kedro.training.noise import noise_fields
from povid_kedro.world import WorldConfig, generate_world, validation_config

logger = logging.getLogger(__name__)


def validation_split_node(
    world_params: dict[str, Any], params: dict[str, Any]
) -> tuple[EncodedImages, dict[str, Any]]:
    """The validation split: evaluation scenes of the world's validation seed, sharing no scene
    with the evaluation split (which the ablation never reads).

    Args:
        world_params: The ``embedded_world`` parameters.
        params: The ``ablation`` parameters (``validation_images``).

    Returns:
        File name -> image, and the split's truth: COCO instances and captions, synonyms, POPE
        questions per split, co-occurrence partners and the descriptions' sentence forms.
    """
    cfg = validation_config(WorldConfig.from_dict(world_params), params["validation_images"])
    world = generate_world(cfg)
    truth = {
        "instances": world.instances,
        "captions": world.captions,
        "synonyms": world.synonyms,
        "pope": world.pope,
        "partners": world.meta["partners"],
        "sentence_forms": world.description_grammar,
    }
    return world.eval_images, truth


def score_on_split(
    model: tuple[Any, Any],
    images: ImageFolder,
    truth: dict[str, Any],
    evaluate_params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    """One model on a split made by :func:`validation_split_node`, through the evaluate
    pipeline's own node functions.

    Returns:
        The CHAIR result (with the degenerate descriptions) and the headline metrics row.
    """
    pope = truth["pope"]
    splits = (pope["random"], pope["popular"], pope["adversarial"])
    captions = describe_eval_images_node(model, images, truth["instances"], evaluate_params)
    answers = answer_pope_node(model, images, *splits, evaluate_params)
    chair, _, row = score_node(
        captions,
        answers,
        *splits,
        truth["instances"],
        truth["captions"],
        truth["synonyms"],
        truth["partners"],
        {"skipped": "not run on the validation split"},
        {"sentence_forms": truth["sentence_forms"]},
    )
    return chair, row


def run_ablation_node(
    base_model: tuple[Any, Any],
    trl_preferences: pd.DataFrame,
    train_images: ImageFolder,
    validation_images: ImageFolder,
    validation_truth: dict[str, Any],
    params: dict[str, Any],
    dpo_params: dict[str, Any],
    noise_params: dict[str, Any],
    evaluate_params: dict[str, Any],
    on_policy_params: dict[str, Any],
    on_policy_sources: PairSources,
) -> tuple[dict[str, Any], dict[str, list[dict[str, float]]]]:
    """Train every ablation row for every seed from the base model and score it with the
    evaluate pipeline's node functions on the validation split.

    Returns:
        The raw results (every run's headline metrics) and their MLflow metric histories.
    """
    evaluate = deep_merge(evaluate_params, {"max_images": None})
    if params.get("pope_questions"):
        evaluate["max_pope_questions"] = params["pope_questions"]

    def score(model: tuple[Any, Any]) -> dict[str, float]:
        return score_on_split(model, validation_images, validation_truth, evaluate)[1]

    rows = ablation_rows(params["rows"], params.get("noise_steps") or (), params.get("only"))
    logger.info(
        "ablation: %d rows x %d seeds on %d validation images",
        len(rows),
        len(params["seeds"]),
        len(validation_truth["instances"]["images"]),
    )
    results = run_ablation(
        base_model,
        trl_preferences,
        train_images.open,
        score,
        rows,
        params["seeds"],
        dpo_params,
        noise_fields(noise_params),
        (on_policy_params, lambda model, pairs, cfg: on_policy_sources(model, pairs, cfg)[0]),
    )
    return results, ablation_mlflow_metrics(results)


def ablation_report_node(results: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """The ablation table (mean, spread and standard errors per row) and its markdown report."""
    table = summarise(results)
    seeds = ", ".join(str(s) for s in results["seeds"])
    notes = [
        f"Each row trained from the same base model with DPO seeds {seeds}; cells are mean ± "
        "std over seeds (the base model is one run). Scored on the validation split with the "
        "evaluate pipeline's metrics.",
    ]
    return table, ablation_markdown(table, notes)
