"""Configuration of the embedded synthetic world, built and validated from parameters.

Every value a user would tune lives in ``conf/base/parameters_embedded_world.yml`` under
``embedded_world:``; :meth:`WorldConfig.from_dict` turns that mapping into frozen dataclasses and
fails early, naming the offending key, on anything the generator could not honour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from povid_kedro.config_reader import Check, check_keys, checked, read_dataclass
from povid_kedro.inflect import pluralize
from povid_kedro.world.render import GLYPHS

_SPLITS = ("train", "eval")
_QUESTION_KINDS = ("counting", "colour", "relation", "presence", "purpose")


# --------------------------------------------------------------------------------------------
# value checks: ``check(value, key) -> value`` (see povid_kedro.config_reader.checked)
def _integer(lo: int | None = None) -> Check:
    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"{key}: must be >= {lo}, got {value!r}")
        return value

    return check


def _number(lo: float | None = None) -> Check:
    def check(value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"{key}: must be >= {lo}, got {value!r}")
        return float(value)

    return check


def _prob(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{key}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _optional_word(value: Any, key: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{key}: expected a word or null, got {value!r}")
    return value


def _choice(*options: str) -> Check:
    def check(value: Any, key: str) -> str:
        if value not in options:
            raise ValueError(f"{key}: expected one of {options}, got {value!r}")
        return str(value)

    return check


def _words(allow_empty: bool = False, lower: bool = False) -> Check:
    def check(value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list of strings, got {value!r}")
        if not value and not allow_empty:
            raise ValueError(f"{key}: empty list")
        for item in value:
            if not isinstance(item, str) or not item.strip() or item != item.strip():
                raise ValueError(f"{key}: bad entry {item!r}")
            if lower and item != item.lower():
                raise ValueError(f"{key}: {item!r} must be lower case")
        return tuple(value)

    return check


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _rgb(value: Any, key: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{key}: expected [r, g, b], got {value!r}")
    rgb = tuple(_integer(lo=0)(v, key) for v in value)
    if max(rgb) > 255:
        raise ValueError(f"{key}: channels must be in 0..255, got {value!r}")
    return rgb


def _pair(item: Check) -> Check:
    """``[min, max]`` with each end passing ``item``."""

    def check(value: Any, key: str) -> tuple[Any, Any]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"{key}: expected [min, max], got {value!r}")
        a, b = (item(v, key) for v in value)
        if b < a:
            raise ValueError(f"{key}: max < min in {value!r}")
        return a, b

    return check


def _category_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip().lower():
        raise ValueError(f"{key}: bad category name {value!r} (lower case, no padding)")
    return value


def _question_weights(value: Any, key: str) -> dict[str, float]:
    for kind, weight in _mapping(value, key).items():
        if kind not in _QUESTION_KINDS:
            raise ValueError(f"{key}.{kind}: unknown key (known: {', '.join(_QUESTION_KINDS)})")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"{key}.{kind}: expected a weight >= 0")
    return {k: float(value.get(k, 0.0)) for k in _QUESTION_KINDS}


def _plurals(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{key}: expected a mapping word -> plural")
    return dict(value)


@dataclass(frozen=True, kw_only=True)
class CategoryConfig:
    """One object category.

    Attributes:
        name: Canonical name (a COCO word, e.g. ``"traffic light"``); also the COCO category name.
        synonyms: Other words for it, used in text and written to the synonym list.
        glyph: Name of the shape it is drawn as (see :data:`povid_kedro.world.render.GLYPHS`).
        scene: Scene type it belongs to (COCO ``supercategory``).
        weight: Relative frequency inside its scene (long-tailed across categories).
        partner: Strongly co-occurring category, or ``None``.
        plural: Plural of ``name``; ``None``: ``irregular_plurals`` or the regular English rule.
    """

    name: str = checked(_category_name)
    synonyms: tuple[str, ...] = checked(_words(allow_empty=True, lower=True), default=())
    glyph: str = checked(_text)
    scene: str = checked(_text)
    weight: float = checked(_number(lo=1e-9))
    partner: str | None = checked(_optional_word, default=None)
    plural: str | None = checked(_optional_word, default=None)


@dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """One scene type (kitchen, street, ...).

    Attributes:
        name: Scene type name.
        weight: Relative frequency of the scene type.
        background: Base RGB colour of the background: the visual cue for the scene.
        phrases: Noun phrases naming the scene in text (``"a kitchen table"``).
        preposition: Preposition that goes before a phrase (``"on"`` a table, ``"in"`` a park).
        purpose: What the place is used for, a noun phrase for reasoning answers.
        closings: Optional closing sentences of detailed descriptions.
    """

    name: str = checked(_text)
    weight: float = checked(_number(lo=1e-9))
    background: tuple[int, int, int] = checked(_rgb)
    phrases: tuple[str, ...] = checked(_words())
    preposition: str = checked(_text)
    purpose: str = checked(_text)
    closings: tuple[str, ...] = checked(_words(allow_empty=True), default=())


@dataclass(frozen=True)
class GridConfig:
    """Placement grid: one object per cell, so positions and relations are well defined.

    Attributes:
        rows: Row words from top to bottom (``["top", "middle", "bottom"]``).
        cols: Column words from left to right (``["left", "center", "right"]``).
    """

    rows: tuple[str, ...] = checked(_words())
    cols: tuple[str, ...] = checked(_words())


@dataclass(frozen=True)
class VisualConfig:
    """Knobs that weaken the visual evidence so the language prior competes with the pixels.

    Attributes:
        texture: Amplitude (0-255 scale) of the low-frequency background texture.
        texture_cells: Resolution of the texture's random grid before smooth upsampling.
        noise_std: Standard deviation (0-255 scale) of per-pixel Gaussian noise.
        contrast: Range ``[lo, hi]`` of object contrast against the background (1 = full colour).
        clutter_strokes: Maximum number of dim background strokes per image.
        occlusion_probability: Chance that an object is partly covered by a patch.
        occlusion_fraction: Range ``[lo, hi]`` of the covered share of the object's box.
        supersample: Glyph masks are drawn this many times larger, then averaged (anti-aliasing).
    """

    texture: float = checked(_number(lo=0), default=18.0)
    texture_cells: int = checked(_integer(lo=1), default=4)
    noise_std: float = checked(_number(lo=0), default=6.0)
    contrast: tuple[float, float] = checked(_pair(_prob), default=(0.6, 1.0))
    clutter_strokes: int = checked(_integer(lo=0), default=4)
    occlusion_probability: float = checked(_prob, default=0.15)
    occlusion_fraction: tuple[float, float] = checked(_pair(_prob), default=(0.25, 0.5))
    supersample: int = checked(_integer(lo=1), default=4)


@dataclass(frozen=True)
class TextConfig:
    """Knobs of the descriptions, reasoning QA and captions.

    Attributes:
        mention_probability: Chance that an object (category) is mentioned in a description or
            caption; at least one always is (descriptions are non-exhaustive, like COCO/LLaVA).
        colour_probability: Chance that a mention names the colour.
        size_probability: Chance that a mention names the size.
        position_probability: Chance that a description sentence gives the position.
        relation_probability: Chance that a description adds a left/right/above/below sentence.
        synonym_probability: Chance that a synonym is used instead of the canonical name.
        closing_probability: Chance that a description ends with a scene closing sentence.
        occlusion_mention_probability: Chance that a partly covered object is said to be so.
        caption_attribute_probability: Chance that a caption mention names the colour.
        captions_per_image: COCO captions per evaluation image.
        detail_prompts: LLaVA-style instructions asking for a detailed description.
        detail_share: Share of training images with a detailed-description record.
        reasoning_share: Share of training images with a reasoning record.
        multi_turn_share: Share of reasoning records with a second turn.
        absent_question_share: Share of presence questions asked about an absent category.
        partner_question_share: Share of those asked about the absent partner of a present
            object, when the scene has one (the rest: any absent category): questions that
            contrast a partner's absence with its companion's presence, a direct signal that
            the partner must be looked for, not inferred.
        short_qa_share: Share of training images with a short-answer record (LLaVA-1.5's
            VQA-style data: yes/no presence questions answered in one word, which is what
            POPE asks).
        short_qa_turns: Questions per short-answer record.
        detail_order: Order of the objects in a detailed description: ``random``, or
            ``reading`` (by grid cell, top left to bottom right, as a person scans a picture).
        short_qa_suffix: Instruction appended to every short-answer question (LLaVA-1.5's).
        question_weights: Relative frequency of the reasoning question kinds.
        irregular_plurals: Plurals the English ``-s``/``-es``/``-ies`` rule gets wrong.
    """

    mention_probability: float = checked(_prob, default=1.0)
    colour_probability: float = checked(_prob, default=0.8)
    size_probability: float = checked(_prob, default=0.4)
    position_probability: float = checked(_prob, default=0.8)
    relation_probability: float = checked(_prob, default=0.3)
    synonym_probability: float = checked(_prob, default=0.25)
    closing_probability: float = checked(_prob, default=0.4)
    occlusion_mention_probability: float = checked(_prob, default=0.5)
    caption_attribute_probability: float = checked(_prob, default=0.4)
    captions_per_image: int = checked(_integer(lo=1), default=5)
    detail_prompts: tuple[str, ...] = checked(
        _words(), default=("Describe the following image in detail.",)
    )
    detail_share: float = checked(_prob, default=1.0)
    reasoning_share: float = checked(_prob, default=0.5)
    multi_turn_share: float = checked(_prob, default=0.3)
    absent_question_share: float = checked(_prob, default=0.5)
    partner_question_share: float = checked(_prob, default=0.0)
    short_qa_share: float = checked(_prob, default=1.0)
    short_qa_turns: int = checked(_integer(lo=1), default=4)
    detail_order: str = checked(_choice("random", "reading"), default="reading")
    short_qa_suffix: str = checked(
        _text, default="Answer the question using a single word or phrase."
    )
    question_weights: dict[str, float] = checked(
        _question_weights, default_factory=lambda: dict.fromkeys(_QUESTION_KINDS, 1.0)
    )
    irregular_plurals: dict[str, str] = checked(_plurals, default_factory=dict)


@dataclass(frozen=True)
class PopeConfig:
    """POPE question files built on the evaluation instances.

    Attributes:
        num_per_image: Yes-questions (and as many no-questions) per image, at most.
        seed: Seed of the negative sampling.
    """

    num_per_image: int = checked(_integer(lo=1), default=3)
    seed: int = checked(_integer(), default=0)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a generated world; equal configs give identical worlds.

    Attributes:
        seed: Root seed; every image draws from its own child of it.
        n_train_images: Training images (with LLaVA-Instruct records).
        n_eval_images: Evaluation images (with COCO instances/captions and POPE files).
        image_size: Side of the square RGB images in pixels.
        categories: Object categories; the order gives the COCO category ids (1-based).
        scenes: Scene types, by name.
        colours: Named palette, name -> RGB.
        sizes: Named sizes, name -> ``(min_px, max_px)`` glyph side.
        grid: Placement grid.
        objects_min: Fewest independently drawn objects per scene (before partners/duplicates).
        objects_max: Most independently drawn objects per scene.
        duplicate_probability: Chance that an object appears twice (``"two cups"``).
        cross_scene_probability: Chance that an independently drawn object comes from any scene.
        cooccurrence: Chance, per split, that a drawn object's absent partner is added.
        visual: Visual-difficulty knobs.
        text: Text knobs.
        pope: POPE knobs.
    """

    seed: int
    n_train_images: int
    n_eval_images: int
    image_size: int
    categories: tuple[CategoryConfig, ...]
    scenes: dict[str, SceneConfig]
    colours: dict[str, tuple[int, int, int]]
    sizes: dict[str, tuple[int, int]]
    grid: GridConfig
    objects_min: int
    objects_max: int
    duplicate_probability: float
    cross_scene_probability: float
    cooccurrence: dict[str, float]
    visual: VisualConfig
    text: TextConfig
    pope: PopeConfig

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> WorldConfig:
        """Build and validate a config from the ``embedded_world:`` parameters mapping.

        Args:
            params: The mapping (nested dicts/lists, as Kedro loads it from YAML).

        Returns:
            The validated config.

        Raises:
            ValueError: On an unknown or missing key, or a value the generator cannot honour;
                the message names the key (``embedded_world.<path>``).
        """
        where = "embedded_world"
        values = check_keys(params, _TOP, _TOP, where)  # every top-level key is required
        v = {key: read(values[key], f"{where}.{key}") for key, read in _TOP.items()}
        objects_min, objects_max = v.pop("objects_per_scene")
        cfg = cls(**v, objects_min=objects_min, objects_max=objects_max)
        cfg._validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Return the config as the JSON-able parameters mapping it was read from.

        Returns:
            A mapping that :meth:`from_dict` turns back into an equal config.
        """
        d = asdict(self)
        return {
            "seed": d["seed"],
            "n_train_images": d["n_train_images"],
            "n_eval_images": d["n_eval_images"],
            "image_size": d["image_size"],
            "categories": {
                c["name"]: {
                    "synonyms": list(c["synonyms"]),
                    "glyph": c["glyph"],
                    "scene": c["scene"],
                    "weight": c["weight"],
                    "partner": c["partner"],
                    "plural": c["plural"],
                }
                for c in d["categories"]
            },
            "scenes": {
                name: {
                    "weight": s["weight"],
                    "background": list(s["background"]),
                    "phrases": list(s["phrases"]),
                    "preposition": s["preposition"],
                    "purpose": s["purpose"],
                    "closings": list(s["closings"]),
                }
                for name, s in d["scenes"].items()
            },
            "colours": {k: list(v) for k, v in d["colours"].items()},
            "sizes": {k: list(v) for k, v in d["sizes"].items()},
            "grid": {"rows": list(d["grid"]["rows"]), "cols": list(d["grid"]["cols"])},
            "objects_per_scene": {"min": d["objects_min"], "max": d["objects_max"]},
            "duplicate_probability": d["duplicate_probability"],
            "cross_scene_probability": d["cross_scene_probability"],
            "cooccurrence": dict(d["cooccurrence"]),
            "visual": {k: list(v) if isinstance(v, tuple) else v for k, v in d["visual"].items()},
            "text": {k: list(v) if isinstance(v, tuple) else v for k, v in d["text"].items()},
            "pope": dict(d["pope"]),
        }

    # ----------------------------------------------------------------------------------------
    # derived views
    @property
    def category_names(self) -> list[str]:
        """Canonical category names in id order."""
        return [c.name for c in self.categories]

    @property
    def cell_size(self) -> tuple[int, int]:
        """Height and width of one grid cell in pixels."""
        return self.image_size // len(self.grid.rows), self.image_size // len(self.grid.cols)

    def plural(self, word: str) -> str:
        """Return the plural of a category name or synonym.

        Args:
            word: A singular noun (possibly two words: only the last is inflected).

        Returns:
            The plural form.
        """
        for cat in self.categories:
            if cat.name == word and cat.plural:
                return cat.plural
        if word in self.text.irregular_plurals:
            return self.text.irregular_plurals[word]
        return pluralize(word, self.text.irregular_plurals)

    def vocabulary_words(self) -> dict[str, str]:
        """Map every object word (names, synonyms and their plurals) to its category.

        Returns:
            Word (lower case, possibly two words) -> canonical category name.
        """
        words: dict[str, str] = {}
        for cat in self.categories:
            for word in (cat.name, *cat.synonyms):
                words[word] = cat.name
                words[self.plural(word)] = cat.name
        return words

    # ----------------------------------------------------------------------------------------
    def _validate(self) -> None:
        self._check_vocabularies()
        self._check_layout()
        self._check_categories()
        self._check_free_of_objects()
        if not self.text.detail_prompts:
            raise ValueError("embedded_world.text.detail_prompts: empty list")
        # A relation question needs two single objects, which a scene may lack: some other
        # kind must always be available.
        if not any(w > 0 for k, w in self.text.question_weights.items() if k != "relation"):
            raise ValueError(
                "embedded_world.text.question_weights: give a weight > 0 to at least one kind "
                "other than relation"
            )

    def _check_vocabularies(self) -> None:
        """Enough of each vocabulary to draw a scene."""
        names = self.category_names
        if len(names) < 2:
            raise ValueError("embedded_world.categories: need at least two categories")
        if len(set(names)) != len(names):
            raise ValueError("embedded_world.categories: duplicate category names")
        if not self.scenes:
            raise ValueError("embedded_world.scenes: empty vocabulary of scene types")
        if not self.colours:
            raise ValueError("embedded_world.colours: empty palette")
        if not self.sizes:
            raise ValueError("embedded_world.sizes: no sizes")

    def _check_layout(self) -> None:
        """Every glyph fits a cell, and every object and its partner find one."""
        cell_h, cell_w = self.cell_size
        for size, (lo, hi) in self.sizes.items():
            if hi > min(cell_h, cell_w):
                raise ValueError(
                    f"embedded_world.sizes.{size}: {hi} px does not fit a {cell_w}x{cell_h} grid "
                    "cell; make it smaller, the grid coarser or the image larger"
                )
        if self.objects_max < self.objects_min:
            raise ValueError("embedded_world.objects_per_scene: max < min")
        n_cells = len(self.grid.rows) * len(self.grid.cols)
        # Each drawn object may bring its partner: both must always find a free cell, or the
        # empirical co-occurrence rate would fall below the configured one.
        if 2 * self.objects_max > n_cells:
            raise ValueError(
                f"embedded_world.objects_per_scene.max: {self.objects_max} objects plus their "
                f"partners need {2 * self.objects_max} cells, the grid has {n_cells}"
            )

    def _check_categories(self) -> None:
        """Known scenes, partners and glyphs, one shape per category, one category per word."""
        names = self.category_names
        glyphs_seen: dict[str, str] = {}
        for cat in self.categories:
            key = f"embedded_world.categories.{cat.name}"
            if cat.scene not in self.scenes:
                raise ValueError(f"{key}.scene: unknown scene type {cat.scene!r}")
            if cat.partner is not None and cat.partner not in names:
                raise ValueError(f"{key}.partner: unknown category {cat.partner!r}")
            if cat.partner == cat.name:
                raise ValueError(f"{key}.partner: a category cannot be its own partner")
            if cat.glyph not in GLYPHS:
                raise ValueError(
                    f"{key}.glyph: unknown glyph {cat.glyph!r}; known: {', '.join(sorted(GLYPHS))}"
                )
            if cat.glyph in glyphs_seen:
                raise ValueError(
                    f"{key}.glyph: {cat.glyph!r} is already the glyph of "
                    f"{glyphs_seen[cat.glyph]!r}; each category needs its own shape"
                )
            glyphs_seen[cat.glyph] = cat.name
        for scene in self.scenes:
            if not any(c.scene == scene for c in self.categories):
                raise ValueError(f"embedded_world.scenes.{scene}: no category belongs to it")
        # A word mapping to two categories would make CHAIR scoring ambiguous.
        owner: dict[str, str] = {}
        for cat in self.categories:
            for word in (cat.name, *cat.synonyms):
                if owner.get(word, cat.name) != cat.name:
                    raise ValueError(
                        f"embedded_world.categories.{cat.name}.synonyms: {word!r} already "
                        f"names {owner[word]!r}"
                    )
                owner[word] = cat.name

    def _check_free_of_objects(self) -> None:
        """Reject scene words, attributes and prompts that contain an object word.

        Text outside object mentions must never name an object, or every description would
        "mention" it and CHAIR would count a hallucination the generator wrote itself.
        """
        words = self.vocabulary_words()
        pattern = re.compile(
            r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
        )
        texts: list[tuple[str, str]] = []
        for name, scene in self.scenes.items():
            base = f"embedded_world.scenes.{name}"
            texts += [(f"{base}.phrases", t) for t in scene.phrases]
            texts += [(f"{base}.closings", t) for t in scene.closings]
            texts += [
                (f"{base}.purpose", scene.purpose),
                (f"{base}.preposition", scene.preposition),
            ]
        texts += [("embedded_world.colours", c) for c in self.colours]
        texts += [("embedded_world.sizes", s) for s in self.sizes]
        texts += [("embedded_world.grid", w) for w in (*self.grid.rows, *self.grid.cols)]
        texts += [("embedded_world.text.detail_prompts", t) for t in self.text.detail_prompts]
        for key, text in texts:
            hit = pattern.search(text.lower())
            if hit:
                raise ValueError(
                    f"{key}: {text!r} contains the object word {hit.group(0)!r} "
                    f"({words[hit.group(0)]}); it would count as a mention"
                )


# --------------------------------------------------------------------------------------------
# the embedded_world: mapping, level by level
def _named(cls: type[Any]) -> Check:
    """``{name: {field: value}}`` -> ``{name: cls(name=name, ...)}`` (the name is the key)."""

    def check(value: Any, key: str) -> dict[str, Any]:
        out = {}
        for name, given in _mapping(value, key).items():
            values = _mapping(given, f"{key}.{name}")
            if "name" in values:
                raise ValueError(f"{key}.{name}: unknown keys ['name'] (the key is the name)")
            out[name] = read_dataclass(cls, {**values, "name": name}, f"{key}.{name}")
        return out

    return check


def _categories(value: Any, key: str) -> tuple[CategoryConfig, ...]:
    # A category's own name among its synonyms is dropped: it names the category already.
    return tuple(
        replace(cat, synonyms=tuple(s for s in cat.synonyms if s != cat.name))
        for cat in _named(CategoryConfig)(value, key).values()
    )


def _each(item: Check) -> Check:
    """A mapping whose values each pass ``item``."""

    def check(value: Any, key: str) -> dict[str, Any]:
        return {name: item(v, f"{key}.{name}") for name, v in _mapping(value, key).items()}

    return check


def _group(cls: type[Any]) -> Check:
    return lambda value, key: read_dataclass(cls, _mapping(value, key), key)


def _objects_range(value: Any, key: str) -> tuple[int, int]:
    counts = read_dataclass(_ObjectsPerScene, _mapping(value, key), key)
    return counts.min, counts.max


def _cooccurrence(value: Any, key: str) -> dict[str, float]:
    rates = read_dataclass(_Cooccurrence, _mapping(value, key), key)
    return {split: getattr(rates, split) for split in _SPLITS}


@dataclass(frozen=True)
class _ObjectsPerScene:
    min: int = checked(_integer(lo=1))
    max: int = checked(_integer(lo=1))


@dataclass(frozen=True)
class _Cooccurrence:
    train: float = checked(_prob)
    eval: float = checked(_prob)


# Each top-level key of embedded_world: and its check.
_TOP: dict[str, Callable[[Any, str], Any]] = {
    "seed": _integer(),
    "n_train_images": _integer(lo=1),
    "n_eval_images": _integer(lo=1),
    "image_size": _integer(lo=16),
    "categories": _categories,
    "scenes": _named(SceneConfig),
    "colours": _each(_rgb),
    "sizes": _each(_pair(_integer(lo=2))),
    "grid": _group(GridConfig),
    "objects_per_scene": _objects_range,
    "duplicate_probability": _prob,
    "cross_scene_probability": _prob,
    "cooccurrence": _cooccurrence,
    "visual": _group(VisualConfig),
    "text": _group(TextConfig),
    "pope": _group(PopeConfig),
}
