"""Sampling of scenes: which objects, where, with which attributes (the structured truth).

Co-occurrence is graded on purpose, as on COCO: objects are drawn mostly from the scene type's
own categories (moderate prior, with ``cross_scene_probability`` of drawing from anywhere), and
each drawn object whose partner is absent gets that partner added with the split's
``cooccurrence`` probability (strong prior in training, broken at a known rate in evaluation).
Partners do not bring their own partners, so the trial count is exact and the empirical rate
is a plain binomial estimate of the configured one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from povid_kedro.world.config import CategoryConfig, GridConfig, WorldConfig
from povid_kedro.world.render import Placed, glyph_bounds

RELATIONS = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def position_words(grid: GridConfig, row: int, col: int) -> str:
    """Return the short name of a grid cell: ``"top left"``, ``"left"``, ``"center"``, ``"top"``.

    Args:
        grid: The placement grid.
        row: Cell row, 0 = top.
        col: Cell column, 0 = left.

    Returns:
        The cell's name; the middle row and column (odd grids) are left out of it.
    """
    mid_row = _is_middle(row, len(grid.rows))
    mid_col = _is_middle(col, len(grid.cols))
    if mid_row:
        return grid.cols[col]
    if mid_col:
        return grid.rows[row]
    return f"{grid.rows[row]} {grid.cols[col]}"


def position_phrase(grid: GridConfig, row: int, col: int) -> str:
    """Return an adverbial phrase for a cell: ``"in the top left corner"``, ``"on the left"``.

    Args:
        grid: The placement grid.
        row: Cell row, 0 = top.
        col: Cell column, 0 = left.

    Returns:
        The phrase, ready to follow a noun phrase.
    """
    n_rows, n_cols = len(grid.rows), len(grid.cols)
    mid_row, mid_col = _is_middle(row, n_rows), _is_middle(col, n_cols)
    if mid_row and mid_col:
        return f"in the {grid.cols[col]}"
    if mid_row:
        return f"on the {grid.cols[col]}"
    if mid_col:
        return f"at the {grid.rows[row]}"
    corner = row in (0, n_rows - 1) and col in (0, n_cols - 1)
    return f"in the {grid.rows[row]} {grid.cols[col]} {'corner' if corner else 'area'}"


def true_relations(cell_a: tuple[int, int], cell_b: tuple[int, int]) -> list[str]:
    """Return the relations (keys of :data:`RELATIONS`) that hold from object a to object b.

    Args:
        cell_a: ``(row, col)`` of a.
        cell_b: ``(row, col)`` of b.

    Returns:
        Zero to two of ``left``, ``right``, ``above``, ``below`` (by whole grid cells).
    """
    rels = []
    if cell_a[1] != cell_b[1]:
        rels.append("left" if cell_a[1] < cell_b[1] else "right")
    if cell_a[0] != cell_b[0]:
        rels.append("above" if cell_a[0] < cell_b[0] else "below")
    return rels


def _is_middle(index: int, n: int) -> bool:
    return n % 2 == 1 and n > 1 and index == n // 2


class SceneSampler:
    """Draws scene truth from a config; holds the lookups that do not change per image."""

    def __init__(self, cfg: WorldConfig) -> None:
        """Precompute lookups.

        Args:
            cfg: The world config.
        """
        self.cfg = cfg
        self.cats = cfg.categories
        self.index = {c.name: i for i, c in enumerate(self.cats)}
        names = list(cfg.scenes)
        self.scene_names = names
        w = np.array([cfg.scenes[n].weight for n in names], dtype=float)
        self.scene_p = w / w.sum()
        # Global weight = within-scene weight x scene weight: the long tail over the vocabulary.
        self.global_w = np.array(
            [c.weight * cfg.scenes[c.scene].weight for c in self.cats], dtype=float
        )
        self.local_w = np.array([c.weight for c in self.cats], dtype=float)
        self.in_scene = {n: np.array([c.scene == n for c in self.cats], dtype=bool) for n in names}
        self.colour_names = list(cfg.colours)
        self.size_names = list(cfg.sizes)
        self.n_rows, self.n_cols = len(cfg.grid.rows), len(cfg.grid.cols)

    def sample(
        self, rng: np.random.Generator, *, split: str, image_id: int, file_name: str
    ) -> dict[str, Any]:
        """Draw one scene's truth.

        Args:
            rng: The image's scene generator.
            split: ``"train"`` or ``"eval"`` (selects the co-occurrence rate).
            image_id: Image id (1-based within the split).
            file_name: Image file name.

        Returns:
            The scene record: ``file_name``, ``image_id``, ``split``, ``scene``,
            ``clutter_strokes`` and ``objects``, each with ``category``, ``category_id``,
            ``glyph``, ``colour``, ``size`` (name), ``size_px``, ``cell`` ``[row, col]``,
            ``position`` (``"top left"``), ``box`` ``[x, y, side]`` (glyph square), ``bbox``
            ``[x, y, w, h]`` (tight), ``contrast``, ``occluded``, ``occluder`` (covered box or
            ``None``), ``duplicate`` (second instance of a category), ``added_as_partner`` and
            ``partner_of`` (the drawn object that brought it), ``partner_trial`` (its partner was
            absent, so a co-occurrence coin was thrown) and ``partner_added`` (the coin's result).
        """
        cfg = self.cfg
        scene = self.scene_names[int(rng.choice(len(self.scene_names), p=self.scene_p))]
        rate = cfg.cooccurrence[split]
        present = np.zeros(len(self.cats), dtype=bool)
        objects: list[dict[str, Any]] = []

        n_drawn = int(rng.integers(cfg.objects_min, cfg.objects_max + 1))
        for _ in range(n_drawn):
            idx = self._draw_category(rng, scene, present)
            if idx is None:
                break
            cat = self.cats[idx]
            present[idx] = True
            obj = self._new_object(rng, cat)
            objects.append(obj)
            if cat.partner is not None and not present[self.index[cat.partner]]:
                obj["partner_trial"] = True
                if rng.random() < rate:
                    obj["partner_added"] = True
                    pidx = self.index[cat.partner]
                    present[pidx] = True
                    partner = self._new_object(rng, self.cats[pidx])
                    partner["added_as_partner"] = True
                    partner["partner_of"] = cat.name
                    objects.append(partner)

        n_cells = self.n_rows * self.n_cols
        for obj in list(objects):
            if len(objects) < n_cells and rng.random() < cfg.duplicate_probability:
                twin = dict(obj, duplicate=True, partner_trial=False, partner_added=False)
                objects.append(twin)

        cells = rng.permutation(n_cells)[: len(objects)]
        cell_h, cell_w = cfg.cell_size
        vis = cfg.visual
        for obj, cell in zip(objects, cells, strict=True):
            row, col = divmod(int(cell), self.n_cols)
            size = obj["size_px"]
            x = col * cell_w + int(rng.integers(0, cell_w - size + 1))
            y = row * cell_h + int(rng.integers(0, cell_h - size + 1))
            bx, by, bw, bh = glyph_bounds(obj["glyph"], size, vis.supersample)
            obj["cell"] = [row, col]
            obj["position"] = position_words(cfg.grid, row, col)
            obj["box"] = [x, y, size]
            obj["bbox"] = [x + bx, y + by, bw, bh]
            obj["contrast"] = round(float(rng.uniform(*vis.contrast)), 3)
            obj["occluded"] = False
            obj["occluder"] = None
            if rng.random() < vis.occlusion_probability:
                side = int(rng.integers(4))
                cover = max(1, round(float(rng.uniform(*vis.occlusion_fraction)) * size))
                obj["occluded"] = True
                obj["occluder"] = [
                    [x, y, x + cover, y + size],
                    [x + size - cover, y, x + size, y + size],
                    [x, y, x + size, y + cover],
                    [x, y + size - cover, x + size, y + size],
                ][side]
        return {
            "file_name": file_name,
            "image_id": image_id,
            "split": split,
            "scene": scene,
            "objects": objects,
            "clutter_strokes": int(rng.integers(0, vis.clutter_strokes + 1)),
        }

    def placed(self, scene: dict[str, Any]) -> list[Placed]:
        """Turn a scene's objects into what the renderer draws.

        Args:
            scene: A record from :meth:`sample`.

        Returns:
            One :class:`Placed` per object, in the scene's order.
        """
        out = []
        for obj in scene["objects"]:
            x, y, size = obj["box"]
            occ = obj["occluder"]
            out.append(
                Placed(
                    glyph=obj["glyph"],
                    colour=self.cfg.colours[obj["colour"]],
                    x=x,
                    y=y,
                    size=size,
                    contrast=obj["contrast"],
                    occluder=tuple(occ) if occ is not None else None,
                )
            )
        return out

    def _draw_category(
        self, rng: np.random.Generator, scene: str, present: np.ndarray
    ) -> int | None:
        absent = ~present
        if rng.random() < self.cfg.cross_scene_probability:
            pool, weights = absent, self.global_w
        else:
            pool, weights = absent & self.in_scene[scene], self.local_w
            if not pool.any():
                pool, weights = absent, self.global_w
        if not pool.any():
            return None
        w = np.where(pool, weights, 0.0)
        return int(rng.choice(len(w), p=w / w.sum()))

    def _new_object(self, rng: np.random.Generator, cat: CategoryConfig) -> dict[str, Any]:
        size_name = self.size_names[int(rng.integers(len(self.size_names)))]
        lo, hi = self.cfg.sizes[size_name]
        return {
            "category": cat.name,
            "category_id": self.index[cat.name] + 1,
            "glyph": cat.glyph,
            "colour": self.colour_names[int(rng.integers(len(self.colour_names)))],
            "size": size_name,
            "size_px": int(rng.integers(lo, hi + 1)),
            "added_as_partner": False,
            "partner_of": None,
            "partner_trial": False,
            "partner_added": False,
            "duplicate": False,
        }
