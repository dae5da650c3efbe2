"""The dpo_training pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    pair_sources_node,
    stage1_pairs_node,
    stage2_pairs_node,
    train_stage1_node,
    train_stage2_node,
)

# What on-policy pairs are made from besides the model (the ablation pipeline reads it too).
PAIR_SOURCES = Node(
    func=pair_sources_node,
    inputs=[
        "train_images",
        "train_instances",
        "object_synonyms",
        "cooccurrence_partners",
        "description_grammar",
    ],
    outputs="on_policy_sources",
    name="pair_sources_node",
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            PAIR_SOURCES,
            Node(
                func=stage1_pairs_node,
                inputs=["base_model", "trl_preferences", "on_policy_sources", "params:on_policy"],
                outputs=["stage1_preferences", "stage1_on_policy_metrics"],
                name="stage1_pairs_node",
            ),
            Node(
                func=train_stage1_node,
                inputs=["base_model", "stage1_preferences", "train_images", "params:dpo_training"],
                outputs=["stage1_model", "stage1_metrics", "stage1_curves"],
                name="train_stage1_node",
            ),
            Node(
                func=stage2_pairs_node,
                inputs=[
                    "stage1_model",
                    "trl_preferences",
                    "on_policy_sources",
                    "params:on_policy",
                ],
                outputs=["stage2_preferences", "stage2_on_policy_metrics"],
                name="stage2_pairs_node",
            ),
            Node(
                func=train_stage2_node,
                inputs=[
                    "stage1_model",
                    "stage2_preferences",
                    "noisy_responses",
                    "train_images",
                    "params:dpo_training",
                    "params:noise_trigger",
                ],
                outputs=["stage2_model", "stage2_candidate", "stage2_metrics", "stage2_curves"],
                name="train_stage2_node",
            ),
        ]
    )
