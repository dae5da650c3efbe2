"""Nodes of the embedded_world pipeline."""

from __future__ import annotations

import logging
from typing import Any

from povid_kedro.world import WorldConfig, generate_world, make_sample_figure

logger = logging.getLogger(__name__)


def generate_world_node(params: dict[str, Any]) -> dict[str, Any]:
    """Generate the synthetic world in the real file formats.

    Args:
        params: The ``embedded_world`` parameters.

    Returns:
        Training and evaluation images, LLaVA-Instruct files, COCO instances (both splits) and
        captions,
        the synonym list, POPE question files, the scene truth, the world's metadata and a
        figure of samples.
    """
    world = generate_world(WorldConfig.from_dict(params))
    logger.info(
        "embedded world: %d training images, %d evaluation images, %s instruction records",
        len(world.train_images),
        len(world.eval_images),
        {name: len(records) for name, records in world.instructions.items()},
    )
    return {
        "train_images": world.train_images,
        "eval_images": world.eval_images,
        "instructions": world.instructions,
        "eval_instances": world.instances,
        "train_instances": world.train_instances,
        "eval_captions": world.captions,
        "object_synonyms": world.synonyms,
        "pope_random": world.pope["random"],
        "pope_popular": world.pope["popular"],
        "pope_adversarial": world.pope["adversarial"],
        "world_scenes": world.scenes,
        "world_meta": world.meta,
        "cooccurrence_partners": world.meta["partners"],
        "description_grammar": {"sentence_forms": world.description_grammar},
        "world_samples_figure": make_sample_figure(world),
    }
