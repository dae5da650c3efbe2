"""What the tests share: the tiny LLaVA's sizes (on 32 px test scenes, and at the embedded world's
image size for the pipeline slice tests), and a catalog dataset that keeps its data for the
assertions."""

from __future__ import annotations

import dataclasses

from kedro.io import MemoryDataset

from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import ModelConfig

# Every size as small as it goes, on 32 px scenes in 8 px patches.
TINY_MODEL = ModelConfig(
    image_size=32,
    patch_size=8,
    vision_hidden_size=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate_size=64,
    text_hidden_size=48,
    text_layers=1,
    text_heads=2,
    text_kv_heads=2,
    text_intermediate_size=96,
    max_position_embeddings=128,
)
# The same model on the world's 96 px images in 16 px patches (36 image tokens).
TINY_WORLD_MODEL = dataclasses.replace(
    TINY_MODEL,
    image_size=project_parameters()["embedded_world"]["image_size"],
    patch_size=16,
    max_position_embeddings=256,
)


class KeptDataset(MemoryDataset):
    """A memory dataset the runner does not empty once its consumers have run."""

    def _release(self) -> None:
        pass
