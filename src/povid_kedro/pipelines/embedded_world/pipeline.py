"""The embedded_world pipeline: a seeded synthetic world written in the real formats."""

from kedro.pipeline import Node, Pipeline

from .nodes import generate_world_node

WORLD_OUTPUTS = [
    "train_images",
    "eval_images",
    "instructions",
    "eval_instances",
    "train_instances",
    "eval_captions",
    "object_synonyms",
    "pope_random",
    "pope_popular",
    "pope_adversarial",
    "world_scenes",
    "world_meta",
    "cooccurrence_partners",
    "description_grammar",
    "world_samples_figure",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=generate_world_node,
                inputs="params:embedded_world",
                outputs={name: name for name in WORLD_OUTPUTS},
                name="generate_world_node",
            )
        ]
    )
