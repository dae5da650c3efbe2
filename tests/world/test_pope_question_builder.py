"""build_pope_questions on a hand-made instances file (RUCAIBox/POPE sampling rules)."""

from __future__ import annotations

from typing import Any

import pytest

from povid_kedro.metrics.pope_questions import POPE_TEMPLATE, build_pope_questions

# Non-contiguous ids, like real COCO. Image-level counts: cat 2, dog 2, car 2, bus 1, apple 0.
# Co-occurrence: cat-dog 2, cat-car 1, dog-car 1, car-bus 1.
CAT, DOG, CAR, BUS, APPLE = 1, 2, 5, 9, 11
NAMES = {CAT: "cat", DOG: "dog", CAR: "car", BUS: "bus", APPLE: "apple"}


def _instances() -> dict[str, Any]:
    objects = {
        1: [CAT, DOG, CAT],  # a repeated category counts once
        2: [CAT, DOG, CAR],
        3: [CAR, BUS],
        4: [],  # no object: skipped
    }
    annotations = [
        {"id": k + 1, "image_id": image_id, "category_id": cid, "bbox": [0, 0, 1, 1]}
        for k, (image_id, cid) in enumerate(
            (image_id, cid) for image_id, cids in objects.items() for cid in cids
        )
    ]
    return {
        "images": [{"id": i, "file_name": f"img{i}.jpg"} for i in objects],
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in NAMES.items()],
    }


def _asked(questions: list[dict[str, Any]], image: str, label: str) -> list[str]:
    out = []
    for q in questions:
        if q["image"] == image and q["label"] == label:
            out.append(next(n for n in NAMES.values() if f" {n} in the image" in q["text"]))
    return out


def test_record_shape_ids_and_article() -> None:
    questions = build_pope_questions(_instances(), split="random", num_per_image=3, seed=0)
    assert [q["question_id"] for q in questions] == list(range(1, len(questions) + 1))
    assert all(set(q) == {"question_id", "image", "text", "label"} for q in questions)
    assert [q["label"] for q in questions[:4]] == ["yes", "no", "yes", "no"]
    assert questions[0]["text"] == POPE_TEMPLATE.format("cat")
    assert "img4.jpg" not in {q["image"] for q in questions}
    popular = build_pope_questions(_instances(), split="popular", num_per_image=3, seed=0)
    assert "Is there an apple in the image?" in {q["text"] for q in popular}


def test_popular_takes_the_most_frequent_absent_categories_in_order() -> None:
    qs = build_pope_questions(_instances(), split="popular", num_per_image=3, seed=0)
    assert _asked(qs, "img1.jpg", "yes") == ["cat", "dog"]
    assert _asked(qs, "img1.jpg", "no") == ["car", "bus"]
    # Three present, two absent: the third yes-question is dropped to stay balanced.
    assert _asked(qs, "img2.jpg", "yes") == ["cat", "dog"]
    assert _asked(qs, "img2.jpg", "no") == ["bus", "apple"]
    assert _asked(qs, "img3.jpg", "no") == ["cat", "dog"]


def test_adversarial_takes_the_most_co_occurring_absent_category() -> None:
    qs = build_pope_questions(_instances(), split="adversarial", num_per_image=3, seed=0)
    # cat co-occurs with dog (present) then car; dog's co-occurring ones are used: random.
    no1 = _asked(qs, "img1.jpg", "no")
    assert no1[0] == "car" and no1[1] in {"bus", "apple"}
    # car co-occurs once each with cat, dog, bus: the tie goes to the lowest id (cat).
    no3 = _asked(qs, "img3.jpg", "no")
    assert no3[0] == "cat" and no3[1] in {"dog", "apple"}


def test_random_negatives_are_absent_and_distinct() -> None:
    instances = _instances()
    for seed in range(20):
        qs = build_pope_questions(instances, split="random", num_per_image=3, seed=seed)
        for image, present in (("img1.jpg", {"cat", "dog"}), ("img3.jpg", {"car", "bus"})):
            negatives = _asked(qs, image, "no")
            assert len(negatives) == len(set(negatives)) == len(present)
            assert not set(negatives) & present
    seen = {
        tuple(
            _asked(
                build_pope_questions(instances, split="random", num_per_image=3, seed=s),
                "img3.jpg",
                "no",
            )
        )
        for s in range(20)
    }
    assert len(seen) > 1, "the seed drives the random split"


def test_deterministic_and_positives_shared_by_the_splits() -> None:
    instances = _instances()
    for split in ("random", "popular", "adversarial"):
        a = build_pope_questions(instances, split=split, num_per_image=1, seed=7)
        assert a == build_pope_questions(instances, split=split, num_per_image=1, seed=7)
    yes = {
        split: [
            q["text"]
            for q in build_pope_questions(instances, split=split, num_per_image=1, seed=7)
            if q["label"] == "yes"
        ]
        for split in ("random", "popular", "adversarial")
    }
    assert yes["random"] == yes["popular"] == yes["adversarial"]
    assert len(yes["random"]) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        build_pope_questions(_instances(), split="hard", num_per_image=3, seed=0)
    with pytest.raises(ValueError, match="num_per_image"):
        build_pope_questions(_instances(), split="random", num_per_image=0, seed=0)
