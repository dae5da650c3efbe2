"""The dpo_training pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_stage1_node, train_stage2_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=train_stage1_node,
                inputs=["base_model", "trl_preferences", "train_images", "params:dpo_training"],
                outputs=["stage1_model", "stage1_metrics", "stage1_curves"],
                name="train_stage1_node",
            ),
            Node(
                func=train_stage2_node,
                inputs=[
                    "stage1_model",
                    "trl_preferences",
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
