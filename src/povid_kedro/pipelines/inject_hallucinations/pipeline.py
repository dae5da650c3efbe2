"""The inject_hallucinations pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import export_pairs_node, inject_hallucinations_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=inject_hallucinations_node,
                inputs=[
                    "ground_truth_train",
                    "ground_truth_eval",
                    "train_images",
                    "object_synonyms",
                    "openai_client",
                    "injection_cache",
                    "params:inject_hallucinations",
                ],
                outputs=["preference_pairs", "injection_failures", "injection_metrics"],
                name="inject_hallucinations_node",
            ),
            Node(
                func=export_pairs_node,
                inputs=["preference_pairs", "params:inject_hallucinations"],
                outputs=["povid_preferences", "trl_preferences", "injection_report"],
                name="export_pairs_node",
            ),
        ]
    )
