"""The embedded world: determinism, record formats, ground-truth consistency, priors."""

from __future__ import annotations

import copy
import io
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from povid_kedro.experiments import project_parameters
from povid_kedro.metrics.chair import synonym_map as parse_synonyms
from povid_kedro.world import (
    World,
    WorldConfig,
    generate_world,
    make_sample_figure,
    validation_config,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_SYNONYMS = Path("/work/shared/reference/coco_synonyms.txt")


def default_params() -> dict[str, Any]:
    return project_parameters()["embedded_world"]


def small_params(n_train: int = 200, n_eval: int = 100, **overrides: Any) -> dict[str, Any]:
    params = default_params()
    params["n_train_images"] = n_train
    params["n_eval_images"] = n_eval
    params.update(overrides)
    return params


def serialise(world: World) -> dict[str, bytes]:
    """A world as it is saved: its PNG files, JSON per document."""
    out = {**world.train_images.files, **world.eval_images.files}
    docs = {
        "instructions": world.instructions,
        "instances": world.instances,
        "captions": world.captions,
        "pope": world.pope,
        "scenes": world.scenes,
        "meta": world.meta,
    }
    for key, doc in docs.items():
        out[key] = json.dumps(doc, sort_keys=True).encode()
    out["synonyms"] = world.synonyms.encode()
    return out


@pytest.fixture(scope="module")
def cfg() -> WorldConfig:
    return WorldConfig.from_dict(small_params())


@pytest.fixture(scope="module")
def world(cfg: WorldConfig) -> World:
    return generate_world(cfg)


def _object_words(cfg: WorldConfig) -> tuple[re.Pattern[str], dict[str, str]]:
    words = cfg.vocabulary_words()
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b"), words


def _mentions(text: str, cfg: WorldConfig) -> set[str]:
    pattern, words = _object_words(cfg)
    return {words[m] for m in pattern.findall(text.lower())}


# --------------------------------------------------------------------------------------------
def test_default_parameters_load_and_round_trip() -> None:
    cfg = WorldConfig.from_dict(default_params())
    assert (cfg.n_train_images, cfg.n_eval_images, cfg.image_size) == (12000, 4000, 96)
    assert len(cfg.categories) >= 16
    assert len(cfg.colours) >= 5
    assert cfg.cooccurrence == {"train": 0.8, "eval": 0.5}
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())


def test_same_seed_gives_identical_bytes_and_other_seed_differs(cfg: WorldConfig) -> None:
    first = serialise(generate_world(cfg))
    again = serialise(generate_world(WorldConfig.from_dict(small_params())))
    assert first.keys() == again.keys()
    assert all(first[k] == again[k] for k in first)

    other = serialise(generate_world(WorldConfig.from_dict(small_params(seed=cfg.seed + 1))))
    differing = [k for k in first if first[k] != other.get(k)]
    assert len(differing) > 0.9 * len(first)


def test_the_world_is_the_same_drawn_by_several_processes(
    world: World, cfg: WorldConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from povid_kedro import parallel

    monkeypatch.setattr(parallel, "MIN_ITEMS", 0)
    assert serialise(generate_world(cfg, workers=2)) == serialise(world)


def test_eval_size_does_not_change_training_data(world: World) -> None:
    bigger = generate_world(WorldConfig.from_dict(small_params(n_eval=130)))
    assert bigger.train_images.keys() == world.train_images.keys()
    for name, image in world.train_images.items():
        assert image.tobytes() == bigger.train_images[name].tobytes()
    assert bigger.instructions == world.instructions
    # The first evaluation images are the same too: each image has its own child seed.
    assert bigger.eval_images["val_000001.png"].tobytes() == (
        world.eval_images["val_000001.png"].tobytes()
    )


def test_images_are_rgb_of_the_configured_size(world: World, cfg: WorldConfig) -> None:
    assert len(world.train_images) == cfg.n_train_images
    assert len(world.eval_images) == cfg.n_eval_images
    assert sorted(world.train_images)[0] == "train_000001.png"
    assert sorted(world.eval_images)[0] == "val_000001.png"
    for image in [*world.train_images.values(), *world.eval_images.values()]:
        assert image.mode == "RGB"
        assert image.size == (cfg.image_size, cfg.image_size)


def test_llava_records_parse(world: World) -> None:
    records = [r for key in ("detail", "complex_reasoning") for r in world.instructions[key]]
    records = json.loads(json.dumps(records))
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert world.instructions["detail"] and world.instructions["complex_reasoning"]
    for rec in records:
        assert set(rec) == {"id", "image", "conversations"}
        assert rec["image"] in world.train_images
        conv = rec["conversations"]
        assert len(conv) % 2 == 0
        assert [m["from"] for m in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in m["value"] for m in conv[1:])
        assert all(m["value"].strip() for m in conv)
    lengths = Counter(len(r["conversations"]) for r in world.instructions["complex_reasoning"])
    assert lengths[2] and lengths[4], "both single- and two-turn reasoning records"
    prompts = {r["conversations"][0]["value"] for r in world.instructions["detail"]}
    assert len(prompts) > 5


def test_short_answer_records_ask_presence_and_answer_from_the_scene(
    world: World, cfg: WorldConfig
) -> None:
    records = json.loads(json.dumps(world.instructions["vqa"]))
    expected = cfg.text.short_qa_share * cfg.n_train_images
    assert len(records) == pytest.approx(expected, abs=3 * math.sqrt(cfg.n_train_images))
    truth = {s["file_name"]: {o["category"] for o in s["objects"]} for s in world.scenes["train"]}
    lookup = {
        word: c.name
        for c in cfg.categories
        for name in (c.name, *c.synonyms)
        for word in (name, cfg.plural(name))
    }
    answers = Counter()
    for rec in records:
        conv = rec["conversations"]
        assert len(conv) == 2 * cfg.text.short_qa_turns
        asked = set()
        for q, a in zip(conv[0::2], conv[1::2], strict=True):
            question = q["value"].removeprefix("<image>\n")
            assert question.endswith("\n" + cfg.text.short_qa_suffix)
            match = re.match(
                r"(?:Is there an? (.+) in the image|Can you see any (.+) in this picture"
                r"|Does the image contain an? (.+))\?\n",
                question,
            )
            assert match, question
            category = lookup[next(g for g in match.groups() if g)]
            assert category not in asked, rec  # each turn asks about another category
            free = bool(truth[rec["image"]] - asked)  # else only absent categories are left
            asked.add(category)
            assert a["value"] == ("Yes" if category in truth[rec["image"]] else "No"), rec
            if free:
                answers[a["value"]] += 1
    share_no = answers["No"] / sum(answers.values())
    assert share_no == pytest.approx(cfg.text.absent_question_share, abs=0.05)


def test_short_answers_leave_the_other_text_unchanged(cfg: WorldConfig) -> None:
    params = small_params(n_train=60, n_eval=10)
    without = copy.deepcopy(params)
    without["text"]["short_qa_share"] = 0.0
    a, b = (
        generate_world(WorldConfig.from_dict(params)),
        generate_world(WorldConfig.from_dict(without)),
    )
    assert a.instructions["detail"] == b.instructions["detail"]
    assert a.instructions["complex_reasoning"] == b.instructions["complex_reasoning"]
    assert a.instructions["vqa"] and not b.instructions["vqa"]


def test_descriptions_and_captions_name_only_present_objects(
    world: World, cfg: WorldConfig
) -> None:
    truth = {s["file_name"]: {o["category"] for o in s["objects"]} for s in world.scenes["train"]}
    mentioned_share = []
    for rec in world.instructions["detail"]:
        named = _mentions(rec["conversations"][1]["value"], cfg)
        assert named, rec
        assert named <= truth[rec["image"]], rec
        mentioned_share.append(len(named) / len(truth[rec["image"]]))
    # Each object is named with the configured probability (1.0 in the tuned defaults).
    share = sum(mentioned_share) / len(mentioned_share)
    assert share == pytest.approx(cfg.text.mention_probability, abs=0.1)

    eval_truth = {
        s["image_id"]: {o["category"] for o in s["objects"]} for s in world.scenes["eval"]
    }
    per_image = Counter(a["image_id"] for a in world.captions["annotations"])
    assert set(per_image.values()) == {cfg.text.captions_per_image}
    for ann in world.captions["annotations"]:
        named = _mentions(ann["caption"], cfg)
        assert named and named <= eval_truth[ann["image_id"]], ann


def test_mention_probability_below_one_gives_non_exhaustive_descriptions() -> None:
    params = small_params(n_train=200, n_eval=10)
    params["text"] = {**params["text"], "mention_probability": 0.75}
    cfg = WorldConfig.from_dict(params)
    world = generate_world(cfg)
    truth = {s["file_name"]: {o["category"] for o in s["objects"]} for s in world.scenes["train"]}
    shares = [
        len(_mentions(rec["conversations"][1]["value"], cfg)) / len(truth[rec["image"]])
        for rec in world.instructions["detail"]
    ]
    # Like COCO/LLaVA: not every object is described, at least one always is.
    assert 0.5 < sum(shares) / len(shares) < 0.98
    assert min(shares) > 0


def test_coco_files_are_consistent(world: World, cfg: WorldConfig) -> None:
    instances = json.loads(json.dumps(world.instances))
    captions = json.loads(json.dumps(world.captions))
    image_ids = {im["id"] for im in instances["images"]}
    cat_ids = {c["id"] for c in instances["categories"]}
    assert {c["name"] for c in instances["categories"]} == set(cfg.category_names)
    assert {c["supercategory"] for c in instances["categories"]} == set(cfg.scenes)
    assert {im["file_name"] for im in instances["images"]} == set(world.eval_images)
    assert all(im["width"] == im["height"] == cfg.image_size for im in instances["images"])
    ann_ids = [a["id"] for a in instances["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for ann in instances["annotations"]:
        assert ann["image_id"] in image_ids
        assert ann["category_id"] in cat_ids
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= cfg.image_size and y + h <= cfg.image_size
        assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
        assert len(ann["segmentation"][0]) == 8
    for ann in captions["annotations"]:
        assert ann["image_id"] in image_ids and ann["caption"].strip()
    assert captions["images"] == instances["images"]
    n_objects = sum(len(s["objects"]) for s in world.scenes["eval"])
    assert len(instances["annotations"]) == n_objects


def test_synonyms_parse_like_the_reference_list(world: World, cfg: WorldConfig) -> None:
    ours = parse_synonyms(world.synonyms)
    assert list(ours) == cfg.category_names
    assert ours["traffic light"][0] == "traffic light" and "stoplight" in ours["traffic light"]
    assert any(" " in w for words in ours.values() for w in words[1:]), "a two-word synonym"
    every = [w for words in ours.values() for w in words]
    assert len(every) == len(set(every)), "no word names two categories"
    assert world.meta["synonyms"] == ours
    if not REFERENCE_SYNONYMS.exists():
        pytest.skip("reference COCO synonym list not available")
    reference = parse_synonyms(REFERENCE_SYNONYMS.read_text())
    assert len(reference) == 80
    for parsed in (ours, reference):
        for canonical, words in parsed.items():
            assert isinstance(canonical, str) and words[0] == canonical
            assert all(isinstance(w, str) and w == w.strip() and w for w in words)
    # The world's words are COCO's words: same canonical names where they exist.
    assert set(ours) <= set(reference)


def test_pope_files_are_balanced_and_true(world: World, cfg: WorldConfig) -> None:
    present = {s["file_name"]: {o["category"] for o in s["objects"]} for s in world.scenes["eval"]}
    name_of = {
        f"Is there {a} {c} in the image?": c for c in cfg.category_names for a in ("a", "an")
    }
    assert set(world.pope) == {"random", "popular", "adversarial"}
    for split, questions in world.pope.items():
        assert questions, split
        assert [q["question_id"] for q in questions] == list(range(1, len(questions) + 1))
        labels: dict[str, Counter[str]] = {}
        for q in questions:
            assert set(q) == {"question_id", "image", "text", "label"}
            category = name_of[q["text"]]
            if q["label"] == "yes":
                assert category in present[q["image"]], (split, q)
            else:
                assert q["label"] == "no" and category not in present[q["image"]], (split, q)
            labels.setdefault(q["image"], Counter())[q["label"]] += 1
        assert all(c["yes"] == c["no"] >= 1 for c in labels.values())
        assert len(labels) == len(world.eval_images)


def test_adversarial_pope_asks_about_absent_partners(world: World, cfg: WorldConfig) -> None:
    """Co-occurrence drives the adversarial split, as on COCO: absent partners are asked about."""
    partners = {c.name: c.partner for c in cfg.categories}
    present = {s["file_name"]: {o["category"] for o in s["objects"]} for s in world.scenes["eval"]}
    name_of = {
        f"Is there {a} {c} in the image?": c for c in cfg.category_names for a in ("a", "an")
    }

    def partner_share(split: str) -> float:
        negatives = [q for q in world.pope[split] if q["label"] == "no"]
        hits = sum(
            any(partners[p] == name_of[q["text"]] for p in present[q["image"]]) for q in negatives
        )
        return hits / len(negatives)

    assert partner_share("adversarial") > 2 * partner_share("random")


def _binomial_ok(scenes: list[dict[str, Any]], rate: float) -> tuple[bool, float, int]:
    trials = [o for s in scenes for o in s["objects"] if o["partner_trial"]]
    added = sum(o["partner_added"] for o in trials)
    n = len(trials)
    tolerance = 4 * math.sqrt(rate * (1 - rate) / n) + 1e-9
    return abs(added / n - rate) <= tolerance, added / n, n


def test_cooccurrence_rates_are_as_configured() -> None:
    cfg = WorldConfig.from_dict(small_params(n_train=300, n_eval=300))
    world = generate_world(cfg)
    for split in ("train", "eval"):
        ok, observed, n = _binomial_ok(world.scenes[split], cfg.cooccurrence[split])
        assert n > 200
        assert ok, (split, observed, cfg.cooccurrence[split], n)
        assert world.meta["statistics"][split]["partner_rate"] == pytest.approx(observed, abs=1e-4)
    # Change the configured rates: the data follows.
    params = small_params(n_train=300, n_eval=300, cooccurrence={"train": 0.6, "eval": 0.2})
    tuned = generate_world(WorldConfig.from_dict(params))
    assert _binomial_ok(tuned.scenes["train"], 0.6)[0]
    assert _binomial_ok(tuned.scenes["eval"], 0.2)[0]


def test_scene_records_match_the_layout(world: World, cfg: WorldConfig) -> None:
    cell_h, cell_w = cfg.cell_size
    colours, sizes = set(cfg.colours), set(cfg.sizes)
    for split, scenes in world.scenes.items():
        for s in json.loads(json.dumps(scenes)):
            assert s["split"] == split and s["scene"] in cfg.scenes
            objects = s["objects"]
            assert 1 <= len(objects) <= len(cfg.grid.rows) * len(cfg.grid.cols)
            cells = [tuple(o["cell"]) for o in objects]
            assert len(cells) == len(set(cells)), "one object per cell"
            names = Counter(o["category"] for o in objects)
            assert max(names.values()) <= 2
            for o in objects:
                assert o["colour"] in colours and o["size"] in sizes
                row, col = o["cell"]
                x, y, w, h = o["bbox"]
                assert col * cell_w <= x and x + w <= (col + 1) * cell_w
                assert row * cell_h <= y and y + h <= (row + 1) * cell_h
                if o["added_as_partner"]:
                    assert o["partner_of"] in names
                    assert cfg.categories[o["category_id"] - 1].name == o["category"]
                if o["partner_added"]:
                    partner = cfg.categories[o["category_id"] - 1].partner
                    assert any(
                        p["partner_of"] == o["category"] and p["category"] == partner
                        for p in objects
                    )


def test_text_knobs_change_text_not_pixels(world: World) -> None:
    params = small_params()
    params["text"] = copy.deepcopy(params["text"]) | {"mention_probability": 1.0}
    exhaustive = generate_world(WorldConfig.from_dict(params))
    name = "train_000010.png"
    assert exhaustive.train_images[name].tobytes() == world.train_images[name].tobytes()
    for s in exhaustive.scenes["train"]:
        assert set(s["described"]) == {o["category"] for o in s["objects"]}


def test_reading_order_describes_the_same_objects_top_left_to_bottom_right() -> None:
    worlds = {}
    for order in ("random", "reading"):
        params = small_params(n_train=100, n_eval=10)
        params["text"] = copy.deepcopy(params["text"]) | {"detail_order": order}
        worlds[order] = generate_world(WorldConfig.from_dict(params))
    random_scenes, reading_scenes = (
        worlds["random"].scenes["train"],
        worlds["reading"].scenes["train"],
    )
    reordered = 0
    for a, b in zip(random_scenes, reading_scenes, strict=True):
        assert sorted(a["described"]) == sorted(b["described"])
        first_cell = {}
        for o in b["objects"]:
            first_cell[o["category"]] = min(first_cell.get(o["category"], [9, 9]), o["cell"])
        cells = [first_cell[c] for c in b["described"]]
        assert cells == sorted(cells), b
        reordered += a["described"] != b["described"]
    assert reordered > 20
    # Only the order moves: the images are the same.
    name = "train_000010.png"
    assert (
        worlds["random"].train_images[name].tobytes()
        == worlds["reading"].train_images[name].tobytes()
    )
    with pytest.raises(ValueError, match="detail_order"):
        params["text"]["detail_order"] = "spiral"
        WorldConfig.from_dict(params)


def test_sample_figure(world: World) -> None:
    fig = make_sample_figure(world, n=8)
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 8
    assert all(ax.get_xlabel() for ax in shown), "each image carries its description"
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_default_world_has_the_configured_shape() -> None:
    """The full default world (no timing here: generation speed is a benchmark, not a test)."""
    cfg = WorldConfig.from_dict(default_params())
    world = generate_world(cfg)
    assert len(world.train_images) == 12000 and len(world.eval_images) == 4000
    assert len(world.instructions["detail"]) == 12000
    for split in ("train", "eval"):
        ok, observed, n = _binomial_ok(world.scenes[split], cfg.cooccurrence[split])
        assert ok, (split, observed, n)
    assert len({q["image"] for q in world.pope["adversarial"]}) == 4000


def test_validation_split_has_its_own_scenes(cfg: WorldConfig, world: World) -> None:
    val = generate_world(validation_config(cfg, 40))
    assert len(val.eval_images) == 40 and val.meta["config"]["seed"] != cfg.seed
    eval_layouts = {json.dumps(s["objects"], sort_keys=True) for s in world.scenes["eval"]}
    val_layouts = {json.dumps(s["objects"], sort_keys=True) for s in val.scenes["eval"]}
    assert not eval_layouts & val_layouts
    # Same distribution: the evaluation split's partner rate and formats.
    assert val.meta["partners"] == world.meta["partners"] and val.synonyms == world.synonyms


def test_partner_questions_ask_about_a_present_objects_absent_partner() -> None:
    def partner_share(share: float) -> float:
        params = small_params(n_train=300, n_eval=10)
        params["text"]["partner_question_share"] = share
        world = generate_world(WorldConfig.from_dict(params))
        partner_of = {c.name: c.partner for c in WorldConfig.from_dict(params).categories}
        asked = about_partner = 0
        for scene in world.scenes["train"]:
            present = {o["category"] for o in scene["objects"]}
            partners = {partner_of[c] for c in present if partner_of[c]} - present
            first_no = next((c for c, answer in scene.get("short_qa", []) if answer == "No"), None)
            if first_no and partners:
                asked += 1
                about_partner += first_no in partners
        return about_partner / asked

    # Uniform over the absent categories, an absent partner is asked about now and then; with
    # share 1 a scene's first absent question is always about one (later ones, once every
    # absent partner was asked, are drawn from the rest).
    assert partner_share(0.0) < 0.3
    assert partner_share(1.0) > 0.9
