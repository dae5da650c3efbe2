"""The embedded synthetic world: a seeded "toy COCO" of images and ground truth.

Library code (no Kedro): :class:`WorldConfig` is built from the ``embedded_world:`` parameters,
:func:`generate_world` makes the images and their ground truth in the real formats
(LLaVA-Instruct, COCO instances/captions, CHAIR synonym list, POPE), and
:func:`make_sample_figure` draws a sample sheet for reporting.
"""

from povid_kedro.world.config import WorldConfig
from povid_kedro.world.figure import make_sample_figure
from povid_kedro.world.generate import World, generate_world, validation_config
from povid_kedro.world.grammar import description_grammar

__all__ = [
    "World",
    "WorldConfig",
    "description_grammar",
    "generate_world",
    "make_sample_figure",
    "validation_config",
]
