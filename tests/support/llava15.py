"""Stand-ins for the real-scale inputs of ``conf/llava15``, in the published formats, written at
the paths its catalog reads: COCO images and annotations, LLaVA-Instruct JSON, POPE question
files, and a tiny random model of LLaVA-1.5's architecture (CLIP ViT on 14 px patches, second
to last layer, CLS dropped; two-layer GELU projector; Llama LM) as the pretrained directory."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from povid_kedro.modeling import TokenizerConfig, build_model_and_processor
from povid_kedro.modeling.hf_dir import save_model_dir
from povid_kedro.modeling.tokenizer import train_tokenizer
from tests.support.tiny import TINY_MODEL

# COCO category ids and names (a few of the 80).
CATEGORIES = {1: "person", 18: "dog", 47: "cup", 48: "fork", 49: "knife", 62: "chair"}
COLOURS = ["red", "green", "blue", "yellow"]
DETAIL_PROMPT = "Describe the following image in detail."

# LLaVA-1.5's layout at the tests' tiny sizes: 28 px images in 14 px patches (4 image tokens),
# features read at the second-to-last vision layer.
LLAVA15_STANDIN = dataclasses.replace(
    TINY_MODEL,
    image_size=28,
    patch_size=14,
    vision_layers=2,
    vision_feature_layer=-2,
    text_layers=2,
    max_position_embeddings=512,
)


def _scene(rng: random.Random) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    image = Image.new("RGB", (64, 48), "white")
    draw = ImageDraw.Draw(image)
    objects = []
    for category in rng.sample(sorted(CATEGORIES), k=rng.randint(1, 3)):
        x, y = rng.randint(0, 44), rng.randint(0, 28)
        draw.rectangle([x, y, x + 18, y + 18], fill=rng.choice(COLOURS))
        objects.append((category, [float(x), float(y), 18.0, 18.0]))
    return image, objects


def _describe(objects: list[tuple[int, list[float]]]) -> str:
    names = [CATEGORIES[c] for c, _ in objects]
    listed = ", ".join(f"a {n}" for n in names[:-1])
    listed = f"{listed} and a {names[-1]}" if listed else f"a {names[-1]}"
    return f"The image shows {listed} on a white background. The scene is simple and quiet."


def write_standins(project: Path, n_train: int = 16, n_eval: int = 8, seed: int = 0) -> None:
    """Write every input ``kedro run --env llava15 --pipeline povid`` reads under ``project``."""
    rng = random.Random(seed)
    raw = project / "data" / "01_raw"
    train_dir, val_dir = raw / "coco" / "train2017", raw / "coco" / "val2014"
    for folder in (train_dir, val_dir, raw / "coco" / "annotations", raw / "llava_instruct"):
        folder.mkdir(parents=True, exist_ok=True)
    (raw / "pope").mkdir(parents=True, exist_ok=True)

    detail, reasoning, texts = [], [], [DETAIL_PROMPT]
    for i in range(n_train):
        image, objects = _scene(rng)
        name = f"{i + 9:012d}.jpg"
        image.save(train_dir / name, quality=95)
        answer = _describe(objects)
        first = CATEGORIES[objects[0][0]]
        question = f"What could the {first} be used for here?"
        reply = f"The {first} is placed on its own, so it is likely waiting to be used."
        detail.append(_conversation(name, f"<image>\n{DETAIL_PROMPT}", answer))
        reasoning.append(_conversation(name, f"{question}\n<image>", reply))
        texts += [answer, question, reply]
    (raw / "llava_instruct" / "detail_23k.json").write_text(json.dumps(detail))
    (raw / "llava_instruct" / "complex_reasoning_77k.json").write_text(json.dumps(reasoning))

    images, annotations, captions, pope = (
        [],
        [],
        [],
        {"random": [], "popular": [], "adversarial": []},
    )
    for i in range(n_eval):
        image, objects = _scene(rng)
        image_id = 42 + i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        image.save(val_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for category, box in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
        captions.append({"id": i + 1, "image_id": image_id, "caption": _describe(objects)})
        present = {CATEGORIES[c] for c, _ in objects}
        absent = sorted(set(CATEGORIES.values()) - present)
        for questions in pope.values():
            for label, name_ in (("yes", sorted(present)[0]), ("no", rng.choice(absent))):
                questions.append(
                    {
                        "question_id": len(questions) + 1,
                        "image": name,
                        "text": f"Is there a {name_} in the image?",
                        "label": label,
                    }
                )
    categories = [{"id": k, "name": v, "supercategory": "thing"} for k, v in CATEGORIES.items()]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (raw / "coco" / "annotations" / "instances_val2014.json").write_text(json.dumps(instances))
    (raw / "coco" / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    for split, rows in pope.items():
        (raw / "pope" / f"coco_pope_{split}.json").write_text(
            "".join(json.dumps(row) + "\n" for row in rows)
        )
        texts += [row["text"] for row in rows]

    tokenizer = train_tokenizer(
        texts + ["Yes", "No"], TokenizerConfig(vocab_size=400, min_frequency=1)
    )
    model, processor = build_model_and_processor(LLAVA15_STANDIN, tokenizer)
    save_model_dir(model, processor, project / "data" / "06_models" / "llava-1.5-7b-hf")


def _conversation(image: str, question: str, answer: str) -> dict:
    return {
        "id": image.removesuffix(".jpg"),
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
