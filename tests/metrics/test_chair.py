"""CHAIR: object extraction rules, scoring by hand-computed values, and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from povid_kedro.metrics.chair import Chair, ObjectExtractor, load_synonyms, singularize

MODULE = "povid_kedro.metrics.chair"


@pytest.fixture(scope="module")
def coco() -> ObjectExtractor:
    return ObjectExtractor()


def objects(extractor: ObjectExtractor, caption: str) -> list[str]:
    return [m.object for m in extractor.extract(caption)]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("dogs", "dog"),
        ("buses", "bus"),
        ("bus", "bus"),
        ("minibuses", "minibus"),
        ("glasses", "glass"),
        ("glass", "glass"),
        ("skis", "ski"),
        ("scissors", "scissors"),
        ("ties", "tie"),
        ("collies", "collie"),
        ("puppies", "puppy"),
        ("canoes", "canoe"),
        ("potatoes", "potato"),
        ("knives", "knife"),
        ("microwaves", "microwave"),
        ("horses", "horse"),
        ("benches", "bench"),
        ("women", "woman"),
        ("people", "person"),
        ("mice", "mouse"),
        ("sheep", "sheep"),
        ("tennis", "tennis"),
        ("pizzas", "pizza"),
        ("t-shirts", "t-shirt"),
    ],
)
def test_singularize(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


def test_plurals_map_to_their_category(coco: ObjectExtractor) -> None:
    assert objects(coco, "Two dogs near the buses.") == ["dog", "bus"]
    # The reference singularizer turns "bus" into "bu" and misses it; we do not.
    assert objects(coco, "A bus.") == ["bus"]
    assert objects(coco, "Wine glasses on a table.") == ["wine glass", "dining table"]
    # Eyeglasses are not a COCO object.
    assert objects(coco, "A man wearing glasses.") == ["person"]
    assert objects(coco, "Skis and scissors.") == ["skis", "scissors"]


def test_synonyms_map_to_the_canonical_category(coco: ObjectExtractor) -> None:
    mentions = coco.extract("A puppy and a kitten on a sofa.")
    assert [m.to_dict() for m in mentions] == [
        {"word": "puppy", "object": "dog"},
        {"word": "kitten", "object": "cat"},
        {"word": "sofa", "object": "couch"},
    ]


def test_two_word_objects(coco: ObjectExtractor) -> None:
    mentions = coco.extract("Traffic lights above a hot dog stand.")
    assert [m.to_dict() for m in mentions] == [
        {"word": "Traffic lights", "object": "traffic light"},
        {"word": "hot dog", "object": "hot dog"},
    ]
    # A hot dog is not a dog; a teddy bear is not a bear.
    assert objects(coco, "A hot dog and a teddy bear.") == ["hot dog", "teddy bear"]


def test_punctuation_blocks_merging(coco: ObjectExtractor) -> None:
    assert objects(coco, "A baby, an elephant.") == ["person", "elephant"]
    assert objects(coco, "A baby elephant.") == ["elephant"]


def test_toilet_seat_is_a_toilet_not_a_chair(coco: ObjectExtractor) -> None:
    assert objects(coco, "A toilet seat.") == ["toilet"]
    # Reference rule: with a toilet present, "seat" is dropped wherever it is.
    assert objects(coco, "A toilet with the seat up.") == ["toilet"]
    assert objects(coco, "A seat by the window.") == ["chair"]


def test_baby_and_passenger_qualifiers(coco: ObjectExtractor) -> None:
    assert objects(coco, "A baby elephant and an adult giraffe.") == ["elephant", "giraffe"]
    assert objects(coco, "A passenger jet.") == ["airplane"]
    # Generalized from the reference's fixed lists to every synonym of the category.
    assert objects(coco, "A baby puppy and a passenger plane.") == ["dog", "airplane"]
    assert objects(coco, "A baby in a crib.") == ["person"]


def test_reference_list_defects_are_fixed(coco: ObjectExtractor) -> None:
    # " motor bike" and " cheesecake" carry a stray space in the reference list; "iPhone" is
    # capitalized there while captions are lower-cased.
    assert objects(coco, "A motor bike, a cheesecake and an iPhone.") == [
        "motorcycle",
        "cake",
        "cell phone",
    ]
    # Three-word entries are merged too (the reference only looks at word pairs).
    assert objects(coco, "A stove top oven.") == ["oven"]


def test_hyphenated_and_possessive_tokens(coco: ObjectExtractor) -> None:
    # As in nltk's word_tokenize: "dog-shaped" stays one token, "dog's" splits.
    assert objects(coco, "A dog-shaped kite and the dog's ball.") == [
        "kite",
        "dog",
        "sports ball",
    ]


def test_custom_synonym_list_with_multi_word_names() -> None:
    extractor = ObjectExtractor("robot arm, manipulator\nbig red ball\nlamp, lantern\n")
    assert extractor.categories == ["robot arm", "big red ball", "lamp"]
    mentions = extractor.extract("Two robot arms and a big red ball under lanterns; a robot.")
    assert [m.to_dict() for m in mentions] == [
        {"word": "robot arms", "object": "robot arm"},
        {"word": "big red ball", "object": "big red ball"},
        {"word": "lanterns", "object": "lamp"},
    ]
    # A plain "ball" or "arm" is not in this list.
    assert extractor.extract("An arm and a ball.") == []


def test_load_synonyms_from_path_text_or_default(tmp_path: Path) -> None:
    path = tmp_path / "syn.txt"
    path.write_text("lamp, lantern\n", encoding="utf-8")
    assert load_synonyms(path) == "lamp, lantern\n"
    assert load_synonyms(str(path)) == "lamp, lantern\n"
    assert load_synonyms("lamp, lantern") == "lamp, lantern"
    assert load_synonyms(None).startswith("person, girl, boy")
    with pytest.raises(ValueError, match="missing.txt"):
        load_synonyms(str(tmp_path / "missing.txt"))


# --- scoring -----------------------------------------------------------------------------------

INSTANCES = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "categories": [
        {"id": 18, "name": "dog"},
        {"id": 6, "name": "bus"},
        {"id": 1, "name": "person"},
    ],
    "annotations": [
        {"image_id": 1, "category_id": 18},
        {"image_id": 1, "category_id": 18},
        {"image_id": 2, "category_id": 6},
    ],
}
REFERENCE_CAPTIONS = {
    "annotations": [
        # Adds "person" to image 1's ground truth.
        {"image_id": 1, "caption": "A woman sitting next to her dog."},
        {"image_id": 2, "caption": "A red bus on the street."},
        {"image_id": 3, "caption": "An empty room."},
    ]
}
GENERATED = [
    # dog, person, dog, cat: cat hallucinated; 11 words.
    {"image_id": 1, "caption": "A dog and a man with a dog and a cat."},
    # bus, traffic light: traffic light hallucinated; 6 words.
    {"image_id": 2, "caption": "Two buses and a traffic light."},
    # no objects; 3 words.
    {"image_id": 2, "caption": "A quiet street."},
    # no objects, no ground truth; 4 words. Ids match across int and str.
    {"image_id": "3", "caption": "Nothing to see here."},
]


@pytest.fixture(scope="module")
def chair() -> Chair:
    return Chair(None, INSTANCES, REFERENCE_CAPTIONS)


def test_ground_truth_is_instances_union_caption_objects(chair: Chair) -> None:
    assert chair.gt_objects(1) == {"dog", "person"}
    assert chair.gt_objects(2) == {"bus"}
    assert chair.gt_objects(3) == set()


def test_score_by_hand(chair: Chair) -> None:
    result = chair.score(GENERATED)
    assert result["CHAIRs"] == pytest.approx(2 / 4)
    assert result["CHAIRs_se"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    # Mentions: 4 + 2 + 0 + 0 = 6, two hallucinated; the repeated "dog" counts twice.
    assert result["CHAIRi"] == pytest.approx(2 / 6)
    # Distinct GT objects named / GT objects: (2 + 1 + 0 + 0) / (2 + 1 + 1 + 0).
    assert result["Recall"] == pytest.approx(3 / 4)
    assert result["Len"] == pytest.approx((11 + 6 + 3 + 4) / 4)
    assert result["objects_per_caption"] == pytest.approx((3 + 2 + 0 + 0) / 4)
    assert result["n_mentions"] == 6
    assert result["n_hallucinated_mentions"] == 2

    first = result["captions"][0]
    assert [m["object"] for m in first["mentions"]] == ["dog", "person", "dog", "cat"]
    assert first["hallucinated"] == [{"word": "cat", "object": "cat"}]
    assert first["gt_objects"] == ["dog", "person"]
    assert first["n_objects"] == 3
    assert first["chair_s"] == 1
    assert first["chair_i"] == pytest.approx(1 / 4)
    assert result["captions"][3]["mentions"] == []
    assert result["captions"][3]["chair_i"] == 0.0


def test_score_rejects_unknown_images_and_empty_input(chair: Chair) -> None:
    with pytest.raises(ValueError, match="image_id 99"):
        chair.score([{"image_id": 99, "caption": "A dog."}])
    with pytest.raises(ValueError, match="no captions"):
        chair.score([])
    with pytest.raises(ValueError, match="caption"):
        chair.score([{"image_id": 1}])


def test_custom_list_ground_truth_uses_its_names() -> None:
    instances = {
        "images": [{"id": "a"}],
        "categories": [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "lamp"}],
        "annotations": [{"image_id": "a", "category_id": 1}],
    }
    scorer = Chair("traffic light, stoplight\nlamp, lantern\n", instances, {"annotations": []})
    result = scorer.score([{"image_id": "a", "caption": "A stoplight and two lanterns."}])
    assert result["captions"][0]["hallucinated"] == [{"word": "lanterns", "object": "lamp"}]
    assert result["CHAIRi"] == pytest.approx(1 / 2)


# --- command -----------------------------------------------------------------------------------


def write_coco(directory: Path) -> None:
    directory.mkdir()
    # Two instances files: the command merges them.
    first = dict(INSTANCES, images=[{"id": 1}, {"id": 3}], annotations=INSTANCES["annotations"][:2])
    second = dict(INSTANCES, images=[{"id": 2}], annotations=INSTANCES["annotations"][2:])
    (directory / "instances_a.json").write_text(json.dumps(first), encoding="utf-8")
    (directory / "instances_b.json").write_text(json.dumps(second), encoding="utf-8")
    (directory / "captions_a.json").write_text(json.dumps(REFERENCE_CAPTIONS), encoding="utf-8")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_command_writes_metrics(tmp_path: Path, run_module) -> None:
    write_coco(tmp_path / "coco")
    captions = write_jsonl(tmp_path / "caps.jsonl", GENERATED)
    out = tmp_path / "out" / "chair.json"
    proc = run_module(
        MODULE, "--coco-annotations", tmp_path / "coco", "--captions", captions, "--output", out
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["CHAIRs"] == pytest.approx(0.5)
    assert result["CHAIRi"] == pytest.approx(2 / 6)
    assert result["Recall"] == pytest.approx(0.75)
    assert result["Len"] == pytest.approx(6.0)
    assert result["captions"][1]["hallucinated"] == [
        {"word": "traffic light", "object": "traffic light"}
    ]
    assert json.loads(proc.stdout)["CHAIRs"] == pytest.approx(0.5)


def test_command_with_custom_synonyms(tmp_path: Path, run_module) -> None:
    write_coco(tmp_path / "coco")
    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("dog, hound\nbus\nperson, man\n", encoding="utf-8")
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "A hound, a cat."}])
    out = tmp_path / "chair.json"
    proc = run_module(
        MODULE,
        *("--coco-annotations", tmp_path / "coco", "--captions", captions),
        *("--output", out, "--synonyms", synonyms),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    # "cat" is not in this list, so the only mention is the hound, which is in the image.
    assert result["captions"][0]["mentions"] == [{"word": "hound", "object": "dog"}]
    assert result["CHAIRs"] == 0.0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"image_id": 1, "caption": "A dog."}\n{"image_id": 1, "caption": \n', "line 2"),
        ('{"image_id": 1}\n', "line 1: missing key(s) 'caption'"),
        ('{"image_id": 7, "caption": "A dog."}\n', "line 1: image_id 7"),
        ("\n", "no records"),
    ],
)
def test_command_rejects_bad_captions(
    tmp_path: Path, run_module, content: str, expected: str
) -> None:
    write_coco(tmp_path / "coco")
    captions = tmp_path / "caps.jsonl"
    captions.write_text(content, encoding="utf-8")
    proc = run_module(
        MODULE,
        *("--coco-annotations", tmp_path / "coco", "--captions", captions),
        *("--output", tmp_path / "out.json"),
    )
    assert proc.returncode == 2
    assert str(captions) in proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_command_rejects_bad_annotations(tmp_path: Path, run_module) -> None:
    captions = write_jsonl(tmp_path / "caps.jsonl", GENERATED)
    args = ("--captions", captions, "--output", tmp_path / "out.json")
    proc = run_module(MODULE, "--coco-annotations", tmp_path / "missing", *args)
    assert proc.returncode == 2
    assert "missing" in proc.stderr

    write_coco(tmp_path / "coco")
    broken = tmp_path / "coco" / "instances_b.json"
    broken.write_text(json.dumps({"annotations": []}), encoding="utf-8")
    proc = run_module(MODULE, "--coco-annotations", tmp_path / "coco", *args)
    assert proc.returncode == 2
    assert str(broken) in proc.stderr
    assert "categories" in proc.stderr
