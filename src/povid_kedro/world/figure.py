"""A sample sheet of training images with their descriptions, for the reporting folder."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure

from povid_kedro.world.generate import World


def make_sample_figure(world: World, n: int = 8, *, columns: int = 4, wrap: int = 34) -> Figure:
    """Show the first ``n`` training images with their detailed descriptions.

    Built on :class:`matplotlib.figure.Figure` directly (no pyplot), so no global figure state
    is touched and nothing needs closing.

    Args:
        world: A generated world.
        n: Number of images shown (fewer if the world has fewer).
        columns: Images per row.
        wrap: Characters per line of the wrapped text.

    Returns:
        The figure.
    """
    texts: dict[str, str] = {}
    for key in ("complex_reasoning", "detail"):  # detail wins where both exist
        for rec in world.instructions.get(key, []):
            texts[rec["image"]] = rec["conversations"][1]["value"]
    names = sorted(world.train_images)[: max(0, n)]
    cols = max(1, min(columns, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(3.0 * cols, 5.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    scenes = {s["file_name"]: s for s in world.scenes.get("train", [])}
    for ax, name in zip(axes, names, strict=False):
        ax.imshow(world.train_images[name], interpolation="nearest")
        truth = ", ".join(o["category"] for o in scenes[name]["objects"]) if name in scenes else ""
        ax.set_title(f"{name}\n[{truth}]", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        body = textwrap.fill(texts.get(name, ""), width=wrap)
        # As an x label the text takes part in the layout, so rows do not overlap.
        ax.set_xlabel(body, fontsize=6.5, loc="left", va="top", multialignment="left")
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.suptitle("Embedded world: training images and their ground-truth descriptions", fontsize=10)
    return fig
