"""What the pipeline slice tests share: a tiny LLaVA at the world's image size and a catalog
dataset that keeps its data for the assertions."""

from __future__ import annotations

from kedro.io import MemoryDataset

from povid_kedro.experiments import project_parameters
from povid_kedro.modeling import ModelConfig

# The world's 96 px images in 16 px patches, every other size as small as it goes.
TINY_WORLD_MODEL = ModelConfig(
    image_size=project_parameters()["embedded_world"]["image_size"],
    patch_size=16,
    vision_hidden_size=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate_size=64,
    text_hidden_size=48,
    text_layers=1,
    text_heads=2,
    text_kv_heads=2,
    text_intermediate_size=96,
    max_position_embeddings=256,
)


class KeptDataset(MemoryDataset):
    """A memory dataset the runner does not empty once its consumers have run."""

    def _release(self) -> None:
        pass
