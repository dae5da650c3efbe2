"""The champion gate: promote the new model only if it hallucinates less without losing POPE."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from povid_kedro.schema import GATE_CHAIR, GATE_METRICS, GATE_POPE_F1

WEIGHTS_TAG = "weights_sha256"  # the registered version's weights digest
EVAL_SET_TAGS = ("eval_set", "eval_images", "eval_pope_questions")


def champion_decision(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    max_pope_f1_drop: float,
    base: Mapping[str, float] | None = None,
) -> tuple[bool, str]:
    """Whether the candidate replaces the champion, and why.

    Args:
        candidate: The candidate's headline metrics (``chair_s``, ``pope_f1_mean``).
        champion: The current champion's, or ``None`` when there is none yet.
        max_pope_f1_drop: How far mean POPE F1 may fall below the champion's.
        base: The base model's metrics from the same evaluation: with no champion yet, the
            candidate must beat the model it was trained from (``None``: it becomes the first).

    Returns:
        ``(promote, reason)``.
    """
    if champion is None:
        if base is None:
            return True, "no champion yet: the candidate becomes the first"
        return _compare(
            candidate,
            base,
            "no champion yet; against the base model: ",
            "base model's",
            max_pope_f1_drop,
        )
    return _compare(candidate, champion, "", "champion's", max_pope_f1_drop)


def _compare(
    candidate: Mapping[str, float],
    incumbent: Mapping[str, float],
    lead: str,
    whose: str,
    max_pope_f1_drop: float,
) -> tuple[bool, str]:
    chair, best_chair = candidate[GATE_CHAIR], incumbent[GATE_CHAIR]
    f1, best_f1 = candidate[GATE_POPE_F1], incumbent[GATE_POPE_F1]
    if chair >= best_chair:
        return False, f"{lead}CHAIR_s {chair:.3f} is not lower than the {whose} {best_chair:.3f}"
    if f1 < best_f1 - max_pope_f1_drop:
        return False, (
            f"{lead}POPE F1 {f1:.3f} fell more than {max_pope_f1_drop:.3f} below the {whose} "
            f"{best_f1:.3f}"
        )
    return True, (
        f"{lead}CHAIR_s {chair:.3f} < {best_chair:.3f} and POPE F1 {f1:.3f} within "
        f"{max_pope_f1_drop:.3f} of {best_f1:.3f}"
    )


# guard -> (headline metric, kind, bound): "drop" fails when the candidate is more than `bound`
# below the base model, "ratio" when below `bound` times the base model's, "rise" when more
# than `bound` above it.
_GUARDS = {
    "max_recall_drop": ("recall", "drop"),
    "max_present_partner_recall_drop": ("present_partner_recall", "drop"),
    "min_objects_ratio": ("objects_per_image", "ratio"),
    "min_words_ratio": ("words_per_caption", "ratio"),
    "max_degenerate_rise": ("degenerate_share", "rise"),
    "max_pope_f1_drop_per_split": (
        ("pope_random_f1", "pope_popular_f1", "pope_adversarial_f1"),
        "drop",
    ),
}


def check_guard_names(guards: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming any guard that does not exist (a typo would go unchecked)."""
    unknown = sorted(set(guards) - set(_GUARDS))
    if unknown:
        raise ValueError(
            f"evaluate.gate.no_collapse: unknown guard(s) {unknown}; known: {sorted(_GUARDS)}"
        )


def collapse_failures(
    candidate: Mapping[str, float], base: Mapping[str, float], guards: Mapping[str, float]
) -> list[str]:
    """The no-collapse guards a candidate breaks against the base model it was trained from.

    A model can lower CHAIR by saying less, by breaking its text or by losing the short-answer
    skill; each guard compares one of those with the base model of the same evaluation.

    Args:
        candidate: The candidate's headline metrics.
        base: The base model's, from the same evaluation.
        guards: Guard name (see ``_GUARDS``) -> bound; a guard that is absent is not checked.

    Returns:
        One sentence per broken guard (empty: none broken).
    """
    check_guard_names(guards)
    failures = []
    for name, bound in guards.items():
        keys, kind = _GUARDS[name]
        for key in (keys,) if isinstance(keys, str) else keys:
            if key not in candidate and key not in base:
                continue  # not measured in this evaluation (e.g. no co-occurrence partners)
            if key not in candidate or key not in base:
                failures.append(f"{key} was measured for one model only ({name} needs both)")
                continue
            value, ref = float(candidate[key]), float(base[key])
            if kind == "drop" and value < ref - bound:
                failures.append(
                    f"{key} {value:.3f} is more than {bound} below the base's {ref:.3f}"
                )
            elif kind == "ratio" and value < bound * ref:
                failures.append(f"{key} {value:.3f} is below {bound} x the base's {ref:.3f}")
            elif kind == "rise" and value > ref + bound:
                failures.append(
                    f"{key} {value:.3f} is more than {bound} above the base's {ref:.3f}"
                )
    return failures


def metrics_from_tags(tags: Mapping[str, Any]) -> dict[str, float] | None:
    """The gate metrics stored on a model version's tags, if it has them."""
    try:
        return {key: float(tags[key]) for key in GATE_METRICS}
    except (KeyError, TypeError, ValueError):
        return None


def provenance_failure(
    candidate_version: int, candidate_tags: Mapping[str, Any], evaluated_digest: str
) -> str | None:
    """Why the evaluated model is not provably the registered candidate, or ``None``.

    Args:
        candidate_version: The version the candidate alias points at.
        candidate_tags: Its tags (``weights_sha256`` set at registration).
        evaluated_digest: The weights digest of the model directory that was evaluated.
    """
    registered = candidate_tags.get(WEIGHTS_TAG)
    if registered == evaluated_digest:
        return None
    what = f"weights {registered[:12]}" if registered else "no recorded weights digest"
    return (
        f"the evaluated stage-2 model (weights {evaluated_digest[:12]}) is not registry version "
        f"{candidate_version} ({what}): the model directory and the candidate alias come from "
        "different runs (e.g. a run stopped between saving and registering); rerun "
        "`kedro run --pipeline dpo_training` and then evaluate"
    )


def evaluation_set(
    captions: Sequence[Mapping[str, Any]],
    pope_answers: Mapping[str, Sequence[Mapping[str, Any]]],
    pope_questions: Mapping[str, Sequence[Mapping[str, Any]]],
    instances: Mapping[str, Any],
) -> dict[str, Any]:
    """What an evaluation measured on: a digest of the described images' ground truth and the
    answered POPE questions, with their counts (stored on the champion with its metrics).

    Args:
        captions: The described images (``image_id``).
        pope_answers: Split -> the answers given (the first ``len`` questions were asked).
        pope_questions: Split -> the questions.
        instances: COCO instances of the evaluation images.
    """
    ids = sorted({str(c["image_id"]) for c in captions})
    wanted = set(ids)
    truth = sorted(
        (str(a["image_id"]), str(a["category_id"]))
        for a in instances.get("annotations", [])
        if str(a["image_id"]) in wanted
    )
    asked = {
        split: [
            [str(q.get("image")), str(q.get("text")), str(q.get("label"))]
            for q in pope_questions[split][: len(answers)]
        ]
        for split, answers in sorted(pope_answers.items())
    }
    blob = json.dumps([ids, truth, asked], sort_keys=True).encode()
    return {
        "eval_set": hashlib.sha256(blob).hexdigest()[:16],
        "eval_images": len(ids),
        "eval_pope_questions": sum(len(q) for q in asked.values()),
    }


def evaluation_set_failure(
    champion_tags: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """Why the champion's metrics cannot be compared with this evaluation's, or ``None``."""
    recorded = {key: champion_tags.get(key) for key in EVAL_SET_TAGS}
    if recorded["eval_set"] is None:
        return (
            "the champion's metrics carry no record of the evaluation set they were measured "
            "on; move the alias by hand if the candidate should replace it"
        )
    if str(recorded["eval_set"]) == str(current["eval_set"]):
        return None
    return (
        f"the champion was measured on another evaluation set ({recorded['eval_images']} images, "
        f"{recorded['eval_pope_questions']} POPE questions, set {recorded['eval_set']}) than "
        f"this run ({current['eval_images']} images, {current['eval_pope_questions']} POPE "
        f"questions, set {current['eval_set']}); evaluate both on the same set (same "
        "evaluate.max_images / max_pope_questions and data) or move the alias by hand"
    )
