"""The base_model pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_base_model_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=build_base_model_node,
                inputs=[
                    "ground_truth_train",
                    "train_images",
                    "object_synonyms",
                    "params:base_model",
                    "params:evaluate",
                ],
                outputs=["base_model", "base_model_training_metrics", "base_model_loss_figure"],
                name="build_base_model_node",
            )
        ]
    )
