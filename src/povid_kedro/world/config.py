"""Configuration of the embedded synthetic world, built and validated from parameters.

Every value a user would tune lives in ``conf/base/parameters_embedded_world.yml`` under
``embedded_world:``; :meth:`WorldConfig.from_dict` turns that mapping into frozen dataclasses and
fails early, naming the offending key, on anything the generator could not honour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from povid_kedro.inflect import pluralize
from povid_kedro.world.render import GLYPHS

_SPLITS = ("train", "eval")
_QUESTION_KINDS = ("counting", "colour", "relation", "presence", "purpose")
_TOP_KEYS = (
    "seed",
    "n_train_images",
    "n_eval_images",
    "image_size",
    "categories",
    "scenes",
    "colours",
    "sizes",
    "grid",
    "objects_per_scene",
    "duplicate_probability",
    "cross_scene_probability",
    "cooccurrence",
    "visual",
    "text",
    "pope",
)
_CATEGORY_KEYS = ("synonyms", "glyph", "scene", "weight", "partner", "plural")
_SCENE_KEYS = ("weight", "background", "phrases", "preposition", "purpose", "closings")


@dataclass(frozen=True)
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

    name: str
    synonyms: tuple[str, ...]
    glyph: str
    scene: str
    weight: float
    partner: str | None = None
    plural: str | None = None


@dataclass(frozen=True)
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

    name: str
    weight: float
    background: tuple[int, int, int]
    phrases: tuple[str, ...]
    preposition: str
    purpose: str
    closings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GridConfig:
    """Placement grid: one object per cell, so positions and relations are well defined.

    Attributes:
        rows: Row words from top to bottom (``["top", "middle", "bottom"]``).
        cols: Column words from left to right (``["left", "center", "right"]``).
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]


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

    texture: float = 18.0
    texture_cells: int = 4
    noise_std: float = 6.0
    contrast: tuple[float, float] = (0.6, 1.0)
    clutter_strokes: int = 4
    occlusion_probability: float = 0.15
    occlusion_fraction: tuple[float, float] = (0.25, 0.5)
    supersample: int = 4


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

    mention_probability: float = 1.0
    colour_probability: float = 0.8
    size_probability: float = 0.4
    position_probability: float = 0.8
    relation_probability: float = 0.3
    synonym_probability: float = 0.25
    closing_probability: float = 0.4
    occlusion_mention_probability: float = 0.5
    caption_attribute_probability: float = 0.4
    captions_per_image: int = 5
    detail_prompts: tuple[str, ...] = ("Describe the following image in detail.",)
    detail_share: float = 1.0
    reasoning_share: float = 0.5
    multi_turn_share: float = 0.3
    absent_question_share: float = 0.5
    partner_question_share: float = 0.0
    short_qa_share: float = 1.0
    short_qa_turns: int = 4
    detail_order: str = "reading"
    short_qa_suffix: str = "Answer the question using a single word or phrase."
    question_weights: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(_QUESTION_KINDS, 1.0)
    )
    irregular_plurals: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PopeConfig:
    """POPE question files built on the evaluation instances.

    Attributes:
        num_per_image: Yes-questions (and as many no-questions) per image, at most.
        seed: Seed of the negative sampling.
    """

    num_per_image: int = 3
    seed: int = 0


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
        p = _Reader(params, "embedded_world", _TOP_KEYS)
        grid = p.sub("grid", ("rows", "cols"))
        objects = p.sub("objects_per_scene", ("min", "max"))
        cooc = p.sub("cooccurrence", _SPLITS)
        cfg = cls(
            seed=p.integer("seed"),
            n_train_images=p.integer("n_train_images", lo=1),
            n_eval_images=p.integer("n_eval_images", lo=1),
            image_size=p.integer("image_size", lo=16),
            categories=_read_categories(p.sub("categories")),
            scenes=_read_scenes(p.sub("scenes")),
            colours={
                name: _rgb(value, f"embedded_world.colours.{name}")
                for name, value in p.mapping("colours").items()
            },
            sizes={
                name: _int_range(value, f"embedded_world.sizes.{name}", lo=2)
                for name, value in p.mapping("sizes").items()
            },
            grid=GridConfig(rows=grid.words("rows"), cols=grid.words("cols")),
            objects_min=objects.integer("min", lo=1),
            objects_max=objects.integer("max", lo=1),
            duplicate_probability=p.prob("duplicate_probability"),
            cross_scene_probability=p.prob("cross_scene_probability"),
            cooccurrence={split: cooc.prob(split) for split in _SPLITS},
            visual=_read_visual(p.sub("visual", tuple(f.name for f in fields(VisualConfig)))),
            text=_read_text(p.sub("text", tuple(f.name for f in fields(TextConfig)))),
            pope=_read_pope(p.sub("pope", tuple(f.name for f in fields(PopeConfig)))),
        )
        for reader in (p, grid, objects, cooc):
            reader.done()
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
# reading helpers
class _Reader:
    """Reads one mapping level, remembering which keys were used, to reject unknown ones."""

    def __init__(self, mapping: Any, path: str, keys: tuple[str, ...] | None = None) -> None:
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(mapping).__name__}")
        self.data = mapping
        self.path = path
        self.used: set[str] = set()
        if keys is not None:
            # Report a misspelt key as unknown before its correct spelling is reported missing.
            self.used.update(keys)
            self.done()
            self.used.clear()

    def get(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise ValueError(f"{self.path}.{key}: missing")
            return default
        return self.data[key]

    def key(self, key: str) -> str:
        return f"{self.path}.{key}"

    def sub(self, key: str, keys: tuple[str, ...] | None = None) -> _Reader:
        return _Reader(self.get(key), self.key(key), keys)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key)
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.key(key)}: expected a mapping")
        return value

    def integer(self, key: str, default: Any = ..., lo: int | None = None) -> int:
        return _int(self.get(key, default), self.key(key), lo=lo)

    def number(self, key: str, default: Any = ..., lo: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.key(key)}: expected a number, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"{self.key(key)}: must be >= {lo}, got {value!r}")
        return float(value)

    def prob(self, key: str, default: Any = ...) -> float:
        return _prob(self.get(key, default), self.key(key))

    def text(self, key: str, default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.key(key)}: expected a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, default: Any, options: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in options:
            raise ValueError(f"{self.key(key)}: expected one of {options}, got {value!r}")
        return str(value)

    def words(self, key: str, default: Any = ..., allow_empty: bool = False) -> tuple[str, ...]:
        value = self.get(key, default)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{self.key(key)}: expected a list of strings, got {value!r}")
        if not value and not allow_empty:
            raise ValueError(f"{self.key(key)}: empty list")
        for item in value:
            if not isinstance(item, str) or not item.strip() or item != item.strip():
                raise ValueError(f"{self.key(key)}: bad entry {item!r}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ValueError(f"{self.path}.{unknown[0]}: unknown key")


def _int(value: Any, key: str, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{key}: must be >= {lo}, got {value!r}")
    return value


def _prob(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{key}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _rgb(value: Any, key: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{key}: expected [r, g, b], got {value!r}")
    rgb = tuple(_int(v, key, lo=0) for v in value)
    if max(rgb) > 255:
        raise ValueError(f"{key}: channels must be in 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


def _int_range(value: Any, key: str, lo: int) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{key}: expected [min, max], got {value!r}")
    a, b = (_int(v, key, lo=lo) for v in value)
    if b < a:
        raise ValueError(f"{key}: max < min in {value!r}")
    return a, b


def _prob_range(value: Any, key: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{key}: expected [min, max], got {value!r}")
    a, b = (_prob(v, key) for v in value)
    if b < a:
        raise ValueError(f"{key}: max < min in {value!r}")
    return a, b


def _read_categories(p: _Reader) -> tuple[CategoryConfig, ...]:
    cats = []
    for name in p.data:
        if not isinstance(name, str) or not name.strip() or name != name.strip().lower():
            raise ValueError(f"{p.path}: bad category name {name!r} (lower case, no padding)")
        c = p.sub(name, _CATEGORY_KEYS)
        partner = c.get("partner", None)
        if partner is not None and not isinstance(partner, str):
            raise ValueError(f"{c.key('partner')}: expected a category name or null")
        plural = c.get("plural", None)
        if plural is not None and (not isinstance(plural, str) or not plural.strip()):
            raise ValueError(f"{c.key('plural')}: expected a word or null")
        synonyms = c.words("synonyms", default=[], allow_empty=True)
        if any(s != s.lower() for s in synonyms):
            raise ValueError(f"{c.key('synonyms')}: synonyms must be lower case")
        cats.append(
            CategoryConfig(
                name=name,
                synonyms=tuple(s for s in synonyms if s != name),
                glyph=c.text("glyph"),
                scene=c.text("scene"),
                weight=c.number("weight", lo=1e-9),
                partner=partner,
                plural=plural,
            )
        )
        c.done()
    return tuple(cats)


def _read_scenes(p: _Reader) -> dict[str, SceneConfig]:
    scenes = {}
    for name in p.data:
        s = p.sub(name, _SCENE_KEYS)
        scenes[name] = SceneConfig(
            name=name,
            weight=s.number("weight", lo=1e-9),
            background=_rgb(s.get("background"), s.key("background")),
            phrases=s.words("phrases"),
            preposition=s.text("preposition"),
            purpose=s.text("purpose"),
            closings=s.words("closings", default=[], allow_empty=True),
        )
        s.done()
    return scenes


def _read_visual(p: _Reader) -> VisualConfig:
    d = VisualConfig()
    v = VisualConfig(
        texture=p.number("texture", d.texture, lo=0),
        texture_cells=p.integer("texture_cells", d.texture_cells, lo=1),
        noise_std=p.number("noise_std", d.noise_std, lo=0),
        contrast=_prob_range(p.get("contrast", d.contrast), p.key("contrast")),
        clutter_strokes=p.integer("clutter_strokes", d.clutter_strokes, lo=0),
        occlusion_probability=p.prob("occlusion_probability", d.occlusion_probability),
        occlusion_fraction=_prob_range(
            p.get("occlusion_fraction", d.occlusion_fraction), p.key("occlusion_fraction")
        ),
        supersample=p.integer("supersample", d.supersample, lo=1),
    )
    p.done()
    return v


def _read_text(p: _Reader) -> TextConfig:
    d = TextConfig()
    weights = p.get("question_weights", d.question_weights)
    if not isinstance(weights, Mapping):
        raise ValueError(f"{p.key('question_weights')}: expected a mapping")
    for kind, w in weights.items():
        if kind not in _QUESTION_KINDS:
            raise ValueError(
                f"{p.key('question_weights')}.{kind}: unknown key "
                f"(known: {', '.join(_QUESTION_KINDS)})"
            )
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
            raise ValueError(f"{p.key('question_weights')}.{kind}: expected a weight >= 0")
    plurals = p.get("irregular_plurals", d.irregular_plurals)
    if not isinstance(plurals, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in plurals.items()
    ):
        raise ValueError(f"{p.key('irregular_plurals')}: expected a mapping word -> plural")
    t = TextConfig(
        mention_probability=p.prob("mention_probability", d.mention_probability),
        colour_probability=p.prob("colour_probability", d.colour_probability),
        size_probability=p.prob("size_probability", d.size_probability),
        position_probability=p.prob("position_probability", d.position_probability),
        relation_probability=p.prob("relation_probability", d.relation_probability),
        synonym_probability=p.prob("synonym_probability", d.synonym_probability),
        closing_probability=p.prob("closing_probability", d.closing_probability),
        occlusion_mention_probability=p.prob(
            "occlusion_mention_probability", d.occlusion_mention_probability
        ),
        caption_attribute_probability=p.prob(
            "caption_attribute_probability", d.caption_attribute_probability
        ),
        captions_per_image=p.integer("captions_per_image", d.captions_per_image, lo=1),
        detail_prompts=p.words("detail_prompts", list(d.detail_prompts)),
        detail_share=p.prob("detail_share", d.detail_share),
        reasoning_share=p.prob("reasoning_share", d.reasoning_share),
        multi_turn_share=p.prob("multi_turn_share", d.multi_turn_share),
        absent_question_share=p.prob("absent_question_share", d.absent_question_share),
        partner_question_share=p.prob("partner_question_share", d.partner_question_share),
        short_qa_share=p.prob("short_qa_share", d.short_qa_share),
        short_qa_turns=p.integer("short_qa_turns", d.short_qa_turns, lo=1),
        detail_order=p.choice("detail_order", d.detail_order, ("random", "reading")),
        short_qa_suffix=p.text("short_qa_suffix", d.short_qa_suffix),
        question_weights={k: float(weights.get(k, 0.0)) for k in _QUESTION_KINDS},
        irregular_plurals=dict(plurals),
    )
    p.done()
    return t


def _read_pope(p: _Reader) -> PopeConfig:
    d = PopeConfig()
    c = PopeConfig(
        num_per_image=p.integer("num_per_image", d.num_per_image, lo=1),
        seed=p.integer("seed", d.seed),
    )
    p.done()
    return c
