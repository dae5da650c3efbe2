"""Nodes of the evaluate pipeline (run once per model, under a namespace)."""

from __future__ import annotations

import logging
from typing import Any

from matplotlib.figure import Figure

from povid_kedro.evaluation import (
    answer_mmhal,
    answer_pope_splits,
    describe_images,
    report_figure,
    report_markdown,
    summary_row,
)
from povid_kedro.evaluation.gallery import ModelOutputs, gallery_html
from povid_kedro.evaluation.gate import (
    EVAL_SET_TAGS,
    champion_decision,
    collapse_failures,
    evaluation_set,
    evaluation_set_failure,
    metrics_from_tags,
    provenance_failure,
)
from povid_kedro.hallucination import ClientConfig
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.metrics.chair import Chair
from povid_kedro.metrics.cooccurrence import cooccurrence_hallucination
from povid_kedro.metrics.degenerate import DegenerateChecker
from povid_kedro.metrics.judge import judge_mmhal
from povid_kedro.metrics.mmhal import score_mmhal
from povid_kedro.metrics.pope import score_pope
from povid_kedro.modeling.hf_dir import weights_digest
from povid_kedro.schema import GATE_METRICS, POPE_SPLITS

logger = logging.getLogger(__name__)


def describe_eval_images_node(
    model: tuple[Any, Any],
    eval_images: ImageFolder,
    eval_instances: dict[str, Any],
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """Detailed descriptions of the evaluation images, for CHAIR.

    Args:
        model: ``(model, processor)``.
        eval_images: Evaluation image folder.
        eval_instances: COCO instances of the evaluation images.
        params: The ``evaluate`` parameters.

    Returns:
        ``{"image_id", "image", "caption"}`` records.
    """
    return describe_images(
        *model,
        eval_images,
        eval_instances,
        prompt=params["description_prompt"],
        generation=params["description_generation"],
        limit=params.get("max_images"),
        sample=(
            (params["sample_images"], params.get("sample_seed", 0))
            if params.get("sample_images")
            else None
        ),
    )


def answer_pope_node(
    model: tuple[Any, Any],
    eval_images: ImageFolder,
    pope_random: list[dict[str, Any]],
    pope_popular: list[dict[str, Any]],
    pope_adversarial: list[dict[str, Any]],
    params: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Answers to the three POPE splits.

    Returns:
        Split name -> ``{"question_id", "text"}`` records.
    """
    questions = dict(zip(POPE_SPLITS, (pope_random, pope_popular, pope_adversarial), strict=True))
    return answer_pope_splits(
        *model,
        eval_images,
        questions,
        template=params["pope_template"],
        generation=params["pope_generation"],
        limit=params.get("max_pope_questions"),
    )


def mmhal_node(
    model: tuple[Any, Any],
    mmhal_bench: dict[str, Any] | None,
    judge_client: ClientConfig,
    params: dict[str, Any],
) -> dict[str, Any]:
    """MMHal-Bench: answer its questions, have the judge rate them, score.

    Skipped, with a log line and the reason in the result, when the benchmark files or a judge
    model are not configured: a GPT-judged score is never made up.

    Returns:
        The MMHal-Bench result, or ``{"skipped": reason}``.
    """
    settings = params["mmhal"]
    if mmhal_bench is None:
        reason = "benchmark files not found (catalog entry mmhal_bench)"
    elif not settings.get("judge_model"):
        reason = "no judge model configured (evaluate.mmhal.judge_model)"
    else:
        reason = None
    if reason or mmhal_bench is None:
        logger.info("MMHal-Bench skipped: %s", reason)
        return {"skipped": reason}
    records = answer_mmhal(
        *model,
        mmhal_bench,
        template=settings["prompt_template"],
        generation=settings["generation"],
    )
    replies = judge_mmhal(
        records,
        judge_client,
        model=settings["judge_model"],
        temperature=settings["temperature"],
        max_tokens=settings["max_tokens"],
    )
    return score_mmhal(records, replies, records_source="mmhal_bench")


def score_node(
    captions: list[dict[str, Any]],
    pope_answers: dict[str, list[dict[str, Any]]],
    pope_random: list[dict[str, Any]],
    pope_popular: list[dict[str, Any]],
    pope_adversarial: list[dict[str, Any]],
    eval_instances: dict[str, Any],
    eval_captions: dict[str, Any],
    object_synonyms: str,
    cooccurrence_partners: dict[str, str | None],
    mmhal: dict[str, Any],
    description_grammar: dict[str, list[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """CHAIR, POPE, the co-occurrence rates and degenerate descriptions of one model.

    Args:
        description_grammar: ``{"sentence_forms": [regex, ...]}`` of the data's descriptions
            (the embedded world's); without forms only repeated words count as degenerate.

    Returns:
        The CHAIR result (overall and per caption), the POPE results per split, and the
        headline metrics (flat: MLflow metrics and the report's row).
    """
    chair = Chair(object_synonyms, eval_instances, eval_captions).score(captions)
    questions = dict(zip(POPE_SPLITS, (pope_random, pope_popular, pope_adversarial), strict=True))
    pope = {
        split: score_pope(
            questions[split][: len(pope_answers[split])],
            pope_answers[split],
            questions_source=f"pope_{split}",
            answers_source=f"pope answers ({split})",
        )
        for split in POPE_SPLITS
    }
    cooccurrence = None
    if cooccurrence_partners:
        categories = [c["name"] for c in eval_instances["categories"]]
        cooccurrence = cooccurrence_hallucination(
            chair["captions"], cooccurrence_partners, categories
        )
    else:
        logger.info("no co-occurrence partners configured: co-occurrence ratio skipped")
    forms = (description_grammar or {}).get("sentence_forms", [])
    degenerate = DegenerateChecker(forms).score(captions)
    row = summary_row(chair, pope, cooccurrence, mmhal, degenerate)
    logger.info(
        "CHAIR_s %.3f ± %.3f, CHAIR_i %.3f, recall %.3f, %.2f objects/image; POPE F1 %s",
        row["chair_s"],
        row["chair_s_se"],
        row["chair_i"],
        row["recall"],
        row["objects_per_image"],
        {s: round(pope[s]["f1"], 3) for s in POPE_SPLITS},
    )
    pope_out = {
        split: {k: v for k, v in r.items() if k != "questions"} for split, r in pope.items()
    }
    chair = {**chair, "degenerate": degenerate}
    if cooccurrence:
        chair = {**chair, "cooccurrence": cooccurrence}
    return chair, pope_out, row


def to_mlflow_metrics(row: dict[str, float]) -> dict[str, dict[str, float]]:
    """Headline metrics in kedro-mlflow's metrics-history format."""
    return {name: {"value": value, "step": 0} for name, value in row.items()}


def weights_digest_node(model: tuple[Any, Any]) -> str:
    """The evaluated model's weights digest (the gate checks it against the registry's)."""
    return weights_digest(model[0])


def evaluation_set_node(
    captions: list[dict[str, Any]],
    pope_answers: dict[str, list[dict[str, Any]]],
    pope_random: list[dict[str, Any]],
    pope_popular: list[dict[str, Any]],
    pope_adversarial: list[dict[str, Any]],
    eval_instances: dict[str, Any],
) -> dict[str, Any]:
    """What this evaluation measured on (digest and sizes), recorded with the champion."""
    questions = dict(zip(POPE_SPLITS, (pope_random, pope_popular, pope_adversarial), strict=True))
    return evaluation_set(captions, pope_answers, questions, eval_instances)


def champion_gate_node(
    stage2_summary: dict[str, float],
    base_summary: dict[str, float],
    stage2_digest: str,
    eval_set: dict[str, Any],
    candidate: dict[str, Any] | None,
    champion: dict[str, Any] | None,
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move ``champion`` to the stage-2 candidate only if it passes the gate.

    The evaluated model must be the registered candidate (same weights digest), and a
    champion's metrics count only if measured on the same evaluation set. With no champion
    yet, the candidate is held to the base model it was trained from
    (``gate.first_against_base``), so a run that made things worse names no champion. A
    candidate that breaks a no-collapse guard against its base model (``gate.no_collapse``:
    recall, objects named, words, degenerate text, POPE F1 per split) is never promoted.

    Args:
        stage2_summary: The stage-2 model's headline metrics.
        base_summary: The base model's, from the same evaluation.
        stage2_digest: The evaluated stage-2 model's weights digest.
        eval_set: The evaluation set's digest and sizes (:func:`evaluation_set_node`).
        candidate: The registry's ``candidate`` version (``version``, ``tags``).
        champion: The current ``champion`` version, or ``None``.
        params: The ``evaluate`` parameters (``gate.max_pope_f1_drop``,
            ``gate.first_against_base``, ``gate.no_collapse``).

    Returns:
        The alias update for the registry (``version`` ``None``: no alias moves), and the
        decision with its reason (for the report).
    """
    if candidate is None:
        raise ValueError(
            "no registered candidate model: run `kedro run --pipeline dpo_training` first"
        )
    metrics = {k: stage2_summary[k] for k in GATE_METRICS}
    champion_metrics = metrics_from_tags(champion["tags"]) if champion else None
    if not_same := provenance_failure(candidate["version"], candidate["tags"], stage2_digest):
        promote, reason = False, not_same
    elif champion and champion["version"] == candidate["version"]:
        promote, reason = False, f"version {candidate['version']} is already the champion"
    elif champion and champion_metrics is None:
        promote, reason = (
            False,
            (
                f"the champion (version {champion['version']}) has no recorded metrics to compare; "
                "move the alias by hand if the candidate should replace it"
            ),
        )
    elif champion and (other_set := evaluation_set_failure(champion["tags"], eval_set)):
        promote, reason = False, other_set
    elif failures := collapse_failures(
        stage2_summary, base_summary, params["gate"].get("no_collapse") or {}
    ):
        promote, reason = False, "it breaks a no-collapse guard: " + "; ".join(failures)
    else:
        gate = params["gate"]
        base = {k: base_summary[k] for k in GATE_METRICS}
        promote, reason = champion_decision(
            metrics,
            champion_metrics,
            max_pope_f1_drop=gate["max_pope_f1_drop"],
            base=base if gate.get("first_against_base", True) else None,
        )
    logger.info("champion gate: %s (%s)", "promote" if promote else "keep", reason)
    tags = {**metrics, **{key: eval_set[key] for key in EVAL_SET_TAGS}}
    update = {"version": candidate["version"] if promote else None, "tags": tags}
    decision = {
        "promoted": promote,
        "reason": reason,
        "candidate_version": candidate["version"],
        "champion_version": candidate["version"] if promote else (champion or {}).get("version"),
        "candidate_metrics": metrics,
        "previous_champion_metrics": champion_metrics,
        "evaluation_set": eval_set,
    }
    return update, decision


def gallery_node(
    eval_images: ImageFolder,
    eval_instances: dict[str, Any],
    pope_random: list[dict[str, Any]],
    pope_popular: list[dict[str, Any]],
    pope_adversarial: list[dict[str, Any]],
    params: dict[str, Any],
    **outputs: Any,
) -> str:
    """The HTML gallery of every evaluated model's descriptions on a sample of images.

    Args:
        params: The ``evaluate`` parameters (``gallery``: ``images``, ``seed``, ``image_side``).
        outputs: ``<model>__chair`` and ``<model>__pope_answers`` of each model, in order.
    """
    names = list(dict.fromkeys(key.split("__")[0] for key in outputs))
    models = [
        ModelOutputs(name, outputs[f"{name}__chair"], outputs[f"{name}__pope_answers"])
        for name in names
    ]
    questions = dict(zip(POPE_SPLITS, (pope_random, pope_popular, pope_adversarial), strict=True))
    settings = params["gallery"]
    return gallery_html(
        eval_images,
        eval_instances,
        models,
        questions,
        sample=settings["images"],
        seed=settings["seed"],
        image_side=settings["image_side"],
    )


def report_node(gate_decision: dict[str, Any], **rows: dict[str, float]) -> tuple[str, Figure]:
    """The side-by-side report of every evaluated model (markdown and a figure).

    Args:
        gate_decision: The champion gate's decision.
        rows: Model name -> its headline metrics.
    """
    verdict = "promoted to champion" if gate_decision["promoted"] else "not promoted"
    note = (
        f"Champion gate: stage-2 model (registry version {gate_decision['candidate_version']}) "
        f"{verdict}: {gate_decision['reason']}."
    )
    return report_markdown(rows, notes=[note]), report_figure(rows)
