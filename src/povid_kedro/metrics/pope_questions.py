"""Build POPE question files from COCO-format instances (RUCAIBox/POPE sampling rules).

Generic: works on the embedded world's ``instances`` and on real COCO ``instances_val2014.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from povid_kedro.inflect import article
from povid_kedro.schema import POPE_SPLITS

POPE_TEMPLATE = "Is there a {} in the image?"


def pope_question_text(name: str, template: str = POPE_TEMPLATE) -> str:
    """Fill the POPE template, with "an" before a vowel.

    The reference does ``template.replace("a", "an")``, which also turns "image" into "imange";
    here only the article before the slot changes.

    Args:
        name: Category name.
        template: Question template with one ``{}`` slot after the article ``a``.

    Returns:
        The question.
    """
    if article(name) == "an":
        template = template.replace(" a {}", " an {}")
    return template.format(name)


def build_pope_questions(
    instances: Mapping[str, Any], *, split: str, num_per_image: int, seed: int
) -> list[dict[str, Any]]:
    """Build one POPE split from COCO instances.

    Per image (in ``instances["images"]`` order), up to ``num_per_image`` present categories
    are asked about (label ``yes``); each yes-question is followed by one no-question about an
    absent category, chosen by the split's strategy, never repeated within the image:

    * ``random``: uniform over the absent categories of ``instances["categories"]``;
    * ``popular``: the absent category that is present in the most images of the dataset;
    * ``adversarial``: the absent category that co-occurs (shares images) most often with the
      yes-question's object over the dataset.

    Counts are per image, as in the reference (which counts each image's object set).
    ``popular`` and ``adversarial`` fall back to ``random`` when no candidate is left, as the
    reference does; ties are broken by category id. When an image has more present categories
    than ``num_per_image``, which ones are asked is drawn from ``seed`` identically for all three
    splits (the reference takes its first ones). Deviations from the reference, which first
    keeps only images with at least ``num_per_image`` objects and samples 500 of them: here every
    image with at least one annotation is used and **images with no object are skipped**; an
    image that runs out of absent categories loses the matching yes-question, so every image
    stays balanced.

    Args:
        instances: COCO instances document (``images``, ``annotations``, ``categories``).
        split: ``"random"``, ``"popular"`` or ``"adversarial"``.
        num_per_image: Most yes-questions (and no-questions) per image.
        seed: Seed of the random choices.

    Returns:
        Records ``{"question_id", "image", "text", "label"}``, ids 1-based and consecutive.

    Raises:
        ValueError: On an unknown split or a non-positive ``num_per_image``.
    """
    if split not in POPE_SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; expected one of {POPE_SPLITS}")
    if num_per_image < 1:
        raise ValueError(f"num_per_image must be >= 1, got {num_per_image}")

    names = {int(c["id"]): str(c["name"]) for c in instances["categories"]}
    cat_ids = sorted(names)
    present: dict[int, list[int]] = {int(im["id"]): [] for im in instances["images"]}
    for ann in instances["annotations"]:
        objs = present.setdefault(int(ann["image_id"]), [])
        cid = int(ann["category_id"])
        if cid not in objs:
            objs.append(cid)

    freq: Counter[int] = Counter()
    cooc: dict[int, Counter[int]] = {c: Counter() for c in cat_ids}
    for objs in present.values():
        freq.update(objs)
        for a in objs:
            cooc.setdefault(a, Counter()).update(b for b in objs if b != a)
    popular = sorted(cat_ids, key=lambda c: (-freq[c], c))
    adversarial = {
        a: sorted((b for b in counts if counts[b] > 0), key=lambda b: (-counts[b], b))
        for a, counts in cooc.items()
    }

    # Positives come from a stream shared by the three splits, negatives from a split's own.
    pos_rng = np.random.default_rng([seed, 0])
    neg_rng = np.random.default_rng([seed, 1 + POPE_SPLITS.index(split)])
    questions: list[dict[str, Any]] = []
    for image in instances["images"]:
        objs = present.get(int(image["id"]), [])
        if not objs:
            continue
        if len(objs) > num_per_image:
            objs = [objs[i] for i in sorted(pos_rng.permutation(len(objs))[:num_per_image])]
        used = set(present[int(image["id"])])
        for pos in objs:
            neg = _negative(split, pos, used, cat_ids, popular, adversarial, neg_rng)
            if neg is None:
                break
            used.add(neg)
            for cid, label in ((pos, "yes"), (neg, "no")):
                questions.append(
                    {
                        "question_id": len(questions) + 1,
                        "image": image["file_name"],
                        "text": pope_question_text(names[cid]),
                        "label": label,
                    }
                )
    return questions


def _negative(
    split: str,
    pos: int,
    used: set[int],
    cat_ids: list[int],
    popular: list[int],
    adversarial: dict[int, list[int]],
    rng: np.random.Generator,
) -> int | None:
    ranked = (
        popular
        if split == "popular"
        else adversarial.get(pos, [])
        if split == "adversarial"
        else []
    )
    for cid in ranked:
        if cid not in used:
            return cid
    candidates = [c for c in cat_ids if c not in used]
    if not candidates:
        return None
    return candidates[int(rng.integers(len(candidates)))]
