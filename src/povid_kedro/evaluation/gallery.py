"""A self-contained HTML gallery of the evaluated models' descriptions, side by side.

For a seeded sample of evaluation images: the image (inline, so the page needs no network), its
true objects, each model's description with the hallucinated object words marked, the true
objects it missed, and the POPE answers on that image that differ between models. Filters pick
a scene type, or the images where the last model fixed (or introduced) a hallucination of the
first. Every description is data: it is escaped, never rendered as markup.
"""

from __future__ import annotations

import base64
import html
import io
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from povid_kedro.ingest.images import ImageFolder
from povid_kedro.metrics.pope import parse_pope_answer


@dataclass(frozen=True)
class ModelOutputs:
    """What the gallery shows of one evaluated model.

    Attributes:
        name: The model's name (e.g. ``base``, ``stage2``).
        chair: Its CHAIR result (``captions``: per description ``image_id``, ``caption``,
            ``hallucinated`` mentions, ``objects`` named, ``gt_objects``).
        pope_answers: POPE split -> ``{"question_id", "text"}`` answers.
    """

    name: str
    chair: Mapping[str, Any]
    pope_answers: Mapping[str, Sequence[Mapping[str, Any]]]


def _scenes(instances: Mapping[str, Any]) -> dict[Any, str]:
    """Image id -> the supercategory most of its annotated objects belong to."""
    supercategory = {c["id"]: c.get("supercategory") or "-" for c in instances["categories"]}
    votes: dict[Any, Counter[str]] = {}
    for annotation in instances.get("annotations", []):
        votes.setdefault(annotation["image_id"], Counter())[
            supercategory.get(annotation["category_id"], "-")
        ] += 1
    return {image_id: counter.most_common(1)[0][0] for image_id, counter in votes.items()}


def _marked(caption: str, words: set[str]) -> str:
    """The caption, escaped, with every occurrence of ``words`` wrapped in a mark."""
    if not words:
        return html.escape(caption)
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
        re.IGNORECASE,
    )
    out, last = [], 0
    for match in pattern.finditer(caption):
        out.append(html.escape(caption[last : match.start()]))
        out.append(f'<mark class="hal">{html.escape(match.group())}</mark>')
        last = match.end()
    out.append(html.escape(caption[last:]))
    return "".join(out)


def _thumbnail(images: ImageFolder, relpath: str, side: int) -> str:
    image = images.open(relpath).convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pope_changes(
    models: Sequence[ModelOutputs], questions: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """Image file -> ``(split, question, label, answer per model)`` where the models disagree."""
    answers = [
        {
            (split, a["question_id"]): parse_pope_answer(str(a["text"]))
            for split, rows in m.pope_answers.items()
            for a in rows
        }
        for m in models
    ]
    changes: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    for split, rows in questions.items():
        for q in rows:
            key = (split, q["question_id"])
            given = [a.get(key) for a in answers]
            if None in given or len(set(given)) < 2:
                continue
            changes.setdefault(q["image"], []).append(
                (split, str(q["text"]), str(q.get("label", "")), [str(g) for g in given])
            )
    return changes


def gallery_html(
    images: ImageFolder,
    instances: Mapping[str, Any],
    models: Sequence[ModelOutputs],
    questions: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    sample: int,
    seed: int = 0,
    image_side: int = 192,
) -> str:
    """The gallery page.

    Args:
        images: The evaluation images.
        instances: Their COCO instances (file names, categories for the scene filter).
        models: The evaluated models in the order shown; "fixed" and "introduced" compare the
            last with the first.
        questions: POPE split -> its questions (``question_id``, ``image``, ``text``, ``label``).
        sample: Images shown (a seeded sample of those every model described).
        seed: The sample's seed.
        image_side: Longest side of the inline images, in pixels.

    Returns:
        The HTML document.
    """
    if not models:
        raise ValueError("the gallery needs at least one evaluated model")
    per_model = [{c["image_id"]: c for c in m.chair["captions"]} for m in models]
    common = sorted(set.intersection(*(set(p) for p in per_model)))
    shown = sorted(random.Random(seed).sample(common, min(sample, len(common))))
    files = {i["id"]: i["file_name"] for i in instances["images"]}
    scenes = _scenes(instances)
    changes = _pope_changes(models, questions)
    body = "\n".join(
        _item(
            image_id,
            files[image_id],
            _thumbnail(images, files[image_id], image_side),
            scenes.get(image_id, "-"),
            models,
            per_model,
            changes,
        )
        for image_id in shown
    )
    scene_options = "".join(
        f'<option value="{html.escape(s)}">{html.escape(s)}</option>'
        for s in sorted({scenes.get(i, "-") for i in shown})
    )
    first, last = html.escape(models[0].name), html.escape(models[-1].name)
    return _PAGE.format(
        n=len(shown),
        models=", ".join(html.escape(m.name) for m in models),
        first=first,
        last=last,
        scene_options=scene_options,
        body=body,
    )


def _item(
    image_id: Any,
    file_name: str,
    thumbnail: str,
    scene: str,
    models: Sequence[ModelOutputs],
    per_model: Sequence[Mapping[Any, Mapping[str, Any]]],
    changes: Mapping[str, Sequence[tuple[str, str, str, list[str]]]],
) -> str:
    records = [p[image_id] for p in per_model]
    truth = sorted(records[0]["gt_objects"])
    hallucinated = [{h["object"] for h in r["hallucinated"]} for r in records]
    fixed = bool(hallucinated[0] - hallucinated[-1])
    introduced = bool(hallucinated[-1] - hallucinated[0])
    columns = []
    for model, record in zip(models, records, strict=True):
        words = {h["word"] for h in record["hallucinated"]}
        missed = sorted(set(truth) - set(record["objects"]))
        columns.append(
            f'<div class="model"><h3>{html.escape(model.name)}</h3>'
            f'<p class="caption">{_marked(str(record["caption"]), words)}</p>'
            f'<p class="missed">missed: {html.escape(", ".join(missed)) or "none"}</p></div>'
        )
    pope_rows = "".join(
        f"<tr><td>{html.escape(split)}</td><td>{html.escape(text)}</td>"
        f"<td>{html.escape(label)}</td>"
        + "".join(f"<td>{html.escape(a)}</td>" for a in answers)
        + "</tr>"
        for split, text, label, answers in changes.get(file_name, ())
    )
    pope = (
        '<table class="pope"><tr><th>split</th><th>question</th><th>truth</th>'
        + "".join(f"<th>{html.escape(m.name)}</th>" for m in models)
        + f"</tr>{pope_rows}</table>"
        if pope_rows
        else ""
    )
    return (
        f'<section class="item" data-scene="{html.escape(scene)}" '
        f'data-fixed="{int(fixed)}" data-introduced="{int(introduced)}">'
        f'<img src="{thumbnail}" alt="{html.escape(file_name)}">'
        f'<div class="meta"><b>{html.escape(file_name)}</b> (scene {html.escape(scene)})<br>'
        f"true objects: {html.escape(', '.join(truth))}</div>"
        f'<div class="models">{"".join(columns)}</div>{pope}</section>'
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>POVID evaluation gallery</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.item {{ border-top: 1px solid #ccc; padding: .6em 0; display: grid;
  grid-template-columns: 200px 1fr; gap: .3em 1em; }}
.item[hidden] {{ display: none; }}
.item img {{ grid-row: span 3; image-rendering: pixelated; width: 192px; }}
.models {{ display: flex; gap: 1em; }}
.model {{ flex: 1; }} .model h3 {{ margin: 0; font-size: 1em; }}
mark.hal {{ background: #f6a5a5; }}
.missed {{ color: #666; font-size: .9em; }}
table.pope {{ border-collapse: collapse; font-size: .85em; }}
table.pope td, table.pope th {{ border: 1px solid #ddd; padding: 2px 6px; }}
</style></head><body>
<h1>Descriptions side by side ({n} images; {models})</h1>
<p><mark class="hal">marked</mark>: a hallucinated object (not in the image).
"missed": true objects the description does not name. The table lists the POPE answers on the
image that differ between models.</p>
<p><label>scene <select id="scene"><option value="">all</option>{scene_options}</select></label>
<label>change <select id="change"><option value="">all</option>
<option value="fixed">hallucinated by {first}, fixed by {last}</option>
<option value="introduced">introduced by {last}</option></select></label>
<span id="count"></span></p>
{body}
<script>
function apply() {{
  const scene = document.getElementById("scene").value;
  const change = document.getElementById("change").value;
  let shown = 0;
  for (const item of document.querySelectorAll(".item")) {{
    const ok = (!scene || item.dataset.scene === scene) &&
      (!change || item.dataset[change] === "1");
    item.hidden = !ok;
  }}
  // Counted as drawn, not as flagged: a style that overrode [hidden] would show here.
  for (const item of document.querySelectorAll(".item")) {{
    shown += getComputedStyle(item).display !== "none";
  }}
  document.getElementById("count").textContent = shown + " shown";
}}
// Filters can be preset in the address: #scene=kitchen&change=fixed
for (const [key, value] of new URLSearchParams(location.hash.slice(1))) {{
  const select = document.getElementById(key);
  if (select) select.value = value;
}}
document.getElementById("scene").onchange = apply;
document.getElementById("change").onchange = apply;
apply();
</script>
</body></html>
"""
