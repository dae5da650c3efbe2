"""Evaluate one model: describe the evaluation images, answer POPE, score, report.

Library code behind the ``evaluate`` pipeline; the same functions serve the tiny embedded
model and LLaVA-1.5-7B.
"""

from __future__ import annotations

import logging
import posixpath
import random
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.modeling.generate import generate
from povid_kedro.schema import POPE_SPLITS

logger = logging.getLogger(__name__)


def _open_rgb(images: ImageFolder, relpath: str, where: str) -> Image.Image:
    try:
        return images.open(relpath).convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def describe_images(
    model: Any,
    processor: Any,
    images: ImageFolder,
    instances: Mapping[str, Any],
    *,
    prompt: str,
    generation: Mapping[str, Any],
    limit: int | None = None,
    sample: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Generate a description of every evaluation image listed in COCO ``instances``.

    Args:
        model: The image-text-to-text model.
        processor: Its processor.
        images: The evaluation image folder.
        instances: COCO ``instances_*.json`` content; its ``images`` are described.
        prompt: The instruction, with ``<image>``.
        generation: Keyword arguments of :func:`povid_kedro.modeling.generate.generate`.
        limit: Describe only the first ``limit`` images (by id).
        sample: ``(size, seed)``: describe a seeded random sample of ``size`` images (the same
            instances file gives the same images), in id order.

    Returns:
        ``{"image_id", "image", "caption"}`` per image, the CHAIR tool's caption format.
    """
    entries = sorted(instances.get("images", []), key=lambda e: e["id"])[:limit]
    if sample is not None and sample[0] < len(entries):
        size, seed = sample
        picked = random.Random(seed).sample(range(len(entries)), size)
        entries = [entries[i] for i in sorted(picked)]
    if not entries:
        raise ValueError(
            "the evaluation set is empty: the COCO instances file lists no image "
            "(check eval_instances in the catalog)"
        )
    pil = [_open_rgb(images, e["file_name"], f"instances image id {e['id']}") for e in entries]
    texts = generate(model, processor, pil, [prompt] * len(pil), **generation)
    return [
        {"image_id": e["id"], "image": e["file_name"], "caption": text}
        for e, text in zip(entries, texts, strict=True)
    ]


def answer_pope(
    model: Any,
    processor: Any,
    images: ImageFolder,
    questions: Sequence[Mapping[str, Any]],
    *,
    template: str,
    generation: Mapping[str, Any],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Answer POPE questions (``question_id, image, text, label``).

    Args:
        template: How a question is asked, with ``{question}`` (and ``<image>``).
        limit: Answer only the first ``limit`` questions.

    Returns:
        ``{"question_id", "text"}`` per question, POPE's answer format.
    """
    return answer_pope_splits(
        model,
        processor,
        images,
        {"": questions},
        template=template,
        generation=generation,
        limit=limit,
    )[""]


def answer_pope_splits(
    model: Any,
    processor: Any,
    images: ImageFolder,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    template: str,
    generation: Mapping[str, Any],
    limit: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Answer several POPE splits, each question (image and text) once.

    The splits share their images and their questions about present objects, so a question
    asked in several splits is generated once and its answer given to each; questions are
    decoded in image order, so that an image's questions share a batch and one image encoding.

    Args:
        splits: Split name -> its questions (``question_id, image, text, label``).
        template: How a question is asked, with ``{question}`` (and ``<image>``).
        limit: Answer only the first ``limit`` questions of each split.

    Returns:
        Split name -> ``{"question_id", "text"}`` per question, POPE's answer format.
    """
    chosen: dict[str, list[Mapping[str, Any]]] = {}
    opened: dict[str, Image.Image] = {}
    for split, questions in splits.items():
        chosen[split] = list(questions)[:limit]
        if not chosen[split]:
            named = f" ({split})" if split else ""
            raise ValueError(
                f"the POPE question file{named} is empty (check pope_* in the catalog)"
            )
        for q in chosen[split]:
            for key in ("question_id", "image", "text"):
                if key not in q:
                    raise ValueError(f"POPE question {q!r} has no {key!r}")
            if q["image"] not in opened:
                where = f"POPE question {q['question_id']}"
                opened[q["image"]] = _open_rgb(images, q["image"], where)
    asked = sorted({(q["image"], q["text"]) for qs in chosen.values() for q in qs})
    texts = generate(
        model,
        processor,
        [opened[image] for image, _ in asked],
        [template.format(question=text) for _, text in asked],
        **generation,
    )
    answers = dict(zip(asked, texts, strict=True))
    return {
        split: [
            {"question_id": q["question_id"], "text": answers[q["image"], q["text"]]} for q in qs
        ]
        for split, qs in chosen.items()
    }


def answer_mmhal(
    model: Any,
    processor: Any,
    bench: Mapping[str, Any],
    *,
    template: str,
    generation: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Answer MMHal-Bench questions; returns its records with ``model_answer`` filled in.

    Args:
        bench: ``{"records": [...], "images": ImageFolder}`` (``MMHalBenchDataset``).
        template: How a question is asked, with ``{question}`` (and ``<image>``).
        generation: Keyword arguments of :func:`povid_kedro.modeling.generate.generate`.
    """
    records = bench["records"]
    pil = [
        _open_rgb(
            bench["images"],
            posixpath.basename(str(r["image_src"])),
            f"MMHal-Bench record {i} ({r.get('image_id')})",
        )
        for i, r in enumerate(records)
    ]
    prompts = [template.format(question=r["question"]) for r in records]
    texts = generate(model, processor, pil, prompts, **generation)
    return [{**r, "model_answer": t} for r, t in zip(records, texts, strict=True)]


def summary_row(
    chair: Mapping[str, Any],
    pope: Mapping[str, Mapping[str, Any]],
    cooccurrence: Mapping[str, float] | None = None,
    mmhal: Mapping[str, Any] | None = None,
    degenerate: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Flat headline metrics of one model (what goes to MLflow and the report table)."""
    row = {
        "chair_s": float(chair["CHAIRs"]),
        "chair_s_se": float(chair["CHAIRs_se"]),
        "chair_i": float(chair["CHAIRi"]),
        "recall": float(chair["Recall"]),
        "objects_per_image": float(chair["objects_per_caption"]),
        "words_per_caption": float(chair["Len"]),
    }
    for split, result in pope.items():
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            row[f"pope_{split}_{key}"] = float(result[key])
    if pope:
        row["pope_f1_mean"] = sum(float(r["f1"]) for r in pope.values()) / len(pope)
    if degenerate is not None:
        row["degenerate_share"] = float(degenerate["degenerate_share"])
    if cooccurrence:
        row["cooc_partner_rate"] = float(cooccurrence["partner_rate"])
        row["cooc_partner_rate_se"] = float(cooccurrence["partner_rate_se"])
        row["present_partner_recall"] = float(cooccurrence["present_partner_recall"])
        row["cooc_control_rate"] = float(cooccurrence["control_rate"])
        row["cooc_ratio"] = float(cooccurrence["ratio"])
    if mmhal and "average_score" in mmhal:
        row["mmhal_score"] = float(mmhal["average_score"])
        row["mmhal_hallucination_rate"] = float(mmhal["hallucination_rate"])
    return row


_REPORT_COLUMNS = [
    ("chair_s", "CHAIR_s"),
    ("chair_s_se", "± SE"),
    ("chair_i", "CHAIR_i"),
    ("recall", "Recall"),
    ("objects_per_image", "objects / image"),
    ("words_per_caption", "words"),
    ("degenerate_share", "degenerate"),
    ("cooc_partner_rate", "absent-partner rate"),
    ("cooc_partner_rate_se", "± SE"),
    ("cooc_control_rate", "control rate"),
    ("present_partner_recall", "present-partner recall"),
    ("pope_random_accuracy", "POPE rand acc"),
    ("pope_random_yes_ratio", "rand yes-ratio"),
    ("pope_random_f1", "POPE rand F1"),
    ("pope_popular_f1", "POPE pop F1"),
    ("pope_adversarial_f1", "POPE adv F1"),
    ("pope_adversarial_yes_ratio", "adv yes-ratio"),
    ("cooc_ratio", "co-occ. ratio"),
    ("mmhal_score", "MMHal score"),
]


def report_markdown(rows: Mapping[str, Mapping[str, float]], notes: Sequence[str] = ()) -> str:
    """A markdown report: one row per model, objects named per image beside CHAIR.

    Naming fewer objects alone lowers CHAIR, so the two are always shown together.
    """
    columns = [(k, title) for k, title in _REPORT_COLUMNS if any(k in r for r in rows.values())]
    lines = [
        "# Hallucination evaluation",
        "",
        "| model | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in rows.items():
        cells = [f"{row[k]:.3f}" if k in row else "–" for k, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "CHAIR_s: share of descriptions with a hallucinated object (lower is better); "
        "CHAIR_i: share of object mentions that are hallucinated; Recall: share of true "
        "objects named. Fewer objects named per image lowers CHAIR by itself: read them "
        "together. co-occ. ratio: how much more often an absent object is named when its "
        "usual companion is in the image than when none is.",
    ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def report_figure(rows: Mapping[str, Mapping[str, float]]) -> Figure:
    """Bar charts of CHAIR_s (with SE), objects named per image, and POPE F1 per model."""
    fig = Figure(figsize=(11, 3.4))
    axes = fig.subplots(1, 3)
    names = list(rows)
    x = range(len(names))
    axes[0].bar(
        x,
        [rows[n]["chair_s"] for n in names],
        yerr=[rows[n]["chair_s_se"] for n in names],
        color="tab:red",
        capsize=4,
    )
    axes[0].set_title("CHAIR_s (lower is better)")
    axes[1].bar(x, [rows[n]["objects_per_image"] for n in names], color="tab:blue")
    axes[1].set_title("objects named per image")
    width = 0.8 / len(POPE_SPLITS)
    for i, split in enumerate(POPE_SPLITS):
        key = f"pope_{split}_f1"
        axes[2].bar(
            [j + i * width for j in x],
            [rows[n].get(key, 0.0) for n in names],
            width=width,
            label=split,
        )
    axes[2].set_title("POPE F1")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names)
    fig.tight_layout()
    return fig
