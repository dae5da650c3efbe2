"""Ground truth in the real file formats: COCO instances/captions, LLaVA-Instruct, synonyms.

Kept apart from generation so that ingest can read the embedded world exactly like real data,
and so that the format rules (ids, bbox convention, synonym-line syntax) live in one place.
"""

from __future__ import annotations

from typing import Any

from povid_kedro.world.config import WorldConfig

_INFO = {
    "description": "povid-kedro embedded synthetic world (evaluation split)",
    "version": "1.0",
    "contributor": "povid_kedro.world",
}


def coco_categories(cfg: WorldConfig) -> list[dict[str, Any]]:
    """Return COCO ``categories`` entries: ids in config order, ``supercategory`` = scene type.

    Args:
        cfg: The world config.

    Returns:
        ``[{"id", "name", "supercategory"}, ...]``.
    """
    return [
        {"id": i + 1, "name": c.name, "supercategory": c.scene}
        for i, c in enumerate(cfg.categories)
    ]


def _coco_images(cfg: WorldConfig, scenes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": s["image_id"],
            "file_name": s["file_name"],
            "width": cfg.image_size,
            "height": cfg.image_size,
        }
        for s in scenes
    ]


def coco_instances(
    cfg: WorldConfig, scenes: list[dict[str, Any]], areas: dict[str, list[int]]
) -> dict[str, Any]:
    """Build a COCO ``instances_*.json`` document.

    ``bbox`` is the glyph's whole (amodal) tight box ``[x, y, w, h]``; ``segmentation`` is that
    box as one polygon (glyphs are not traced); ``area`` counts the visible glyph pixels.

    Args:
        cfg: The world config.
        scenes: Scene records of the images, in image order.
        areas: File name -> visible area per object, in the scene's object order.

    Returns:
        The document: ``info``, ``licenses``, ``images``, ``annotations``, ``categories``.
    """
    annotations: list[dict[str, Any]] = []
    for s in scenes:
        for obj, area in zip(s["objects"], areas[s["file_name"]], strict=True):
            x, y, w, h = obj["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": s["image_id"],
                    "category_id": obj["category_id"],
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    return {
        "info": dict(_INFO),
        "licenses": [],
        "images": _coco_images(cfg, scenes),
        "annotations": annotations,
        "categories": coco_categories(cfg),
    }


def coco_captions(
    cfg: WorldConfig, scenes: list[dict[str, Any]], captions: dict[str, list[str]]
) -> dict[str, Any]:
    """Build a COCO ``captions_*.json`` document.

    Args:
        cfg: The world config.
        scenes: Scene records of the images, in image order.
        captions: File name -> captions.

    Returns:
        The document: ``info``, ``licenses``, ``images``, ``annotations`` (``id``, ``image_id``,
        ``caption``).
    """
    annotations: list[dict[str, Any]] = []
    for s in scenes:
        for caption in captions[s["file_name"]]:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": s["image_id"], "caption": caption}
            )
    return {
        "info": dict(_INFO),
        "licenses": [],
        "images": _coco_images(cfg, scenes),
        "annotations": annotations,
    }


def synonyms_text(cfg: WorldConfig) -> str:
    """Write the synonym list in the CHAIR format: ``canonical, syn1, syn2`` per line.

    Args:
        cfg: The world config.

    Returns:
        One line per category, in id order, ending with a newline.
    """
    return "".join(", ".join((c.name, *c.synonyms)) + "\n" for c in cfg.categories)


def llava_record(record_id: str, file_name: str, conversations: list[dict[str, str]]) -> dict:
    """Build one LLaVA-Instruct record.

    Args:
        record_id: Id, unique over all instruction files.
        file_name: Image file name.
        conversations: Alternating ``human``/``gpt`` messages.

    Returns:
        ``{"id", "image", "conversations"}``.
    """
    return {"id": record_id, "image": file_name, "conversations": conversations}
