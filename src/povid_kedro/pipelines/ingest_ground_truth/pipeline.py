"""The ingest_ground_truth pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import ingest_ground_truth_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=ingest_ground_truth_node,
                inputs=["instructions", "train_images", "params:ingest_ground_truth"],
                outputs=[
                    "ground_truth_train",
                    "ground_truth_eval",
                    "ingest_quarantine",
                    "ingest_metrics",
                ],
                name="ingest_ground_truth_node",
            )
        ]
    )
