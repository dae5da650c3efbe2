"""Synthetic ground-truth samples in the canonical table format, for tests and the benchmark.

Scenes draw objects from co-occurrence groups (kitchen, street, park, beach), so the rules
injector has real co-occurrence statistics to mine, and answers mention colours, counts,
sizes and positions the way the embedded world's descriptions do.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pandas as pd
from PIL import Image

SCENES = {
    "kitchen": (
        "A kitchen table with a few things on it",
        ["plate", "fork", "knife", "cup", "bowl"],
    ),
    "street": ("A busy street scene", ["car", "bus", "traffic light", "truck", "bench"]),
    "park": ("A sunny park", ["dog", "frisbee", "bench", "ball", "person"]),
    "beach": ("A sandy beach by the water", ["surfboard", "umbrella", "boat", "kite", "person"]),
}
COLOURS = ["red", "blue", "green", "yellow", "white", "black"]
SIZES = ["small", "large", "tiny", "big"]
POSITIONS = [
    "on the left",
    "on the right",
    "at the top right",
    "at the bottom left",
    "in the center",
]
NUMBERS = ["two", "three", "four"]
PLURAL = {"person": "people", "knife": "knives", "bus": "buses", "bench": "benches"}


def _plural(word: str) -> str:
    return PLURAL.get(word, word + "s")


def _description(rng: random.Random, scene: str, uid: int) -> str:
    intro, objects = SCENES[scene]
    k = rng.randint(2, 3)
    chosen = rng.sample(objects, k)
    parts = [f"{intro} (view {uid})."]
    for obj in chosen:
        colour, pos = rng.choice(COLOURS), rng.choice(POSITIONS)
        if rng.random() < 0.4:
            parts.append(f"There are {rng.choice(NUMBERS)} {colour} {_plural(obj)} {pos}.")
        else:
            parts.append(f"A {rng.choice(SIZES)} {colour} {obj} sits {pos}.")
    if len(chosen) >= 2 and rng.random() < 0.6:
        parts.append(f"The {chosen[0]} is next to the {chosen[1]}.")
    return " ".join(parts)


def _reasoning(rng: random.Random, scene: str, uid: int) -> tuple[str, str]:
    _, objects = SCENES[scene]
    a, b = rng.sample(objects, 2)
    if rng.random() < 0.5:
        question = f"Is there a {a} near the {b}?"
        answer = (
            f"Yes, there is a {rng.choice(COLOURS)} {a} next to the {b} (case {uid}), which "
            f"suggests that the {b} is likely in use."
        )
    else:
        n = rng.choice(NUMBERS)
        question = f"How many {_plural(a)} are there, and what does that suggest?"
        answer = (
            f"There are {n} {_plural(a)} in the scene (case {uid}), so it is likely that "
            f"several people are sharing the space."
        )
    return question, answer


def make_samples(n: int, seed: int = 0, reasoning_share: float = 0.3) -> pd.DataFrame:
    """``n`` canonical ground-truth rows with unique ids and unique answers.

    Args:
        n: Number of rows.
        seed: Random seed.
        reasoning_share: Share of reasoning rows.

    Returns:
        The canonical table (``rejected`` is None everywhere).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = rng.choice(sorted(SCENES))
        if rng.random() < reasoning_share:
            question, answer = _reasoning(rng, scene, i)
            task = "reasoning"
        else:
            question, answer = (
                "Describe the following image in detail.",
                _description(rng, scene, i),
            )
            task = "description"
        rows.append(
            {
                "id": f"s{i:05d}",
                "image": f"train2014/{scene}_{i:05d}.png",
                "task_type": task,
                "prompt": f"<image>\n{question}",
                "answer": answer,
                "rejected": None,
                "source": "synthetic",
                "turn": 0,
            }
        )
    return pd.DataFrame(rows)


def make_loader(size: int = 32) -> Callable[[str], Image.Image]:
    """A ``load_image`` that draws a small deterministic RGB image per path."""

    def load(path: str) -> Image.Image:
        digest = hashlib.sha256(path.encode()).digest()
        image = Image.new("RGB", (size, size), tuple(digest[:3]))
        image.putpixel((digest[3] % size, digest[4] % size), tuple(digest[5:8]))
        return image

    return load


def hallucinate(text: str) -> str:
    """What a cooperative model would answer: the text with one invented object."""
    return f"{text} A purple giraffe stands nearby."
