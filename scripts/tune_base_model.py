"""Train the tiny base model on the embedded world and measure how (and why) it hallucinates.

An experiment driver for choosing the world's parameters and the base model's config: it builds
the world from ``conf/base/parameters_embedded_world.yml`` plus overrides (``--world``; the YAML
is not edited), ingests its records with the ``ingest_ground_truth`` parameters and trains the
base model with the function the ``base_model`` node calls (``train_scratch_model``) on the
``base_model`` parameters plus overrides (``--base-model``), then describes the validation
split's images (``--val-images``, a seed apart from the evaluation split) greedily and reports

- CHAIR_s, CHAIR_i, Recall and objects named per image (``povid_kedro.metrics.chair.Chair``);
- the co-occurrence rates of the evaluate pipeline (``povid_kedro.metrics.cooccurrence``): how
  often the model names an absent partner of a present object, against an absent object with no
  companion present. A base model that hallucinates "for the right reason" (its language prior)
  has a ratio well above 1;
- recall broken down by object size, occlusion, contrast and category.

The pipeline's base model, then one whose vision tower starts from weights trained on presence
labels (``probe_vision.py --save-vit``) and stays fixed::

    .venv/bin/python scripts/tune_base_model.py --seed 0 --out data/08_reporting/base.json
    .venv/bin/python scripts/tune_base_model.py --seed 0 --vision-tower /tmp/vit.pt \\
        --freeze-vision --out data/08_reporting/base_pretrained_tower.json

Re-score saved descriptions without training (same ``--world``)::

    .venv/bin/python scripts/tune_base_model.py --world '...' --score-only /tmp/answers.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from povid_kedro.datasets.image_folder import ImageFolderDataset  # noqa: E402
from povid_kedro.experiments import deep_merge, project_parameters  # noqa: E402
from povid_kedro.ingest import IngestConfig, ingest  # noqa: E402
from povid_kedro.ingest.images import ImageFolder  # noqa: E402
from povid_kedro.metrics.chair import Chair  # noqa: E402
from povid_kedro.metrics.cooccurrence import cooccurrence_hallucination  # noqa: E402
from povid_kedro.metrics.pope import score_pope  # noqa: E402
from povid_kedro.modeling import generate, save_model_dir  # noqa: E402
from povid_kedro.modeling.scratch import train_scratch_model  # noqa: E402
from povid_kedro.world import WorldConfig, generate_world, validation_config  # noqa: E402

logger = logging.getLogger("tune_base_model")

# The evaluate pipeline's prompts (conf/base/globals.yml).
EVALUATE = project_parameters()["evaluate"]
EVAL_PROMPT = EVALUATE["description_prompt"]
POPE_TEMPLATE = EVALUATE["pope_template"]


def evaluate(world: Any, answers: Sequence[str], files: Sequence[str]) -> dict[str, Any]:
    """CHAIR metrics and co-occurrence rates of descriptions of the evaluation images."""
    ids = {image["file_name"]: image["id"] for image in world.instances["images"]}
    chair = Chair(world.synonyms, world.instances, world.captions)
    scored = chair.score(
        {"image_id": ids[f], "caption": a} for f, a in zip(files, answers, strict=True)
    )
    names = {c["id"]: c["name"] for c in world.instances["categories"]}
    truth: dict[Any, set[str]] = {ids[f]: set() for f in files}
    for annotation in world.instances["annotations"]:
        truth.setdefault(annotation["image_id"], set()).add(names[annotation["category_id"]])
    per_caption = scored.pop("captions")
    present = [truth[ids[f]] for f in files]
    named = [set(c["objects"]) for c in per_caption]
    summary = {k: v for k, v in scored.items() if not isinstance(v, list)}
    summary["gt_objects_per_image"] = sum(map(len, present)) / len(present)
    summary["recall_by"] = _recall_breakdown(world, files, named)
    # The evaluate pipeline's definition (partner trials, control, present-partner recall).
    summary["cooccurrence"] = cooccurrence_hallucination(
        per_caption, world.meta["partners"], list(names.values())
    )
    return summary


def _recall_breakdown(
    world: Any, files: Sequence[str], named: Sequence[set[str]]
) -> dict[str, dict[str, float]]:
    """Share of present objects named, by size, occlusion, contrast and category."""
    scenes = {s["file_name"]: s for s in world.scenes["eval"]}
    hits: dict[str, dict[str, list[int]]] = {}

    def add(group: str, key: str, hit: bool) -> None:
        hits.setdefault(group, {}).setdefault(key, [0, 0])
        hits[group][key][0] += hit
        hits[group][key][1] += 1

    for f, said in zip(files, named, strict=True):
        for obj in scenes[f]["objects"]:
            hit = obj["category"] in said
            add("size", obj["size"], hit)
            add("occluded", str(obj["occluded"]), hit)
            add("contrast", "low" if obj["contrast"] < 0.8 else "high", hit)
            add("category", obj["category"], hit)
    return {
        group: {k: round(h / n, 3) for k, (h, n) in sorted(keys.items())}
        for group, keys in hits.items()
    }


def pope_scores(world: Any, model: Any, processor: Any, template: str) -> dict[str, Any]:
    """POPE accuracy, F1 and yes-ratio per split, asked with ``template``."""
    out = {}
    for split, questions in world.pope.items():
        texts = generate(
            model,
            processor,
            [world.eval_images[q["image"]] for q in questions],
            [template.format(question=q["text"]) for q in questions],
            max_new_tokens=4,
            batch_size=128,
            progress=False,
        )
        result = score_pope(
            questions,
            [
                {"question_id": q["question_id"], "text": t}
                for q, t in zip(questions, texts, strict=True)
            ],
        )
        out[split] = {k: round(float(result[k]), 4) for k in ("accuracy", "f1", "yes_ratio")}
        out[split]["top_answers"] = Counter(texts).most_common(3)
    return out


def _vision_init(path: Path | None, freeze: bool) -> Callable[[Any], None] | None:
    """A ``prepare`` hook for :func:`train_scratch_model`: load and/or freeze the tower."""
    if path is None and not freeze:
        return None

    def prepare(model: Any) -> None:
        tower = model.model.vision_tower
        if path is not None:
            tower.load_state_dict(torch.load(path, weights_only=True))
        tower.requires_grad_(not freeze)

    return prepare


def main(argv: list[str] | None = None) -> int:
    """Run one experiment and print (and optionally save) its results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="{}", help="JSON overrides of embedded_world params")
    parser.add_argument(
        "--base-model", default="{}", help="JSON overrides of the base_model parameters"
    )
    parser.add_argument("--seed", type=int, default=0, help="model init and data-order seed")
    parser.add_argument(
        "--vision-tower",
        type=Path,
        help="initialise the vision tower from these weights (probe_vision.py --save-vit)",
    )
    parser.add_argument(
        "--freeze-vision", action="store_true", help="keep the vision tower's weights fixed"
    )
    parser.add_argument(
        "--pope-template",
        default=POPE_TEMPLATE,
        help="how POPE questions are asked ('' skips POPE)",
    )
    parser.add_argument("--val-images", type=int, default=1000, help="validation images scored")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--answers", type=Path, help="write every description here (JSON)")
    parser.add_argument(
        "--score-only", type=Path, help="score saved descriptions (--answers) without training"
    )
    parser.add_argument("--save-dir", type=Path, help="save the trained model directory here")
    parser.add_argument("--samples", type=int, default=5, help="descriptions to print")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    overrides = json.loads(args.world)
    params = deep_merge(project_parameters()["embedded_world"], overrides)
    start = time.perf_counter()
    cfg = WorldConfig.from_dict(params)
    world = generate_world(cfg)
    # Scored on the validation split: the evaluation split is for the final tables only.
    val = generate_world(validation_config(cfg, args.val_images))
    world_seconds = time.perf_counter() - start

    if args.score_only:
        saved = json.loads(args.score_only.read_text())
        files = sorted(saved)
        metrics = evaluate(val, [saved[f] for f in files], files)
        print(json.dumps({"world_overrides": overrides, "metrics": metrics}, indent=2))  # noqa: T201
        return 0

    base = deep_merge(project_parameters()["base_model"], json.loads(args.base_model))
    base["model"]["seed"] = base["train"]["seed"] = args.seed
    base["train"]["num_threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        # The world's files as the pipelines read them: images in a folder, records ingested.
        ImageFolderDataset(tmp).save(world.train_images)
        folder = ImageFolder(tmp)
        ingest_cfg = IngestConfig.from_dict(project_parameters()["ingest_ground_truth"])
        ground_truth, _, _, _ = ingest(world.instructions, folder, ingest_cfg)
        model, processor, result = train_scratch_model(
            ground_truth,
            folder.open,
            tasks=base["tasks"],
            text_warmup=base["text_warmup"],
            tokenizer=base["tokenizer"],
            model=base["model"],
            train=base["train"],
            extra_texts=[EVAL_PROMPT, POPE_TEMPLATE],
            task_weights=base.get("task_weights"),
            pack_turns=bool(base.get("pack_turns", False)),
            prepare=_vision_init(args.vision_tower, args.freeze_vision),
        )

    files = sorted(val.eval_images)
    start = time.perf_counter()
    answers = generate(
        model,
        processor,
        [val.eval_images[f] for f in files],
        [EVAL_PROMPT] * len(files),
        max_new_tokens=args.max_new_tokens,
        batch_size=64,
        progress=False,
    )
    generate_seconds = time.perf_counter() - start
    metrics = evaluate(val, answers, files)
    if args.pope_template:
        metrics["pope"] = pope_scores(val, model, processor, args.pope_template)
    report = {
        "seed": args.seed,
        "world_overrides": overrides,
        "base_model": base,
        "vision_tower": str(args.vision_tower) if args.vision_tower else None,
        "freeze_vision": args.freeze_vision,
        "n_train_rows": len(ground_truth),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab": len(processor.tokenizer),
        "world_seconds": round(world_seconds, 1),
        "train_seconds": round(result.seconds, 1),
        "generate_seconds": round(generate_seconds, 1),
        "final_loss": sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
        "final_task_loss": {
            task: round(sum(v[-50:]) / len(v[-50:]), 4) for task, v in result.task_losses.items()
        },
        "metrics": metrics,
        "samples": [
            {"file": f, "answer": a}
            for f, a in zip(files[: args.samples], answers[: args.samples], strict=True)
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)  # noqa: T201
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.answers:
        args.answers.write_text(json.dumps(dict(zip(files, answers, strict=True)), indent=0))
    if args.save_dir:
        save_model_dir(model, processor, args.save_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
