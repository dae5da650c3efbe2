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

from povid_kedro.metrics.pope_questions import build_pope_questions
from povid_kedro.parallel import process_map
from povid_kedro.schema import POPE_SPLITS
from povid_kedro.world.config import VisualConfig, WorldConfig
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
        train_images: File name (``train_000001.png``) -> RGB image.
        eval_images: File name (``val_000001.png``) -> RGB image.
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

    train_images: dict[str, Image.Image]
    eval_images: dict[str, Image.Image]
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


@dataclass(frozen=True)
class _Render:
    """What one image's pixels depend on: its render seed, the scene's layout, the look."""

    seed: np.random.SeedSequence
    background: tuple[int, ...]
    objects: list[Placed]
    n_strokes: int
    visual: VisualConfig
    image_size: int


def _render(job: _Render) -> tuple[Image.Image, list[int]]:
    vis = job.visual
    return render_scene(
        np.random.default_rng(job.seed),
        image_size=job.image_size,
        background=job.background,
        objects=job.objects,
        n_strokes=job.n_strokes,
        texture=vis.texture,
        texture_cells=vis.texture_cells,
        noise_std=vis.noise_std,
        supersample=vis.supersample,
    )


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
    sampler, writer = SceneSampler(cfg), TextWriter(cfg)
    split_seeds = dict(
        zip(("train", "eval"), np.random.SeedSequence(cfg.seed).spawn(2), strict=True)
    )
    sizes = {"train": cfg.n_train_images, "eval": cfg.n_eval_images}
    images: dict[str, dict[str, Image.Image]] = {"train": {}, "eval": {}}
    scenes: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    areas: dict[str, list[int]] = {}
    detail: list[dict[str, Any]] = []
    reasoning: list[dict[str, Any]] = []
    short_qa: list[dict[str, Any]] = []
    captions: dict[str, list[str]] = {}
    renders: list[tuple[str, str, _Render]] = []

    for split, n in sizes.items():
        for index, image_seed in enumerate(split_seeds[split].spawn(n)):
            scene_seed, render_seed, text_seed, short_seed = image_seed.spawn(4)
            image_id = index + 1
            file_name = f"{_PREFIX[split]}_{image_id:06d}.png"
            scene = sampler.sample(
                np.random.default_rng(scene_seed),
                split=split,
                image_id=image_id,
                file_name=file_name,
            )
            job = _Render(
                render_seed,
                tuple(cfg.scenes[scene["scene"]].background),
                sampler.placed(scene),
                scene["clutter_strokes"],
                cfg.visual,
                cfg.image_size,
            )
            renders.append((split, file_name, job))
            rng = np.random.default_rng(text_seed)
            if split == "train":
                want_detail = rng.random() < cfg.text.detail_share
                want_reasoning = rng.random() < cfg.text.reasoning_share
                turns = 2 if rng.random() < cfg.text.multi_turn_share else 1
                if want_detail:
                    text, mentioned = writer.detail(rng, scene)
                    prompt = writer.detail_prompt(rng)
                    scene["described"] = mentioned
                    detail.append(
                        llava_record(
                            f"detail_{image_id:06d}", file_name, conversation([(prompt, text)])
                        )
                    )
                if want_reasoning:
                    qa = writer.reasoning(rng, scene, turns)
                    scene["reasoning_kinds"] = [kind for kind, _, _ in qa]
                    reasoning.append(
                        llava_record(
                            f"reasoning_{image_id:06d}",
                            file_name,
                            conversation([(q, a) for _, q, a in qa]),
                        )
                    )
                # Its own generator, so adding short answers leaves the other text unchanged.
                short_rng = np.random.default_rng(short_seed)
                if short_rng.random() < cfg.text.short_qa_share:
                    qa = writer.short_qa(short_rng, scene, cfg.text.short_qa_turns)
                    scene["short_qa"] = [[name, a] for name, _, a in qa]
                    short_qa.append(
                        llava_record(
                            f"vqa_{image_id:06d}",
                            file_name,
                            conversation([(q, a) for _, q, a in qa]),
                        )
                    )
            else:
                captions[file_name] = writer.captions(rng, scene)
            scenes[split].append(scene)

    # Pixels last: the text never depends on them, and the drawing runs over several processes.
    drawn = process_map(_render, [job for _, _, job in renders], workers=workers)
    for (split, file_name, _), (image, visible) in zip(renders, drawn, strict=True):
        images[split][file_name] = image
        areas[file_name] = visible

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
        train_images=images["train"],
        eval_images=images["eval"],
        instructions={"detail": detail, "complex_reasoning": reasoning, "vqa": short_qa},
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
        len(detail),
        len(reasoning),
        len(short_qa),
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
