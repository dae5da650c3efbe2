"""Generation of a whole world: scenes, images, text and ground-truth files from one config.

Seeding: ``SeedSequence(cfg.seed)`` spawns one child per split, each split one child per image,
and each image four children (scene truth, pixels, text, short answers). An image therefore
depends only on the seed, its split and its index: changing ``n_eval_images`` leaves the
training images alone, and changing a text knob leaves every pixel alone. No global random state
is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from povid_kedro.ingest.images import EncodedImages, encode_image
from povid_kedro.metrics.pope_questions import build_pope_questions
from povid_kedro.parallel import process_map
from povid_kedro.schema import POPE_SPLITS
from povid_kedro.world.config import WorldConfig
from povid_kedro.world.formats import (
    coco_captions,
    coco_categories,
    coco_instances,
    llava_record,
    synonyms_text,
)
from povid_kedro.world.grammar import description_grammar
from povid_kedro.world.render import Placed, render_scene
from povid_kedro.world.scenes import SceneSampler
from povid_kedro.world.text import TextWriter, conversation

logger = logging.getLogger(__name__)

_PREFIX = {"train": "train", "eval": "val"}
VALIDATION_SEED_KEY = 1  # the validation split's seed is derived from (seed, this)


@dataclass
class World:
    """A generated world: images and their ground truth in the real formats.

    Attributes:
        train_images: File name (``train_000001.png``) -> RGB image (held as its PNG file,
            decoded when read).
        eval_images: File name (``val_000001.png``) -> RGB image, likewise.
        instructions: ``{"detail": [...], "complex_reasoning": [...], "vqa": [...]}``
            LLaVA-Instruct records for training images (``vqa``: one-word presence answers).
        instances: COCO ``instances_*.json`` document of the evaluation images.
        train_instances: The same for the training images (what on-policy pairs are scored
            against, as COCO's ``instances_train2014.json`` at real scale).
        captions: COCO ``captions_*.json`` document of the evaluation images.
        synonyms: Synonym list text (``canonical, syn1, ...`` per line).
        pope: POPE question records per split (``random``, ``popular``, ``adversarial``).
        scenes: Structured truth per image, ``{"train": [...], "eval": [...]}`` (see
            :meth:`SceneSampler.sample`); training records also carry ``described`` (categories
            the detailed description mentions) and ``reasoning_kinds`` where they have them.
        meta: JSON-able summary: categories, synonyms, partners, scene types, statistics and
            the config used.
        description_grammar: Regular expressions of the descriptions' sentence forms.
    """

    train_images: EncodedImages
    eval_images: EncodedImages
    instructions: dict[str, list[dict[str, Any]]]
    instances: dict[str, Any]
    train_instances: dict[str, Any]
    captions: dict[str, Any]
    synonyms: str
    pope: dict[str, list[dict[str, Any]]]
    scenes: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any]
    description_grammar: list[str]


def validation_config(cfg: WorldConfig, n_images: int) -> WorldConfig:
    """The config of the validation split: evaluation scenes drawn from another seed.

    Its evaluation images follow the evaluation split's distribution but share no scene with
    it, so defaults can be tuned on them while the evaluation split is read only for the final
    tables.

    Args:
        cfg: The world config.
        n_images: Validation images.

    Returns:
        The same world with a derived seed, ``n_images`` evaluation images and one training image.
    """
    seed = int(np.random.SeedSequence([cfg.seed, VALIDATION_SEED_KEY]).generate_state(1)[0])
    return dataclasses.replace(cfg, seed=seed, n_train_images=1, n_eval_images=n_images)


def _render(
    cfg: WorldConfig, seed: np.random.SeedSequence, scene: dict[str, Any], objects: list[Placed]
) -> tuple[Image.Image, list[int]]:
    vis = cfg.visual
    return render_scene(
        np.random.default_rng(seed),
        image_size=cfg.image_size,
        background=tuple(cfg.scenes[scene["scene"]].background),
        objects=objects,
        n_strokes=scene["clutter_strokes"],
        texture=vis.texture,
        texture_cells=vis.texture_cells,
        noise_std=vis.noise_std,
        supersample=vis.supersample,
    )


@dataclass
class _Drawn:
    """One image's share of the world."""

    scene: dict[str, Any]
    records: dict[str, dict[str, Any]]  # instruction file -> this image's LLaVA record
    captions: list[str] | None  # evaluation images only
    png: bytes
    visible: list[int]  # each object's visible area, for the COCO instances


class _ImageMaker:
    """Draws one image's scene, text and pixels from its seed, and encodes the PNG: a picklable
    callable for :func:`process_map`, so all of an image's work runs in one worker and only
    its scene, text and file come back. The samplers are rebuilt where it runs, not sent."""

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self._tools: tuple[SceneSampler, TextWriter] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "_tools": None}

    def __call__(self, job: tuple[str, int, np.random.SeedSequence]) -> _Drawn:
        split, index, image_seed = job
        if self._tools is None:
            self._tools = SceneSampler(self.cfg), TextWriter(self.cfg)
        sampler, writer = self._tools
        cfg = self.cfg
        scene_seed, render_seed, text_seed, short_seed = image_seed.spawn(4)
        image_id = index + 1
        file_name = f"{_PREFIX[split]}_{image_id:06d}.png"
        scene = sampler.sample(
            np.random.default_rng(scene_seed), split=split, image_id=image_id, file_name=file_name
        )
        image, visible = _render(cfg, render_seed, scene, sampler.placed(scene))
        records: dict[str, dict[str, Any]] = {}
        captions = None
        rng = np.random.default_rng(text_seed)
        if split == "train":
            want_detail = rng.random() < cfg.text.detail_share
            want_reasoning = rng.random() < cfg.text.reasoning_share
            turns = 2 if rng.random() < cfg.text.multi_turn_share else 1
            if want_detail:
                text, mentioned = writer.detail(rng, scene)
                prompt = writer.detail_prompt(rng)
                scene["described"] = mentioned
                records["detail"] = llava_record(
                    f"detail_{image_id:06d}", file_name, conversation([(prompt, text)])
                )
            if want_reasoning:
                qa = writer.reasoning(rng, scene, turns)
                scene["reasoning_kinds"] = [kind for kind, _, _ in qa]
                records["complex_reasoning"] = llava_record(
                    f"reasoning_{image_id:06d}",
                    file_name,
                    conversation([(q, a) for _, q, a in qa]),
                )
            # Its own generator, so adding short answers leaves the other text unchanged.
            short_rng = np.random.default_rng(short_seed)
            if short_rng.random() < cfg.text.short_qa_share:
                qa = writer.short_qa(short_rng, scene, cfg.text.short_qa_turns)
                scene["short_qa"] = [[name, a] for name, _, a in qa]
                records["vqa"] = llava_record(
                    f"vqa_{image_id:06d}", file_name, conversation([(q, a) for _, q, a in qa])
                )
        else:
            captions = writer.captions(rng, scene)
        return _Drawn(scene, records, captions, encode_image(image, "PNG"), visible)


def generate_world(cfg: WorldConfig, workers: int | None = None) -> World:
    """Generate the world a config describes; deterministic in ``cfg.seed``.

    Args:
        cfg: A validated config (see :meth:`WorldConfig.from_dict`).
        workers: Processes that draw the images (default: the CPUs this process may use); the
            world is the same for any number.

    Returns:
        The world.
    """
    start = time.perf_counter()
    split_seeds = dict(
        zip(("train", "eval"), np.random.SeedSequence(cfg.seed).spawn(2), strict=True)
    )
    sizes = {"train": cfg.n_train_images, "eval": cfg.n_eval_images}
    jobs = [
        (split, index, image_seed)
        for split, n in sizes.items()
        for index, image_seed in enumerate(split_seeds[split].spawn(n))
    ]
    files: dict[str, dict[str, bytes]] = {"train": {}, "eval": {}}
    scenes: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    areas: dict[str, list[int]] = {}
    instructions: dict[str, list[dict[str, Any]]] = {
        "detail": [],
        "complex_reasoning": [],
        "vqa": [],
    }
    captions: dict[str, list[str]] = {}
    for (split, _, _), drawn in zip(
        jobs, process_map(_ImageMaker(cfg), jobs, workers=workers), strict=True
    ):
        file_name = drawn.scene["file_name"]
        files[split][file_name] = drawn.png
        areas[file_name] = drawn.visible
        scenes[split].append(drawn.scene)
        for name, record in drawn.records.items():
            instructions[name].append(record)
        if drawn.captions is not None:
            captions[file_name] = drawn.captions

    instances, train_instances = (
        coco_instances(cfg, part, {s["file_name"]: areas[s["file_name"]] for s in part})
        for part in (scenes["eval"], scenes["train"])
    )
    pope = {
        split: build_pope_questions(
            instances, split=split, num_per_image=cfg.pope.num_per_image, seed=cfg.pope.seed
        )
        for split in POPE_SPLITS
    }
    world = World(
        train_images=EncodedImages(files["train"]),
        eval_images=EncodedImages(files["eval"]),
        instructions=instructions,
        instances=instances,
        train_instances=train_instances,
        captions=coco_captions(cfg, scenes["eval"], captions),
        synonyms=synonyms_text(cfg),
        pope=pope,
        scenes=scenes,
        meta=_meta(cfg, scenes),
        description_grammar=description_grammar(cfg),
    )
    logger.info(
        "Generated world: %d train / %d eval images, %d detail + %d reasoning + %d short-answer "
        "records in %.1f s",
        len(world.train_images),
        len(world.eval_images),
        len(instructions["detail"]),
        len(instructions["complex_reasoning"]),
        len(instructions["vqa"]),
        time.perf_counter() - start,
    )
    return world


def split_statistics(scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise the scenes of one split.

    Args:
        scenes: Scene records of one split.

    Returns:
        Image and object counts, the empirical partner rate (added / trials), images per
        category and per scene type.
    """
    trials = sum(o["partner_trial"] for s in scenes for o in s["objects"])
    added = sum(o["partner_added"] for s in scenes for o in s["objects"])
    per_cat: Counter[str] = Counter()
    for s in scenes:
        per_cat.update({o["category"] for o in s["objects"]})
    n_objects = sum(len(s["objects"]) for s in scenes)
    return {
        "images": len(scenes),
        "objects": n_objects,
        "objects_per_image": round(n_objects / max(1, len(scenes)), 4),
        "partner_trials": int(trials),
        "partners_added": int(added),
        "partner_rate": round(added / trials, 4) if trials else None,
        "occluded_objects": sum(o["occluded"] for s in scenes for o in s["objects"]),
        "images_per_category": dict(sorted(per_cat.items())),
        "images_per_scene": dict(sorted(Counter(s["scene"] for s in scenes).items())),
    }


def _meta(cfg: WorldConfig, scenes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "categories": [
            dict(cat, glyph=c.glyph, weight=c.weight, partner=c.partner, plural=cfg.plural(c.name))
            for cat, c in zip(coco_categories(cfg), cfg.categories, strict=True)
        ],
        "synonyms": {c.name: [c.name, *c.synonyms] for c in cfg.categories},
        "plurals": {w: cfg.plural(w) for c in cfg.categories for w in (c.name, *c.synonyms)},
        "partners": {c.name: c.partner for c in cfg.categories if c.partner is not None},
        "scene_types": {
            name: {
                "phrases": list(s.phrases),
                "categories": [c.name for c in cfg.categories if c.scene == name],
            }
            for name, s in cfg.scenes.items()
        },
        "colours": {k: list(v) for k, v in cfg.colours.items()},
        "statistics": {split: split_statistics(s) for split, s in scenes.items()},
        "config": cfg.to_dict(),
    }
