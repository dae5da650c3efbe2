"""CHAIR object-hallucination metric (Rohrbach, Hendricks et al., EMNLP 2018).

Follows the rules of the reference implementation (LisaAnne/Hallucination ``utils/chair.py``):
lower-case and tokenize a caption, singularize every token, merge multi-word object names, drop
``seat`` when ``toilet`` is present, keep tokens in the synonym list and map them to their
category. Ground truth for an image = its instance categories plus the objects extracted the same
way from its reference captions. Where the reference is wrong (its singularizer, two synonym
entries with a stray space, ...) this module is right; ``docs/metrics.md`` lists every deviation.

Library use::

    chair = Chair.from_directory("data/coco/annotations")  # or Chair(synonyms, instances, captions)
    result = chair.score([{"image_id": 42, "caption": "A dog on a couch."}])
    result["CHAIRs"], result["CHAIRi"], result["captions"][0]["hallucinated"]

Command line::

    python -m povid_kedro.metrics.chair --coco-annotations DIR --captions FILE.jsonl \\
        --output OUT.json [--synonyms FILE]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from povid_kedro.metrics._io import (
    InputError,
    read_json,
    read_jsonl_numbered,
    require_keys,
    require_str,
    run_cli,
)

logger = logging.getLogger(__name__)

#: File name of the shipped COCO synonym list inside ``povid_kedro/resources``.
COCO_SYNONYMS_RESOURCE = "coco_synonyms.txt"

# ---------------------------------------------------------------------------------------------
# Singularizer. nltk/pattern are not available (and must not download data), so this is a
# rule-based English singularizer whose exception lists cover the words that matter for object
# names; it is right where the reference's pattern.en singularize is wrong (bus -> bu, glass ->
# glas, ties -> ty, canoes -> cano, ...).
# ---------------------------------------------------------------------------------------------

# Words that are the same in singular and plural, or only exist in the plural form.
_INVARIANT = frozenset(
    """
    aircraft barracks binoculars bison cattle chassis clothes corps crossroads debris deer
    diabetes earphones eyeglasses fish gallows goggles graffiti headphones headquarters herpes
    jeans leggings measles moose mumps news offspring overalls pants pajamas pyjamas pliers
    rabies salmon scissors series shears sheep shorts species spacecraft sunglasses swine
    tights tongs trousers trout tuna tweezers watercraft hovercraft yes
    themselves ourselves yourselves
    """.split()
)

# Irregular plurals (and a few regular ones the suffix rules below would get wrong).
_IRREGULAR = {
    "people": "person",
    "persons": "person",
    "children": "child",
    "grandchildren": "grandchild",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "mice": "mouse",
    "lice": "louse",
    "oxen": "ox",
    "dice": "die",
    "busses": "bus",
    "quizzes": "quiz",
    "crises": "crisis",
    "analyses": "analysis",
    "axes": "axe",
    "cacti": "cactus",
    "fungi": "fungus",
    "octopi": "octopus",
    "indices": "index",
    "matrices": "matrix",
    "appendices": "appendix",
    "vertices": "vertex",
    "criteria": "criterion",
    "phenomena": "phenomenon",
}

# "-men" nouns that are not plurals of "-man".
_MEN_SINGULAR = frozenset(
    "abdomen amen hymen lumen omen ramen regimen semen specimen stamen".split()
)

# Plurals of nouns ending in "-ie" (the "-ies" -> "-y" rule would turn "ties" into "ty").
_IE_PLURALS = frozenset(
    """
    aussies barbies beanies birdies bogies boogies bookies bowties brownies budgies calories
    camporees collies cookies coolies cooties cuties dearies doggies eyries genies goalies
    goodies hippies hoagies hoodies kiddies lingeries magpies meanies movies neckties
    newbies nighties pixies prairies quickies rookies rotisseries selfies smoothies sweeties
    talkies veggies walkies yuppies zombies
    """.split()
)

# "-ves" plurals of nouns in "-f"/"-fe"; matched as a word ending so compounds work too
# ("pocketknives" -> "pocketknife", "bookshelves" -> "bookshelf").
_VES_SUFFIXES = {
    "knives": "knife",
    "wives": "wife",
    "wolves": "wolf",
    "shelves": "shelf",
    "thieves": "thief",
    "leaves": "leaf",
    "calves": "calf",
    "halves": "half",
    "loaves": "loaf",
    "scarves": "scarf",
    "hooves": "hoof",
    "sheaves": "sheaf",
    "elves": "elf",
}
_VES_EXACT = {"lives": "life", "selves": "self", "wharves": "wharf", "dwarves": "dwarf"}

# "-oes" plurals of nouns in "-oe" (all others drop "-es": potatoes, buffaloes, flamingoes).
_OE_PLURALS = frozenset(
    """
    canoes does felloes floes foes hoes mistletoes oboes roes sloes throes tiptoes toes
    """.split()
)

# "-ches" plurals of nouns in "-che".
_CHE_PLURALS = frozenset(
    """
    aches avalanches backaches caches cliches creches earaches headaches moustaches mustaches
    niches panaches quiches stomachaches toothaches
    """.split()
)

# "-ses" plurals that drop "-es" (the default drops "-s": horses, vases, houses, purses).
_SES_DROP_ES = frozenset(
    """
    aliases atlases biases bonuses cactuses campuses canvases censuses choruses circuses
    citruses focuses gases hippopotamuses irises lenses octopuses platypuses statuses
    syllabuses viruses walruses
    """.split()
)

# Nouns in "-us"/"-is"/"-as"/"-os" are singular unless listed here.
_US_PLURALS = frozenset("emus gnus gurus haikus menus sudokus tofus tutus zulus".split())
_IS_PLURALS = frozenset(
    """
    alibis bikinis bonsais broccolis chilis chillis delis emojis hibachis jacuzzis khakis kiwis
    martinis maxis minis paninis pepperonis rabbis raviolis safaris salamis semis skis taxis
    tikis tsunamis wiis yetis zucchinis
    """.split()
)
_AS_SINGULAR = frozenset(
    """
    alas alias atlas arkansas bias canvas christmas dallas douglas gas has kansas las madras
    mas overseas pampas tapas texas thomas vegas was whereas
    """.split()
)
_OS_SINGULAR = frozenset(
    "asbestos chaos cos cosmos dos ethos kudos los mythos pathos rhinoceros thermos".split()
)


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """Return the singular of a lower-case English word (unchanged if already singular).

    Args:
        word: One lower-case token; hyphenated tokens are singularized on their last part.

    Returns:
        The singular form.
    """
    if "-" in word:
        head, _, tail = word.rpartition("-")
        return f"{head}-{singularize(tail)}" if tail else word
    if len(word) <= 2 or word in _INVARIANT:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("men"):
        return word if word in _MEN_SINGULAR else word[:-3] + "man"
    if not word.endswith("s") or word.endswith("ss"):
        return word
    return _singularize_s(word)


def _singularize_s(word: str) -> str:
    """Singularize a word that ends in a single ``s``."""
    if word.endswith("ies"):
        # Short words are "-ie" nouns or verbs (ties, pies, lies); "ponies" -> "pony".
        if len(word) <= 4 or word in _IE_PLURALS:
            return word[:-1]
        return word[:-3] + "y"
    if word.endswith("ves"):
        if word in _VES_EXACT:
            return _VES_EXACT[word]
        for suffix, singular in _VES_SUFFIXES.items():
            if word.endswith(suffix):
                return word[: -len(suffix)] + singular
        return word[:-1]  # stoves, gloves, microwaves, olives
    if word.endswith("oes"):
        # "-shoes" covers compounds (horseshoes, snowshoes).
        return word[:-1] if word in _OE_PLURALS or word.endswith("shoes") else word[:-2]
    if word.endswith("sses"):
        return word[:-2]  # glasses, dresses
    if word.endswith(("xes", "shes", "ches", "zzes")):
        return word[:-1] if word in _CHE_PLURALS else word[:-2]
    if word.endswith("ses"):
        if word in _SES_DROP_ES or word.endswith("buses"):  # buses, minibuses, airbuses
            return word[:-2]
        return word[:-1]
    if word.endswith("us"):
        return word[:-1] if word in _US_PLURALS else word
    if word.endswith("is"):
        return word[:-1] if word in _IS_PLURALS else word
    if word.endswith("as"):
        return word if word in _AS_SINGULAR else word[:-1]
    if word.endswith("os"):
        return word if word in _OS_SINGULAR else word[:-1]
    return word[:-1]


# Runs of letters/digits; hyphen-joined runs stay one token as in nltk's word_tokenize
# ("dog-shaped" is not a dog), apostrophes split ("dog's" -> "dog", "s").
_TOKEN_RE = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def tokenize(text: str) -> list[re.Match[str]]:
    """Split text into word tokens (punctuation dropped).

    Args:
        text: Any text.

    Returns:
        One match per word; ``.group()`` is the word as written, ``.span()`` its position.
    """
    return list(_TOKEN_RE.finditer(text))


# ---------------------------------------------------------------------------------------------
# Synonym list and the reference's hard-coded merge rules.
# ---------------------------------------------------------------------------------------------

# Qualifiers the reference merges away so that "baby elephant" is an elephant, not a person.
_ANIMAL_QUALIFIERS = ("baby", "adult")
_PASSENGER_QUALIFIERS = ("passenger",)
# Head words of the reference's rules; extended below with every synonym of these categories.
_REFERENCE_ANIMAL_WORDS = (
    "bird cat dog horse sheep cow elephant bear zebra giraffe animal cub".split()
)
_REFERENCE_VEHICLE_WORDS = ("jet", "train")
_ANIMAL_CATEGORIES = frozenset("bird cat dog horse sheep cow elephant bear zebra giraffe".split())
_VEHICLE_CATEGORIES = frozenset("bicycle car motorcycle airplane bus train truck boat".split())
# Other fixed merges of the reference: phrase -> word it stands for.
_FIXED_MERGES = {
    "toilet seat": "toilet",
    "bow tie": "tie",
    "home plate": "home plate",  # a baseball base, not a plate
}


def default_synonyms_text() -> str:
    """Return the shipped COCO synonym list (LisaAnne/Hallucination ``data/synonyms.txt``)."""
    resource = resources.files("povid_kedro") / "resources" / COCO_SYNONYMS_RESOURCE
    return resource.read_text(encoding="utf-8")


def load_synonyms(source: str | os.PathLike[str] | None = None) -> str:
    """Resolve a synonym-list parameter to its text.

    Args:
        source: ``None`` for the shipped COCO list; an ``os.PathLike`` path; or a ``str``,
            which is the list's text if it holds a newline or a comma, else a path if it names
            a file or looks like one (holds a path separator or ends in ``.txt``), else the
            text of a one-word list.

    Returns:
        The synonym list text.

    Raises:
        InputError: A path was given that cannot be read.
    """
    if source is None:
        return default_synonyms_text()
    if isinstance(source, str):
        looks_like_path = os.sep in source or "/" in source or source.endswith(".txt")
        if "\n" in source or "," in source:
            return source
        if not (Path(source).is_file() or looks_like_path):
            return source
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read synonym list ({exc.strerror or exc})") from exc


def _normalize_phrase(text: str) -> str:
    """Lower-case, tokenize and singularize a name, joining the words with single spaces."""
    return " ".join(singularize(m.group()) for m in tokenize(text.lower()))


def parse_synonyms(text: str) -> list[list[str]]:
    """Parse a COCO-format synonym list.

    One line per category, comma-separated; the first entry is the category name. Entries are
    stripped (the reference list has ``" motor bike"``/``" cheesecake"`` with a stray space).

    Args:
        text: The list's text.

    Returns:
        One list of entries per non-blank line, the category first.

    Raises:
        InputError: The text holds no categories.
    """
    lines = []
    for line in text.splitlines():
        entries = [entry.strip() for entry in line.split(",")]
        entries = [entry for entry in entries if entry]
        if entries:
            lines.append(entries)
    if not lines:
        raise InputError("synonym list holds no categories")
    return lines


def synonym_map(text: str) -> dict[str, list[str]]:
    """A synonym list as ``{category: [its words]}`` (category first, duplicates removed).

    Args:
        text: The list's text, COCO format.
    """
    return {entries[0]: list(dict.fromkeys(entries)) for entries in parse_synonyms(text)}


@dataclass(frozen=True)
class Mention:
    """One object mention found in a caption.

    Attributes:
        word: The mention as written in the caption (e.g. ``"Traffic lights"``).
        object: The canonical category it maps to (e.g. ``"traffic light"``).
    """

    word: str
    object: str

    def to_dict(self) -> dict[str, str]:
        """Return ``{"word": ..., "object": ...}``."""
        return {"word": self.word, "object": self.object}


class ObjectExtractor:
    """Finds the object categories a caption mentions, following CHAIR's rules.

    Args:
        synonyms: Synonym list: ``None`` (shipped COCO list), a path, or the text itself (see
            :func:`load_synonyms`). Any multi-word entry (e.g. ``"traffic light"``) is merged
            when it appears in a caption, longest first.
    """

    def __init__(self, synonyms: str | os.PathLike[str] | None = None) -> None:
        lines = parse_synonyms(load_synonyms(synonyms))
        self.categories: list[str] = [entries[0] for entries in lines]
        # normalized word/phrase -> category
        self._to_category: dict[str, str] = {}
        for entries in lines:
            category = entries[0]
            for entry in entries:
                key = _normalize_phrase(entry)
                if not key:
                    continue
                previous = self._to_category.get(key)
                if previous is not None and previous != category:
                    logger.warning(
                        "synonym %r is listed for both %r and %r; keeping %r",
                        entry,
                        previous,
                        category,
                        previous,
                    )
                    continue
                self._to_category[key] = category
        self._merges = self._build_merges()
        self._max_phrase = max(len(phrase) for phrase in self._merges) if self._merges else 1

    def _build_merges(self) -> dict[tuple[str, ...], str]:
        """Multi-word phrases (normalized word tuples) -> the word they stand for."""
        merges: dict[tuple[str, ...], str] = {}
        animals = set(_REFERENCE_ANIMAL_WORDS)
        vehicles = set(_REFERENCE_VEHICLE_WORDS)
        for key, category in self._to_category.items():
            if " " in key:
                continue
            if category in _ANIMAL_CATEGORIES:
                animals.add(key)
            elif category in _VEHICLE_CATEGORIES:
                vehicles.add(key)
        for qualifier in _ANIMAL_QUALIFIERS:
            for word in animals:
                merges[(qualifier, word)] = word
        for qualifier in _PASSENGER_QUALIFIERS:
            for word in vehicles:
                merges[(qualifier, word)] = word
        for phrase, word in _FIXED_MERGES.items():
            merges[tuple(_normalize_phrase(phrase).split())] = _normalize_phrase(word)
        # Names from the list come last so that they win over the fixed rules.
        for key in self._to_category:
            if " " in key:
                merges[tuple(key.split())] = key
        return merges

    def canonical(self, name: str) -> str | None:
        """Map a word or name (any number, any case) to its category, or ``None``."""
        return self._to_category.get(_normalize_phrase(name))

    def _merged_words(self, caption: str) -> list[tuple[str, str]]:
        """Return ``(as written, normalized)`` per word after multi-word merging."""
        matches = tokenize(caption)
        keys = [singularize(m.group().lower()) for m in matches]
        # Merge only words separated by white space: "a baby, an elephant" is two objects
        # (word_tokenize keeps punctuation as tokens, which blocks the reference's merge too).
        adjacent = [caption[a.end() : b.start()].isspace() for a, b in zip(matches, matches[1:])]
        words: list[tuple[str, str]] = []
        i = 0
        while i < len(keys):
            for n in range(min(self._max_phrase, len(keys) - i), 1, -1):
                if not all(adjacent[i : i + n - 1]):
                    continue
                target = self._merges.get(tuple(keys[i : i + n]))
                if target is not None:
                    words.append((caption[matches[i].start() : matches[i + n - 1].end()], target))
                    i += n
                    break
            else:
                words.append((matches[i].group(), keys[i]))
                i += 1
        return words

    def extract(self, caption: str) -> list[Mention]:
        """List the object mentions of a caption, in order, repeats included.

        Args:
            caption: Free text.

        Returns:
            One :class:`Mention` per object word.
        """
        words = self._merged_words(caption)
        # A toilet seat is part of the toilet, not a chair (reference rule).
        if any(key == "toilet" for _, key in words):
            words = [(word, key) for word, key in words if key != "seat"]
        return [
            Mention(word=word, object=self._to_category[key])
            for word, key in words
            if key in self._to_category
        ]

    def objects(self, caption: str) -> set[str]:
        """Return the distinct categories a caption mentions."""
        return {mention.object for mention in self.extract(caption)}


def count_words(caption: str) -> int:
    """Number of word tokens in a caption (punctuation excluded); used for ``Len``."""
    return len(tokenize(caption))


def _image_key(image_id: Any) -> str:
    """Key for matching image ids: ``42`` and ``"42"`` name the same image."""
    return str(image_id)


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float)) or value is None


def _as_list(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [data] if isinstance(data, Mapping) else list(data)


class Chair:
    """CHAIR scorer: ground truth from COCO-format annotations, captions scored against it.

    Args:
        synonyms: Synonym list (``None``: the shipped COCO list; a path; or its text).
        instances: A COCO ``instances_*.json`` document (``images``, ``annotations``,
            ``categories``) or a sequence of them, merged.
        captions: A COCO ``captions_*.json`` document (``images``, ``annotations`` with
            ``image_id`` and ``caption``) or a sequence of them, merged.
        sources: Optional names of the documents (``instances`` first, then ``captions``) used
            in error messages.

    Raises:
        InputError: A document lacks a required key or refers to an unknown category.
    """

    def __init__(
        self,
        synonyms: str | os.PathLike[str] | None,
        instances: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        captions: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        sources: Sequence[str] | None = None,
    ) -> None:
        self.extractor = ObjectExtractor(synonyms)
        instance_docs = _as_list(instances)
        caption_docs = _as_list(captions)
        if sources is None:
            names = [f"instances[{i}]" for i in range(len(instance_docs))]
            names += [f"captions[{i}]" for i in range(len(caption_docs))]
        else:
            names = list(sources)
            if len(names) != len(instance_docs) + len(caption_docs):
                raise ValueError("sources must name every instances and captions document")
        self._known_images: set[str] = set()
        self._instance_objects: dict[str, set[str]] = {}
        self._reference_captions: dict[str, list[str]] = {}
        self._gt_cache: dict[str, frozenset[str]] = {}
        for doc, name in zip(instance_docs, names[: len(instance_docs)], strict=True):
            self._add_instances(doc, name)
        for doc, name in zip(caption_docs, names[len(instance_docs) :], strict=True):
            self._add_captions(doc, name)

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike[str], synonyms: str | os.PathLike[str] | None = None
    ) -> Chair:
        """Build from every ``instances_*.json`` and ``captions_*.json`` in a folder.

        Args:
            directory: Folder with COCO annotation files.
            synonyms: Synonym list (``None``: the shipped COCO list; a path; or its text).

        Returns:
            The scorer.

        Raises:
            InputError: The folder is missing, lacks either kind of file, or a file is malformed.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise InputError(f"{directory}: not a directory")
        instance_files = sorted(directory.glob("instances_*.json"))
        caption_files = sorted(directory.glob("captions_*.json"))
        if not instance_files:
            raise InputError(f"{directory}: no instances_*.json file")
        if not caption_files:
            raise InputError(f"{directory}: no captions_*.json file")
        logger.info(
            "Loading CHAIR ground truth from %s",
            ", ".join(p.name for p in instance_files + caption_files),
        )
        return cls(
            synonyms,
            [read_json(p) for p in instance_files],
            [read_json(p) for p in caption_files],
            sources=[str(p) for p in instance_files + caption_files],
        )

    @staticmethod
    def _list(doc: Mapping[str, Any], key: str, name: str) -> list[Any]:
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise InputError(f"{name}: {key!r} must be a list, got {type(value).__name__}")
        return value

    def _add_images(self, doc: Mapping[str, Any], name: str) -> None:
        for i, image in enumerate(self._list(doc, "images", name)):
            require_keys(image, ["id"], f"{name}: images[{i}]")
            self._known_images.add(_image_key(image["id"]))

    def _add_instances(self, doc: Mapping[str, Any], name: str) -> None:
        require_keys(doc, ["annotations", "categories"], name)
        self._add_images(doc, name)
        category_names: dict[Any, str] = {}
        for i, category in enumerate(self._list(doc, "categories", name)):
            require_keys(category, ["id", "name"], f"{name}: categories[{i}]")
            canonical = self.extractor.canonical(category["name"])
            if canonical is None:
                # Not in the synonym list: keep the name so its mentions still match exactly.
                logger.warning("%s: category %r is not in the synonym list", name, category["name"])
                canonical = category["name"]
            if not _hashable(category["id"]):
                raise InputError(f"{name}: categories[{i}]: 'id' must be a number or a string")
            category_names[category["id"]] = canonical
        for i, annotation in enumerate(self._list(doc, "annotations", name)):
            where = f"{name}: annotations[{i}]"
            require_keys(annotation, ["image_id", "category_id"], where)
            if not _hashable(annotation["category_id"]) or (
                annotation["category_id"] not in category_names
            ):
                raise InputError(f"{where}: unknown category_id {annotation['category_id']!r}")
            key = _image_key(annotation["image_id"])
            self._known_images.add(key)
            self._instance_objects.setdefault(key, set()).add(
                category_names[annotation["category_id"]]
            )

    def _add_captions(self, doc: Mapping[str, Any], name: str) -> None:
        require_keys(doc, ["annotations"], name)
        self._add_images(doc, name)
        for i, annotation in enumerate(self._list(doc, "annotations", name)):
            where = f"{name}: annotations[{i}]"
            require_keys(annotation, ["image_id"], where)
            caption = require_str(annotation, "caption", where)
            key = _image_key(annotation["image_id"])
            self._known_images.add(key)
            self._reference_captions.setdefault(key, []).append(caption)

    def gt_objects(self, image_id: Any) -> frozenset[str]:
        """Ground-truth categories of an image: instance categories ∪ reference-caption objects.

        Args:
            image_id: The image's id (``42`` and ``"42"`` are the same image).

        Returns:
            The categories.

        Raises:
            ValueError: The image is not in the annotations.
        """
        key = _image_key(image_id)
        cached = self._gt_cache.get(key)
        if cached is not None:
            return cached
        if key not in self._known_images:
            raise ValueError(f"image_id {image_id!r} is not in the COCO annotations")
        objects = set(self._instance_objects.get(key, ()))
        for caption in self._reference_captions.get(key, ()):
            objects |= self.extractor.objects(caption)
        self._gt_cache[key] = frozenset(objects)
        return self._gt_cache[key]

    def score(self, captions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Score generated captions.

        Args:
            captions: Records with ``image_id`` and ``caption``.

        Returns:
            Overall metrics — ``CHAIRs`` (captions with ≥ 1 hallucinated mention / captions),
            ``CHAIRs_se`` (its binomial standard error), ``CHAIRi`` (hallucinated mentions / all
            mentions, pooled, repeats count; 0 when there are no mentions), ``Recall`` (distinct
            ground-truth objects mentioned / ground-truth objects, pooled; 0 when there are
            none), ``Len`` (mean words per caption), ``objects_per_caption`` (mean distinct
            objects named) and the counts behind them — plus ``captions``: per caption its
            ``mentions`` and ``hallucinated`` (lists of ``{"word", "object"}``), ``gt_objects``,
            ``objects`` (distinct named), ``n_objects``, ``n_words``, ``chair_s``, ``chair_i``.

        Raises:
            ValueError: No captions, a record lacks a key, or an image is not in the annotations.
        """
        per_caption: list[dict[str, Any]] = []
        n_hallucinated_captions = n_mentions = n_hallucinated = 0
        n_gt = n_gt_covered = n_words = n_objects = 0
        for i, record in enumerate(captions):
            where = f"captions[{i}]"
            require_keys(record, ["image_id"], where)
            caption = require_str(record, "caption", where)
            try:
                gt = self.gt_objects(record["image_id"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
            mentions = self.extractor.extract(caption)
            hallucinated = [m for m in mentions if m.object not in gt]
            named = {m.object for m in mentions}
            words = count_words(caption)
            n_mentions += len(mentions)
            n_hallucinated += len(hallucinated)
            n_hallucinated_captions += bool(hallucinated)
            n_gt += len(gt)
            n_gt_covered += len(named & gt)
            n_words += words
            n_objects += len(named)
            per_caption.append(
                {
                    "image_id": record["image_id"],
                    "caption": caption,
                    "mentions": [m.to_dict() for m in mentions],
                    "hallucinated": [m.to_dict() for m in hallucinated],
                    "gt_objects": sorted(gt),
                    "objects": sorted(named),
                    "n_objects": len(named),
                    "n_words": words,
                    "chair_s": int(bool(hallucinated)),
                    "chair_i": len(hallucinated) / len(mentions) if mentions else 0.0,
                }
            )
        n = len(per_caption)
        if n == 0:
            raise ValueError("no captions to score")
        chair_s = n_hallucinated_captions / n
        return {
            "CHAIRs": chair_s,
            "CHAIRs_se": math.sqrt(chair_s * (1.0 - chair_s) / n),
            "CHAIRi": n_hallucinated / n_mentions if n_mentions else 0.0,
            "Recall": n_gt_covered / n_gt if n_gt else 0.0,
            "Len": n_words / n,
            "objects_per_caption": n_objects / n,
            "n_captions": n,
            "n_hallucinated_captions": n_hallucinated_captions,
            "n_mentions": n_mentions,
            "n_hallucinated_mentions": n_hallucinated,
            "n_gt_objects": n_gt,
            "n_gt_objects_mentioned": n_gt_covered,
            "captions": per_caption,
        }


_SUMMARY_KEYS = ("CHAIRs", "CHAIRs_se", "CHAIRi", "Recall", "Len", "objects_per_caption")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m povid_kedro.metrics.chair",
        description="CHAIR object hallucination (Rohrbach et al. 2018) of generated captions.",
    )
    parser.add_argument(
        "--coco-annotations",
        required=True,
        help="folder with COCO instances_*.json and captions_*.json (all are merged)",
    )
    parser.add_argument(
        "--captions", required=True, help='JSONL, one {"image_id": ..., "caption": ...} per line'
    )
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument(
        "--synonyms", default=None, help="synonym list (default: the shipped COCO list)"
    )
    return parser


def _compute(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    numbered = read_jsonl_numbered(args.captions)
    # Check records here so that messages name the file and line.
    for lineno, record in numbered:
        where = f"{args.captions}: line {lineno}"
        require_keys(record, ["image_id"], where)
        require_str(record, "caption", where)
    synonyms = Path(args.synonyms) if args.synonyms is not None else None
    chair = Chair.from_directory(args.coco_annotations, synonyms=synonyms)
    for lineno, record in numbered:
        try:
            chair.gt_objects(record["image_id"])
        except ValueError as exc:
            raise InputError(f"{args.captions}: line {lineno}: {exc}") from exc
    result = chair.score([record for _, record in numbered])
    return result, {key: result[key] for key in _SUMMARY_KEYS}


def main(argv: list[str] | None = None) -> int:
    """Run the CHAIR command.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 2 on missing or malformed input.
    """
    return run_cli(_build_parser(), _compute, argv)


if __name__ == "__main__":
    raise SystemExit(main())
