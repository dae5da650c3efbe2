"""Preference pairs from the model's own sampled descriptions (on-policy), scored against truth.

Ground truth against a rewrite of it is a pair of two answers the model never writes; OPA-DPO
(arXiv 2501.09695) found such off-policy pairs weak. Here each training image is described
``k`` times by the model being trained, each description is scored with CHAIR against the
image's annotated objects, and the pair is (least hallucinated, most hallucinated) under one
condition that keeps DPO from learning to say less: the chosen answer names at least as many
true objects as the rejected one.

With ``target: partner`` the pair is about the co-occurrence partners of the image's objects
instead: chosen names the partners that are present and not those that are absent more often
than rejected does. Pairs come from both directions (an absent partner named; a present partner
left out), so the only way to prefer the chosen answer on both is to look at the image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from PIL import Image

from povid_kedro.config_reader import read_dataclass
from povid_kedro.metrics.chair import Chair
from povid_kedro.metrics.cooccurrence import partner_categories
from povid_kedro.metrics.degenerate import DegenerateChecker
from povid_kedro.modeling.generate import generate

logger = logging.getLogger(__name__)

ID_SUFFIX = "_onpolicy"
"""An on-policy pair's id is the injected pair's it replaces plus this suffix."""


FLUENCY_SUFFIX = "_fluency"
"""Before :data:`ID_SUFFIX` on a fluency pair's id (the same image's other pair keeps it)."""


def source_id(pair_id: str) -> str:
    """The injected pair an on-policy pair replaced (same image and prompt), else the id itself:
    what the noise branch's free answers (keyed by the injected pairs' ids) are looked up by."""
    return pair_id.removesuffix(ID_SUFFIX).removesuffix(FLUENCY_SUFFIX)


@dataclass(frozen=True)
class OnPolicyConfig:
    """Whether the DPO stages train on on-policy pairs, and how the samples are drawn and paired
    (the ``on_policy`` parameters).

    Attributes:
        enabled: Replace the training split's description pairs of ``stages`` with on-policy
            ones; off, every stage trains on the injected pairs.
        stages: The stages that get on-policy pairs, each sampled from the model that stage
            starts from (stage 2's from the stage-1 model: a second round).
        max_images: Training images described (a seeded sample); ``None``: every image with a
            description pair.
        samples_per_image: Descriptions drawn per image (``k``).
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        max_new_tokens: Longest description.
        batch_size: Prompts decoded together.
        seed: Sampling seed.
        min_hallucination_gap: Rejected must hallucinate at least this many more distinct
            objects than chosen.
        max_extra_objects: Rejected may name at most this many more distinct objects than
            chosen (``None``: no bound). At 0 a pair can only be told apart by *which* objects
            are named, never by naming fewer.
        target: ``chair``: pair on hallucinated objects; ``partner``: pair on partner errors
            (absent partners named plus present partners left out), needs the partner map.
        balance: Keep as many pairs that teach not to name an absent partner as pairs that
            teach to name a present one (a seeded sample of the larger side; pairs about
            neither are dropped), so that naming partners more or less is not the lesson.
        fluency_pairs: Also pair, on each image with a degenerate sample (a repeated phrase, a
            sentence fragment), the image's best fluent sample against it, when the degenerate
            one hallucinates and errs at least as much. Degenerate text is otherwise never in
            a pair, so nothing teaches against it; these pairs are kept outside ``balance``.
    """

    enabled: bool = False
    stages: tuple[int, ...] = (1,)
    max_images: int | None = None
    samples_per_image: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 256
    seed: int = 0
    min_hallucination_gap: int = 1
    max_extra_objects: int | None = None
    target: Literal["chair", "partner"] = "chair"
    balance: bool = False
    fluency_pairs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not set(self.stages) <= {1, 2} or not self.stages:
            raise ValueError(f"stages: give 1, 2 or both, got {list(self.stages)}")
        if self.target not in ("chair", "partner"):
            raise ValueError(f"target must be 'chair' or 'partner', got {self.target!r}")
        if self.samples_per_image < 2:
            raise ValueError(f"samples_per_image must be >= 2, got {self.samples_per_image}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or null, got {self.max_images}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> OnPolicyConfig:
        """Build from the ``on_policy`` parameters; an unknown key is an error naming it."""
        return read_dataclass(cls, values, "on_policy")


def _best(scored: Sequence[Mapping[str, Any]], usable: Sequence[int], error: str) -> int:
    """The chosen sample: fewest errors, fewest hallucinations, most true objects, first drawn."""
    return min(
        usable,
        key=lambda i: (scored[i][error], scored[i]["hallucinated"], -scored[i]["correct"], i),
    )


def _pick(
    scored: Sequence[Mapping[str, Any]],
    gap: int,
    max_extra: int | None = None,
    error: str = "hallucinated",
) -> tuple[int, int] | None:
    """Indices (chosen, rejected) of one image's scored samples, or ``None``.

    ``error`` is the count the pair is about; the chosen answer never hallucinates more
    objects nor names fewer true ones than the rejected.
    """
    usable = [i for i, s in enumerate(scored) if not s["degenerate"]]
    if len(usable) < 2:
        return None
    chosen = _best(scored, usable, error)
    c = scored[chosen]
    rivals = [
        i
        for i in usable
        if scored[i][error] >= c[error] + gap
        and scored[i]["hallucinated"] >= c["hallucinated"]
        and scored[i]["correct"] <= c["correct"]
        and (
            max_extra is None
            or scored[i]["correct"] + scored[i]["hallucinated"]
            <= c["correct"] + c["hallucinated"] + max_extra
        )
    ]
    if not rivals:
        return None
    # Rejected: most errors, then the closest length (so length is not the signal).
    rejected = max(
        rivals,
        key=lambda i: (scored[i][error], -abs(scored[i]["words"] - c["words"]), -i),
    )
    return chosen, rejected


def _pick_fluent(
    scored: Sequence[Mapping[str, Any]], error: str = "hallucinated"
) -> tuple[int, int] | None:
    """Indices (best fluent sample, a degenerate sample) of one image's samples, or ``None``.

    The degenerate side errs and hallucinates at least as much as the fluent one, so the pair
    never prefers hallucinating; of several, the one closest in length.
    """
    fluent = [i for i, s in enumerate(scored) if not s["degenerate"]]
    if not fluent:
        return None
    chosen = _best(scored, fluent, error)
    c = scored[chosen]
    rivals = [
        i
        for i, s in enumerate(scored)
        if s["degenerate"] and s[error] >= c[error] and s["hallucinated"] >= c["hallucinated"]
    ]
    if not rivals:
        return None
    return chosen, min(rivals, key=lambda i: (abs(scored[i]["words"] - c["words"]), i))


def balance_directions(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """As many ``absent`` as ``present`` pairs (a seeded sample of the larger side), in their
    original order; ``other`` pairs are dropped."""
    absent = pairs[pairs["direction"] == "absent"]
    present = pairs[pairs["direction"] == "present"]
    n = min(len(absent), len(present))
    kept = pd.concat(
        [absent.sample(n=n, random_state=seed), present.sample(n=n, random_state=seed)]
    )
    logger.info(
        "balanced partner pairs: %d of each direction (of %d absent, %d present, %d other)",
        n,
        len(absent),
        len(present),
        len(pairs) - len(absent) - len(present),
    )
    return kept.sort_index()


def on_policy_pairs(
    model: Any,
    processor: Any,
    samples: pd.DataFrame,
    load_image: Callable[[str], Image.Image],
    truth: Chair,
    image_ids: Mapping[str, Any],
    cfg: OnPolicyConfig,
    sentence_forms: Sequence[str] = (),
    partners: Mapping[str, str | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Sample, score and pair the model's descriptions of each sample's image.

    Args:
        model: The policy (the model DPO starts from).
        processor: Its processor.
        samples: Description rows with ``id``, ``image``, ``prompt`` and ``split``.
        load_image: Relative image path -> RGB image.
        truth: CHAIR scorer whose annotations cover the samples' images.
        image_ids: Image path -> the image id ``truth`` knows it by.
        cfg: Sampling and pairing settings.
        sentence_forms: The data's sentence forms (degenerate samples are never paired).
        partners: Category -> its usual companion (``target: partner`` only).

    Returns:
        The pairs (``id, image, prompt, chosen, rejected, split, task_type`` plus the
        hallucination counts of both sides) and counts: images, pairs, images without a pair,
        mean hallucinated and correct objects of chosen and rejected.
    """
    if cfg.target == "partner" and not partners:
        raise ValueError("on-policy target 'partner' needs the co-occurrence partner map")
    missing = sorted(set(samples["image"]) - set(image_ids))
    if missing:
        raise ValueError(
            f"{len(missing)} sample image(s) have no annotations to score against, e.g. "
            f"{missing[:3]}; give every training image its objects"
        )
    k = cfg.samples_per_image
    rows = samples.to_dict("records")
    texts = sample_descriptions(model, processor, rows, load_image, cfg)
    records = [
        {"image_id": image_ids[str(r["image"])], "caption": t}
        for r, t in zip((r for r in rows for _ in range(k)), texts, strict=True)
    ]
    per_caption = truth.score(records)["captions"]
    checker = DegenerateChecker(sentence_forms)
    error = "partner_errors" if cfg.target == "partner" else "hallucinated"
    pairs: list[dict[str, Any]] = []
    fluency: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        scored = [
            _score_sample(texts[j], per_caption[j], checker, partners or {})
            for j in range(n * k, (n + 1) * k)
        ]
        picked = _pick(scored, cfg.min_hallucination_gap, cfg.max_extra_objects, error)
        if picked is not None:
            pairs.append(_pair_row(row, scored[picked[0]], scored[picked[1]]))
        fix = _pick_fluent(scored, error) if cfg.fluency_pairs else None
        if fix is not None:
            fluency.append(_pair_row(row, scored[fix[0]], scored[fix[1]], fluency=True))
    frame = pd.DataFrame(pairs)
    if cfg.balance and len(frame):
        frame = balance_directions(frame, cfg.seed)
    if fluency:
        frame = pd.concat([frame, pd.DataFrame(fluency)], ignore_index=True)
    stats = _pair_stats(frame, len(rows))
    logger.info(
        "on-policy pairs: %d of %d images (k=%d); hallucinated objects chosen %.2f vs "
        "rejected %.2f, true objects %.2f vs %.2f",
        len(frame),
        len(rows),
        k,
        stats["mean_chosen_hallucinated"],
        stats["mean_rejected_hallucinated"],
        stats["mean_chosen_correct"],
        stats["mean_rejected_correct"],
    )
    return frame, stats


def sample_descriptions(
    model: Any,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Image.Image],
    cfg: OnPolicyConfig,
) -> list[str]:
    """``samples_per_image`` sampled descriptions of each row's image, row by row."""
    k = cfg.samples_per_image
    # One image object per row: generate encodes it once for its k samples.
    images = [load_image(str(r["image"])) for r in rows]
    return generate(
        model,
        processor,
        [image for image in images for _ in range(k)],
        [str(r["prompt"]) for r in rows for _ in range(k)],
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=False,
    )


def _score_sample(
    text: str,
    caption: Mapping[str, Any],
    checker: DegenerateChecker,
    partners: Mapping[str, str | None],
) -> dict[str, Any]:
    """One sample's counts from its CHAIR record: hallucinated and true objects, words, and the
    partner errors (absent companions named plus present ones left out)."""
    gt = set(caption["gt_objects"])
    named = set(caption["objects"])
    companions = partner_categories(gt, partners)
    return {
        "text": text.strip(),
        "hallucinated": len({m["object"] for m in caption["hallucinated"]}),
        "correct": len(named & gt),
        "words": caption["n_words"],
        "degenerate": checker.reason(text) is not None,
        "absent_partners": len((companions - gt) & named),
        "partner_errors": len((companions - gt) & named) + len((companions & gt) - named),
    }


def _pair_row(
    row: Mapping[str, Any], c: Mapping[str, Any], r: Mapping[str, Any], fluency: bool = False
) -> dict[str, Any]:
    """The pair of one sample row: chosen ``c`` and rejected ``r`` with their counts; a
    ``fluency`` pair (rejected is degenerate) gets its own id and direction."""
    return {
        "id": f"{row['id']}{FLUENCY_SUFFIX if fluency else ''}{ID_SUFFIX}",
        "image": row["image"],
        "prompt": row["prompt"],
        "chosen": c["text"],
        "rejected": r["text"],
        "split": row.get("split", "train"),
        "task_type": "description",
        "chosen_hallucinated": c["hallucinated"],
        "rejected_hallucinated": r["hallucinated"],
        "chosen_correct": c["correct"],
        "rejected_correct": r["correct"],
        "chosen_words": c["words"],
        "rejected_words": r["words"],
        # What the pair teaches: fluent text, not to name an absent partner, to name a present
        # one, or neither.
        "direction": (
            "fluency"
            if fluency
            else "absent"
            if r["absent_partners"] > c["absent_partners"]
            else "present"
            if r["partner_errors"] > c["partner_errors"]
            else "other"
        ),
    }


def _pair_stats(frame: pd.DataFrame, n_images: int) -> dict[str, float]:
    """Counts of the pairs made from ``n_images`` images, and the sides' mean counts."""
    counts = frame["direction"].value_counts() if len(frame) else pd.Series(dtype=int)
    fluency = float(counts.get("fluency", 0))
    stats = {
        "images": float(n_images),
        "pairs": float(len(frame)),
        "images_without_pair": n_images - (len(frame) - fluency),
        "fluency_pairs": fluency,
    }
    for direction in ("absent", "present"):
        stats[f"{direction}_partner_pairs"] = float(counts.get(direction, 0))
    for side in ("chosen", "rejected"):
        for what in ("hallucinated", "correct", "words"):
            column = f"{side}_{what}"
            stats[f"mean_{column}"] = float(frame[column].mean()) if len(frame) else 0.0
    return stats


def on_policy_preferences(
    model: Any,
    processor: Any,
    pairs: pd.DataFrame,
    load_image: Callable[[str], Image.Image],
    instances: Mapping[str, Any],
    synonyms: str,
    cfg: OnPolicyConfig,
    sentence_forms: Sequence[str] = (),
    partners: Mapping[str, str | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The preference pairs with every training-split description pair replaced by on-policy
    ones (:func:`on_policy_pairs`); other task types and other splits are kept as they are.

    Args:
        model: The model the stage starts from (it writes the samples).
        processor: Its processor.
        pairs: Preference pairs ``id, image, prompt, chosen, rejected, split, task_type``.
        load_image: Relative image path -> RGB image.
        instances: COCO instances document of the training images (``file_name`` as the
            pairs' ``image``).
        synonyms: CHAIR's synonym list text.
        cfg: Sampling and pairing settings.
        sentence_forms: The data's sentence forms (degenerate samples are never paired).
        partners: Category -> its usual companion (``target: partner`` only).

    Returns:
        The pairs (same columns) and the counts of :func:`on_policy_pairs`.
    """
    replaced = (pairs["task_type"] == "description") & (pairs["split"] == "train")
    if not replaced.any():
        raise ValueError(
            "on-policy pairs need training-split description pairs to replace; the pairs have "
            "none (inject_hallucinations.task_mix must include description)"
        )
    descriptions = pairs[replaced].drop_duplicates("image")  # one prompt per image
    if cfg.max_images and cfg.max_images < len(descriptions):
        descriptions = descriptions.sample(n=cfg.max_images, random_state=cfg.seed)
    truth = Chair(synonyms, instances, {"images": [], "annotations": []})
    image_ids = {str(image["file_name"]): image["id"] for image in instances["images"]}
    made, stats = on_policy_pairs(
        model,
        processor,
        descriptions,
        load_image,
        truth,
        image_ids,
        cfg,
        sentence_forms,
        partners,
    )
    if made.empty:
        raise ValueError(
            f"no on-policy pair from {len(descriptions)} images: no image had two usable "
            "samples that differ enough; raise samples_per_image or temperature"
        )
    stats["replaced_pairs"] = float(replaced.sum())
    return pd.concat([pairs[~replaced], made[list(pairs.columns)]], ignore_index=True), stats


@dataclass
class PairSources:
    """What on-policy pairs are made from besides the model: the images and their truth.

    Calling it is :func:`on_policy_preferences` with these; the instances document is read on
    the first call (it may be COCO's 450 MB training annotations) and kept.

    Attributes:
        load_image: Relative image path -> RGB image.
        instances: Reads the training images' COCO instances document.
        synonyms: CHAIR's synonym list text.
        partners: Category -> its usual companion.
        sentence_forms: The data's sentence forms.
    """

    load_image: Callable[[str], Image.Image]
    instances: Callable[[], Mapping[str, Any]]
    synonyms: str
    partners: Mapping[str, str | None]
    sentence_forms: Sequence[str] = ()
    _read: Mapping[str, Any] | None = field(default=None, init=False, repr=False)

    def __call__(
        self, model: tuple[Any, Any], pairs: pd.DataFrame, cfg: OnPolicyConfig
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        if self._read is None:
            self._read = self.instances()
        return on_policy_preferences(
            model[0],
            model[1],
            pairs,
            self.load_image,
            self._read,
            self.synonyms,
            cfg,
            self.sentence_forms,
            self.partners,
        )
