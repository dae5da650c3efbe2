"""The noise_trigger pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import make_noisy_images_node, noise_figure_node, noisy_responses_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=make_noisy_images_node,
                inputs=["preference_pairs", "train_images", "params:noise_trigger"],
                outputs="noisy_images",
                name="make_noisy_images_node",
            ),
            Node(
                func=noisy_responses_node,
                inputs=["base_model", "noisy_images", "preference_pairs", "params:noise_trigger"],
                outputs="noisy_responses",
                name="noisy_responses_node",
            ),
            Node(
                func=noise_figure_node,
                inputs=["base_model", "train_images", "preference_pairs", "params:noise_trigger"],
                outputs="noise_figure",
                name="noise_figure_node",
            ),
        ]
    )
