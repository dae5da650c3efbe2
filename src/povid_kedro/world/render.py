"""Drawing of scenes: glyph shapes, textured backgrounds, clutter, occlusion and noise.

A scene (see :mod:`povid_kedro.world.scenes`) says what is where; this module turns it into
pixels. Each category is drawn as its own flat geometric glyph, anti-aliased by drawing its mask
``supersample`` times larger and averaging down. Masks depend only on (glyph, size), so they are
cached: rendering a 96x96 image then costs well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# A glyph painter draws white (255) on a black "L" canvas of side ``s``.
_Painter = Callable[[ImageDraw.ImageDraw, float], None]


def _regular_polygon(s: float, n: int, r: float, phase: float) -> list[tuple[float, float]]:
    c = s / 2
    return [
        (
            c + r * s * math.cos(phase + 2 * math.pi * k / n),
            c + r * s * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _star(d: ImageDraw.ImageDraw, s: float) -> None:
    c, pts = s / 2, []
    for k in range(10):
        r = (0.5 if k % 2 == 0 else 0.21) * s
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((c + r * math.cos(a), c + 0.06 * s + r * math.sin(a)))
    d.polygon(pts, fill=255)


def _ring(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse([0.04 * s, 0.04 * s, 0.96 * s, 0.96 * s], fill=255)
    d.ellipse([0.3 * s, 0.3 * s, 0.7 * s, 0.7 * s], fill=0)


def _crescent(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse([0.04 * s, 0.04 * s, 0.96 * s, 0.96 * s], fill=255)
    d.ellipse([0.34 * s, -0.02 * s, 1.2 * s, 0.84 * s], fill=0)


def _x(d: ImageDraw.ImageDraw, s: float) -> None:
    w = 0.22
    for band in (
        [(0, 0), (w, 0), (1, 1 - w), (1, 1), (1 - w, 1), (0, w)],
        [(1, 0), (1, w), (w, 1), (0, 1), (0, 1 - w), (1 - w, 0)],
    ):
        d.polygon([(x * s, y * s) for x, y in band], fill=255)


def _rects(*boxes: tuple[float, float, float, float]) -> _Painter:
    def paint(d: ImageDraw.ImageDraw, s: float) -> None:
        for x0, y0, x1, y1 in boxes:
            d.rectangle([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=255)

    return paint


def _poly(*points: tuple[float, float]) -> _Painter:
    def paint(d: ImageDraw.ImageDraw, s: float) -> None:
        d.polygon([(x * s, y * s) for x, y in points], fill=255)

    return paint


def _circle(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse([0.04 * s, 0.04 * s, 0.96 * s, 0.96 * s], fill=255)


def _semicircle(d: ImageDraw.ImageDraw, s: float) -> None:
    # Upper half of a tall ellipse: a dome from 0.12 s to 0.85 s, flat edge at the bottom.
    d.pieslice([0.0, 0.12 * s, s, 1.58 * s], 180, 360, fill=255)


def _hexagon(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon(_regular_polygon(s, 6, 0.5, 0.0), fill=255)


def _dots(d: ImageDraw.ImageDraw, s: float) -> None:
    for cx in (0.25, 0.75):
        for cy in (0.25, 0.75):
            d.ellipse([(cx - 0.2) * s, (cy - 0.2) * s, (cx + 0.2) * s, (cy + 0.2) * s], fill=255)


def _frame(d: ImageDraw.ImageDraw, s: float) -> None:
    d.rectangle([0.06 * s, 0.06 * s, 0.94 * s, 0.94 * s], fill=255)
    d.rectangle([0.3 * s, 0.3 * s, 0.7 * s, 0.7 * s], fill=0)


#: Known glyphs, name -> painter. Chosen to differ in outline, holes and stroke direction so a
#: small vision model can tell them apart at 14-28 px.
GLYPHS: dict[str, _Painter] = {
    "circle": _circle,
    "square": _rects((0.1, 0.1, 0.9, 0.9)),
    "triangle": _poly((0.5, 0.04), (0.97, 0.94), (0.03, 0.94)),
    "triangle_down": _poly((0.03, 0.06), (0.97, 0.06), (0.5, 0.96)),
    "star": _star,
    "plus": _rects((0.35, 0.0, 0.65, 1.0), (0.0, 0.35, 1.0, 0.65)),
    "ring": _ring,
    "diamond": _poly((0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)),
    "hexagon": _hexagon,
    "x": _x,
    "crescent": _crescent,
    "arrow": _poly(
        (0.0, 0.36), (0.5, 0.36), (0.5, 0.1), (1.0, 0.5), (0.5, 0.9), (0.5, 0.64), (0.0, 0.64)
    ),
    "tee": _rects((0.0, 0.05, 1.0, 0.35), (0.35, 0.35, 0.65, 1.0)),
    "bars": _rects((0.0, 0.0, 0.22, 1.0), (0.39, 0.0, 0.61, 1.0), (0.78, 0.0, 1.0, 1.0)),
    "stripes": _rects((0.0, 0.0, 1.0, 0.22), (0.0, 0.39, 1.0, 0.61), (0.0, 0.78, 1.0, 1.0)),
    "hourglass": _poly((0.05, 0.0), (0.95, 0.0), (0.5, 0.5), (0.95, 1.0), (0.05, 1.0), (0.5, 0.5)),
    "semicircle": _semicircle,
    "chevron": _poly((0.0, 0.1), (0.5, 0.6), (1.0, 0.1), (1.0, 0.45), (0.5, 0.95), (0.0, 0.45)),
    "frame": _frame,
    "ell": _rects((0.05, 0.0, 0.38, 1.0), (0.05, 0.67, 0.95, 1.0)),
    "dots": _dots,
}


@lru_cache(maxsize=4096)
def glyph_mask(glyph: str, size: int, supersample: int = 4) -> np.ndarray:
    """Return the anti-aliased coverage mask of a glyph.

    Args:
        glyph: Glyph name (a key of :data:`GLYPHS`).
        size: Side of the mask in pixels.
        supersample: Drawing scale before averaging down.

    Returns:
        Read-only float32 array ``(size, size)`` in [0, 1].
    """
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    GLYPHS[glyph](ImageDraw.Draw(canvas), float(big))
    small = canvas.reduce(supersample) if supersample > 1 else canvas
    mask = np.asarray(small, dtype=np.float32) / 255.0
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=4096)
def glyph_bounds(glyph: str, size: int, supersample: int = 4) -> tuple[int, int, int, int]:
    """Return the tight box ``(x, y, w, h)`` of a glyph inside its ``size`` square.

    Args:
        glyph: Glyph name.
        size: Side of the glyph square in pixels.
        supersample: As in :func:`glyph_mask`.

    Returns:
        Offset and extent of the pixels with coverage >= 0.5.
    """
    mask = glyph_mask(glyph, size, supersample) >= 0.5
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


@dataclass(frozen=True)
class Placed:
    """One object as the renderer needs it.

    Attributes:
        glyph: Glyph name.
        colour: Full-contrast RGB colour.
        x: Left of the glyph square.
        y: Top of the glyph square.
        size: Side of the glyph square.
        contrast: Blend factor of the colour against the scene background (1 = full colour).
        occluder: Covered box ``(x0, y0, x1, y1)`` (exclusive ends), or ``None``.
    """

    glyph: str
    colour: tuple[int, int, int]
    x: int
    y: int
    size: int
    contrast: float
    occluder: tuple[int, int, int, int] | None = None


def render_scene(
    rng: np.random.Generator,
    *,
    image_size: int,
    background: Sequence[int],
    objects: Sequence[Placed],
    n_strokes: int,
    texture: float,
    texture_cells: int,
    noise_std: float,
    supersample: int,
) -> tuple[Image.Image, list[int]]:
    """Draw one scene.

    Args:
        rng: The image's render generator (texture, strokes, noise).
        image_size: Side of the image.
        background: Scene base RGB colour.
        objects: Objects in drawing order.
        n_strokes: Number of clutter strokes.
        texture: Amplitude of the low-frequency background texture.
        texture_cells: Resolution of the texture grid before upsampling.
        noise_std: Standard deviation of per-pixel Gaussian noise.
        supersample: Glyph anti-aliasing factor.

    Returns:
        The RGB image and, per object, its visible area in pixels (coverage >= 0.5, not covered).
    """
    base = np.asarray(background, dtype=np.float32)
    # Low-frequency luminance texture, smoothly upsampled: looks like a surface, not noise.
    grid = rng.standard_normal((texture_cells + 1, texture_cells + 1)).astype(np.float32)
    tex = Image.fromarray(grid * texture).resize(
        (image_size, image_size), Image.Resampling.BILINEAR
    )
    canvas = base[None, None, :] + np.asarray(tex)[:, :, None]
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))

    # Clutter strokes are dim variations of the background, drawn before the objects so they
    # add distraction without erasing evidence.
    if n_strokes:
        draw = ImageDraw.Draw(img)
        ends = rng.integers(0, image_size, size=(n_strokes, 4))
        shades = rng.uniform(-50, 50, size=n_strokes)
        widths = rng.integers(1, 3, size=n_strokes)
        for (x0, y0, x1, y1), shade, width in zip(ends, shades, widths, strict=True):
            stroke = tuple(int(v) for v in np.clip(base + shade, 0, 255))
            draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=stroke, width=int(width))

    arr = np.asarray(img, dtype=np.float32).copy()
    areas: list[int] = []
    for obj in objects:
        mask = glyph_mask(obj.glyph, obj.size, supersample)
        colour = base + obj.contrast * (np.asarray(obj.colour, dtype=np.float32) - base)
        region = arr[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size]
        region += mask[:, :, None] * (colour[None, None, :] - region)
        visible = mask >= 0.5
        if obj.occluder is not None:
            x0, y0, x1, y1 = obj.occluder
            # The occluder is a darker flat patch: "something in front", not a hole.
            arr[y0:y1, x0:x1] = base * 0.6
            visible = visible.copy()
            visible[y0 - obj.y : y1 - obj.y, x0 - obj.x : x1 - obj.x] = False
        areas.append(int(visible.sum()))

    if noise_std > 0:
        arr += noise_std * rng.standard_normal(arr.shape, dtype=np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)), areas
