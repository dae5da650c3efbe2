"""The ablation pipeline (not part of ``__default__``: it trains every row for every seed).

``kedro run --pipeline ablation`` after a default run (it reads the base model and the pairs).
"""

from kedro.pipeline import Node, Pipeline

from povid_kedro.pipelines.dpo_training.pipeline import PAIR_SOURCES

from .nodes import ablation_report_node, run_ablation_node, validation_split_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            PAIR_SOURCES,
            Node(
                func=validation_split_node,
                inputs=["params:embedded_world", "params:ablation"],
                outputs=["ablation_validation_images", "ablation_validation_truth"],
                name="validation_split_node",
            ),
            Node(
                func=run_ablation_node,
                inputs=[
                    "base_model",
                    "trl_preferences",
                    "train_images",
                    "ablation_validation_images",
                    "ablation_validation_truth",
                    "params:ablation",
                    "params:dpo_training",
                    "params:noise_trigger",
                    "params:evaluate",
                    "params:on_policy",
                    "on_policy_sources",
                ],
                outputs=["ablation_results", "ablation_metrics"],
                name="run_ablation_node",
            ),
            Node(
                func=ablation_report_node,
                inputs="ablation_results",
                outputs=["ablation_table", "ablation_report"],
                name="ablation_report_node",
            ),
        ]
    )
