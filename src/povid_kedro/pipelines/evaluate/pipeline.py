"""The evaluate pipeline: one namespaced copy per model, then a side-by-side report."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    answer_pope_node,
    champion_gate_node,
    describe_eval_images_node,
    evaluation_set_node,
    gallery_node,
    mmhal_node,
    report_node,
    score_node,
    to_mlflow_metrics,
    weights_digest_node,
)

# Namespace -> the catalog entry of the model it evaluates.
MODELS = {"base": "base_model", "stage1": "stage1_model", "stage2": "stage2_model"}

SHARED_INPUTS = {
    "eval_images",
    "eval_instances",
    "eval_captions",
    "object_synonyms",
    "pope_random",
    "pope_popular",
    "pope_adversarial",
    "cooccurrence_partners",
    "description_grammar",
    "mmhal_bench",
    "judge_client",
}


def _evaluate_one_model() -> Pipeline:
    pope = ["pope_random", "pope_popular", "pope_adversarial"]
    return Pipeline(
        [
            Node(
                func=describe_eval_images_node,
                inputs=["model", "eval_images", "eval_instances", "params:evaluate"],
                outputs="captions",
                name="describe_eval_images_node",
            ),
            Node(
                func=answer_pope_node,
                inputs=["model", "eval_images", *pope, "params:evaluate"],
                outputs="pope_answers",
                name="answer_pope_node",
            ),
            Node(
                func=mmhal_node,
                inputs=["model", "mmhal_bench", "judge_client", "params:evaluate"],
                outputs="mmhal",
                name="mmhal_node",
            ),
            Node(
                func=score_node,
                inputs=[
                    "captions",
                    "pope_answers",
                    *pope,
                    "eval_instances",
                    "eval_captions",
                    "object_synonyms",
                    "cooccurrence_partners",
                    "mmhal",
                    "description_grammar",
                ],
                outputs=["chair", "pope", "summary"],
                name="score_node",
            ),
            Node(
                func=to_mlflow_metrics,
                inputs="summary",
                outputs="metrics",
                name="track_metrics_node",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    per_model = [
        Pipeline(
            _evaluate_one_model(),
            namespace=namespace,
            inputs={"model": model, **{name: name for name in SHARED_INPUTS}},
            parameters={"params:evaluate": "params:evaluate"},
        )
        for namespace, model in MODELS.items()
    ]
    digest = Node(
        func=weights_digest_node,
        inputs="stage2_model",
        outputs="stage2_weights_digest",
        name="weights_digest_node",
    )
    eval_set = Node(
        func=evaluation_set_node,
        inputs=[
            "stage2.captions",
            "stage2.pope_answers",
            "pope_random",
            "pope_popular",
            "pope_adversarial",
            "eval_instances",
        ],
        outputs="evaluation_set",
        name="evaluation_set_node",
    )
    gate = Node(
        func=champion_gate_node,
        inputs=[
            "stage2.summary",
            "base.summary",
            "stage2_weights_digest",
            "evaluation_set",
            "stage2_candidate",
            "champion",
            "params:evaluate",
        ],
        outputs=["champion_update", "gate_decision"],
        name="champion_gate_node",
    )
    report = Node(
        func=report_node,
        inputs={
            "gate_decision": "gate_decision",
            **{namespace: f"{namespace}.summary" for namespace in MODELS},
        },
        outputs=["evaluation_report", "evaluation_figure"],
        name="report_node",
    )
    gallery = Node(
        func=gallery_node,
        inputs={
            "eval_images": "eval_images",
            "eval_instances": "eval_instances",
            "pope_random": "pope_random",
            "pope_popular": "pope_popular",
            "pope_adversarial": "pope_adversarial",
            "params": "params:evaluate",
            **{
                f"{namespace}__{output}": f"{namespace}.{output}"
                for namespace in MODELS
                for output in ("chair", "pope_answers")
            },
        },
        outputs="evaluation_gallery",
        name="gallery_node",
    )
    return Pipeline([*per_model, digest, eval_set, gate, report, gallery])
