"""Ground-truth text: detailed descriptions, reasoning QA and COCO-style captions.

Texts are varied and non-exhaustive on purpose, like LLaVA-Instruct and COCO: each object is
mentioned with ``mention_probability`` (at least one always is), with a random subset of its
attributes, and scene words come first, so a language model learns that "a kitchen table" is
usually followed by kitchen objects (the prior that makes it hallucinate them later). Objects
are only ever named when present, except in answers that say an asked-about object is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from povid_kedro.inflect import article as _article
from povid_kedro.schema import IMAGE_TOKEN
from povid_kedro.world.config import CategoryConfig, WorldConfig
from povid_kedro.world.scenes import OPPOSITE, RELATIONS, position_phrase, true_relations

_SCENE_SENTENCES = (
    "The image shows {scene}.",
    "This is a picture of {scene}.",
    "The picture captures {scene}.",
    "In this image, we can see {scene}.",
    "The scene takes place {prep} {scene}.",
    "This image depicts {scene}.",
)
# Sentence templates per object; the "also" ones are only used after the first object.
_ONE_AT = (
    "There is {np} {pos}.",
    "{NP} can be seen {pos}.",
    "{POS}, there is {np}.",
    "{NP} is placed {pos}.",
    "{NP} appears {pos}.",
)
_ONE_AT_ALSO = (*_ONE_AT, "I can also see {np} {pos}.")
_ONE = ("There is {np} in the scene.", "The image contains {np}.")
_ONE_ALSO = (*_ONE, "The image also contains {np}.", "{NP} is visible as well.")
_TWO_AT = (
    "There are {np}, one {pos1} and one {pos2}.",
    "{NP} can be seen, one {pos1} and the other {pos2}.",
)
_TWO_AT_ALSO = (*_TWO_AT, "I can also spot {np}: one {pos1} and another {pos2}.")
_TWO = ("There are {np} in the scene.", "The image contains {np}.")
_TWO_ALSO = (*_TWO, "The image also contains {np}.")
# (single instance, with position, not the first object mentioned) -> templates
_OBJECT_SENTENCES = {
    (True, True, False): _ONE_AT,
    (True, True, True): _ONE_AT_ALSO,
    (True, False, False): _ONE,
    (True, False, True): _ONE_ALSO,
    (False, True, False): _TWO_AT,
    (False, True, True): _TWO_AT_ALSO,
    (False, False, False): _TWO,
    (False, False, True): _TWO_ALSO,
}
_COVERED = ("It is partly covered.", "Part of it is hidden from view.")
_RELATION_SENTENCES = ("The {a} is {rel} the {b}.", "The {a} is located {rel} the {b}.")
_CAPTIONS = (
    "{SCENE} with {list}.",
    "{LIST} {prep} {scene}.",
    "A view of {scene} showing {list}.",
    "There {be} {list} {prep} {scene}.",
    "A photo of {list} {prep} {scene}.",
)
_COUNT_Q = (
    "How many {plural} are there in the image?",
    "Can you count the {plural} in this picture?",
    "What is the number of {plural} visible in the image?",
)
_COLOUR_Q1 = (
    "What color is the {noun} in the image?",
    "What is the color of the {noun}?",
    "Which color does the {noun} have?",
)
_COLOUR_Q2 = ("What color are the {plural} in the image?", "What is the color of the {plural}?")
_RELATION_Q = (
    "Where is the {a} relative to the {b}?",
    "What is the position of the {a} compared to the {b}?",
)
_PRESENCE_Q = (
    "Is there {a_noun} in the image?",
    "Can you see any {plural} in this picture?",
    "Does the image contain {a_noun}?",
)
_PURPOSE_Q = (
    "What might this place be used for?",
    "What kind of place is shown in the image, and what is it used for?",
    "Based on the objects in the image, what could this place be?",
)
_NUMBER = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass
class _Group:
    """All instances of one category in a scene (duplicates share colour and size)."""

    cat: CategoryConfig
    objects: list[dict[str, Any]]

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def colour(self) -> str:
        return self.objects[0]["colour"]

    @property
    def size(self) -> str:
        return self.objects[0]["size"]

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [tuple(o["cell"]) for o in self.objects]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


class TextWriter:
    """Writes the text of one scene at a time from a per-image generator."""

    def __init__(self, cfg: WorldConfig) -> None:
        """Keep the config and precompute lookups.

        Args:
            cfg: The world config.
        """
        self.cfg = cfg
        self.t = cfg.text
        self.cats = {c.name: c for c in cfg.categories}
        kinds = [k for k, w in self.t.question_weights.items() if w > 0]
        self.kinds = kinds
        self.kind_w = np.array([self.t.question_weights[k] for k in kinds], dtype=float)

    # ---------------------------------------------------------------------------------------
    # shared pieces
    def groups(self, scene: dict[str, Any]) -> list[_Group]:
        """Group a scene's objects by category, in order of first appearance.

        Args:
            scene: A scene record.

        Returns:
            One group per present category.
        """
        by_name: dict[str, _Group] = {}
        for obj in scene["objects"]:
            name = obj["category"]
            if name not in by_name:
                by_name[name] = _Group(self.cats[name], [])
            by_name[name].objects.append(obj)
        return list(by_name.values())

    def _pick(self, rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    def _noun(self, rng: np.random.Generator, cat: CategoryConfig) -> str:
        if cat.synonyms and rng.random() < self.t.synonym_probability:
            return self._pick(rng, cat.synonyms)
        return cat.name

    def _noun_phrase(
        self,
        rng: np.random.Generator,
        group: _Group,
        noun: str,
        colour_p: float,
        size_p: float,
    ) -> str:
        words = []
        if rng.random() < size_p:
            words.append(group.size)
        if rng.random() < colour_p:
            words.append(group.colour)
        if group.count == 1:
            words.append(noun)
            return f"{_article(words[0])} {' '.join(words)}"
        words.append(self.cfg.plural(noun))
        return f"{_NUMBER.get(group.count, str(group.count))} {' '.join(words)}"

    def _pos(self, cell: tuple[int, int]) -> str:
        return position_phrase(self.cfg.grid, *cell)

    def _mentioned(self, rng: np.random.Generator, groups: list[_Group]) -> list[_Group]:
        chosen = [g for g in groups if rng.random() < self.t.mention_probability]
        if not chosen:
            chosen = [groups[int(rng.integers(len(groups)))]]
        order = rng.permutation(len(chosen))
        return [chosen[i] for i in order]

    def scene_phrase(self, rng: np.random.Generator, scene: dict[str, Any]) -> str:
        """Pick one of the scene type's phrases.

        Args:
            rng: The image's text generator.
            scene: A scene record.

        Returns:
            A phrase such as ``"a kitchen table"``.
        """
        return self._pick(rng, self.cfg.scenes[scene["scene"]].phrases)

    # ---------------------------------------------------------------------------------------
    # detailed description
    def detail_prompt(self, rng: np.random.Generator) -> str:
        """Pick one of the configured detailed-description instructions.

        Args:
            rng: The image's text generator.

        Returns:
            The instruction, without the image token.
        """
        return self._pick(rng, self.t.detail_prompts)

    def detail(self, rng: np.random.Generator, scene: dict[str, Any]) -> tuple[str, list[str]]:
        """Write a detailed description (LLaVA ``detail_23k`` style).

        Args:
            rng: The image's text generator.
            scene: A scene record with at least one object.

        Returns:
            The description and the categories it mentions, in mention order.
        """
        sc = self.cfg.scenes[scene["scene"]]
        phrase = self.scene_phrase(rng, scene)
        sentences = [self._pick(rng, _SCENE_SENTENCES).format(scene=phrase, prep=sc.preposition)]
        mentioned = self._mentioned(rng, self.groups(scene))
        if self.t.detail_order == "reading":
            # Sorted after the random draw, so the rest of the text stays the same.
            mentioned.sort(key=lambda g: min(g.cells))
        nouns: dict[str, str] = {}
        for k, g in enumerate(mentioned):
            noun = self._noun(rng, g.cat)
            nouns[g.cat.name] = noun
            np_ = self._noun_phrase(
                rng, g, noun, self.t.colour_probability, self.t.size_probability
            )
            with_pos = rng.random() < self.t.position_probability
            tpl = self._pick(rng, _OBJECT_SENTENCES[g.count == 1, with_pos, k > 0])
            if g.count == 1:
                pos = self._pos(g.cells[0])
                sentence = tpl.format(np=np_, NP=_cap(np_), pos=pos, POS=_cap(pos))
                if g.objects[0]["occluded"] and rng.random() < self.t.occlusion_mention_probability:
                    sentence += " " + self._pick(rng, _COVERED)
            else:
                sentence = tpl.format(
                    np=np_, NP=_cap(np_), pos1=self._pos(g.cells[0]), pos2=self._pos(g.cells[1])
                )
            sentences.append(sentence)
        singles = [g for g in mentioned if g.count == 1]
        if len(singles) >= 2 and rng.random() < self.t.relation_probability:
            i, j = rng.choice(len(singles), size=2, replace=False)
            a, b = singles[int(i)], singles[int(j)]
            rels = true_relations(a.cells[0], b.cells[0])
            if rels:
                rel = RELATIONS[self._pick(rng, rels)]
                tpl = self._pick(rng, _RELATION_SENTENCES)
                sentences.append(tpl.format(a=nouns[a.cat.name], b=nouns[b.cat.name], rel=rel))
        if sc.closings and rng.random() < self.t.closing_probability:
            sentences.append(self._pick(rng, sc.closings))
        return " ".join(sentences), [g.cat.name for g in mentioned]

    # ---------------------------------------------------------------------------------------
    # captions
    def captions(self, rng: np.random.Generator, scene: dict[str, Any]) -> list[str]:
        """Write short COCO-style captions, each mentioning a random non-empty subset.

        Args:
            rng: The image's text generator.
            scene: A scene record with at least one object.

        Returns:
            ``captions_per_image`` captions.
        """
        sc = self.cfg.scenes[scene["scene"]]
        groups = self.groups(scene)
        out = []
        for _ in range(self.t.captions_per_image):
            mentioned = self._mentioned(rng, groups)
            nps = [
                self._noun_phrase(
                    rng, g, self._noun(rng, g.cat), self.t.caption_attribute_probability, 0.0
                )
                for g in mentioned
            ]
            phrase = self.scene_phrase(rng, scene)
            listed = _join(nps)
            out.append(
                self._pick(rng, _CAPTIONS).format(
                    SCENE=_cap(phrase),
                    scene=phrase,
                    LIST=_cap(listed),
                    list=listed,
                    prep=sc.preposition,
                    be="is" if mentioned[0].count == 1 else "are",
                )
            )
        return out

    # ---------------------------------------------------------------------------------------
    # reasoning QA
    def reasoning(
        self, rng: np.random.Generator, scene: dict[str, Any], turns: int
    ) -> list[tuple[str, str, str]]:
        """Write reasoning question-answer turns (LLaVA ``complex_reasoning_77k`` style).

        Args:
            rng: The image's text generator.
            scene: A scene record with at least one object.
            turns: Number of turns; each asks a different kind of question where possible.

        Returns:
            ``(kind, question, answer)`` per turn; answers give a short line of reasoning and
            then the conclusion.
        """
        groups = self.groups(scene)
        singles = [g for g in groups if g.count == 1]
        applicable = [k != "relation" or len(singles) >= 2 for k in self.kinds]
        out: list[tuple[str, str, str]] = []
        used: set[str] = set()
        for _ in range(turns):
            w = np.array(
                [
                    wk if ok and k not in used else 0.0
                    for k, wk, ok in zip(self.kinds, self.kind_w, applicable, strict=True)
                ]
            )
            if w.sum() <= 0:
                w = np.array(
                    [wk if ok else 0.0 for wk, ok in zip(self.kind_w, applicable, strict=True)]
                )
            kind = self.kinds[int(rng.choice(len(w), p=w / w.sum()))]
            used.add(kind)
            q, a = getattr(self, f"_q_{kind}")(rng, scene, groups, singles)
            out.append((kind, q, a))
        return out

    def _q_counting(
        self, rng: np.random.Generator, scene: dict[str, Any], groups: list[_Group], _s: Any
    ) -> tuple[str, str]:
        g = groups[int(rng.integers(len(groups)))]
        noun = self._noun(rng, g.cat)
        plural = self.cfg.plural(noun)
        q = self._pick(rng, _COUNT_Q).format(plural=plural)
        lead = "To answer this, I look at each object in the image."
        if g.count == 1:
            a = (
                f"{lead} I find only one {noun}, which is {g.colour} and located "
                f"{self._pos(g.cells[0])}. Therefore, there is one {noun} in the image."
            )
        else:
            number = _NUMBER.get(g.count, str(g.count))
            a = (
                f"{lead} I find {number} {plural}: one {self._pos(g.cells[0])} and one "
                f"{self._pos(g.cells[1])}. Therefore, there are {number} {plural} in the image."
            )
        return q, a

    def _q_colour(
        self, rng: np.random.Generator, scene: dict[str, Any], groups: list[_Group], _s: Any
    ) -> tuple[str, str]:
        g = groups[int(rng.integers(len(groups)))]
        noun = self._noun(rng, g.cat)
        if g.count == 1:
            q = self._pick(rng, _COLOUR_Q1).format(noun=noun)
            a = (
                f"The {noun} is located {self._pos(g.cells[0])}. Its color is {g.colour}, "
                f"so the {noun} is {g.colour}."
            )
        else:
            plural = self.cfg.plural(noun)
            q = self._pick(rng, _COLOUR_Q2).format(plural=plural)
            a = (
                f"There are two {plural}, one {self._pos(g.cells[0])} and one "
                f"{self._pos(g.cells[1])}, and both of them are {g.colour}. "
                f"So the {plural} are {g.colour}."
            )
        return q, a

    def _q_relation(
        self, rng: np.random.Generator, scene: dict[str, Any], _g: Any, singles: list[_Group]
    ) -> tuple[str, str]:
        i, j = rng.choice(len(singles), size=2, replace=False)
        a_g, b_g = singles[int(i)], singles[int(j)]
        a, b = self._noun(rng, a_g.cat), self._noun(rng, b_g.cat)
        pos_a, pos_b = self._pos(a_g.cells[0]), self._pos(b_g.cells[0])
        rel = self._pick(rng, true_relations(a_g.cells[0], b_g.cells[0]))
        facts = f"The {a} is {pos_a}, while the {b} is {pos_b}."
        if rng.random() < 0.5:
            q = self._pick(rng, _RELATION_Q).format(a=a, b=b)
            return q, f"{facts} Therefore, the {a} is {RELATIONS[rel]} the {b}."
        asked = rel if rng.random() < 0.5 else OPPOSITE[rel]
        q = f"Is the {a} {RELATIONS[asked]} the {b}?"
        if asked == rel:
            return q, f"{facts} So yes, the {a} is {RELATIONS[rel]} the {b}."
        return q, (
            f"{facts} So no, the {a} is not {RELATIONS[asked]} the {b}; it is {RELATIONS[rel]} it."
        )

    def _q_presence(
        self, rng: np.random.Generator, scene: dict[str, Any], groups: list[_Group], _s: Any
    ) -> tuple[str, str]:
        present = {g.cat.name for g in groups}
        absent = [c for c in self.cfg.categories if c.name not in present]
        if absent and rng.random() < self.t.absent_question_share:
            cat = absent[int(rng.integers(len(absent)))]
            noun = self._noun(rng, cat)
            plural = self.cfg.plural(noun)
            q = self._pick(rng, _PRESENCE_Q).format(
                a_noun=f"{_article(noun)} {noun}", plural=plural
            )
            listed = self._listing(rng, groups)
            phrase = self.scene_phrase(rng, scene)
            return q, (
                f"No. The image shows {phrase} with {listed}, but I cannot find any {plural} "
                f"in it. So there is no {noun} in the image."
            )
        g = groups[int(rng.integers(len(groups)))]
        noun = self._noun(rng, g.cat)
        plural = self.cfg.plural(noun)
        q = self._pick(rng, _PRESENCE_Q).format(a_noun=f"{_article(noun)} {noun}", plural=plural)
        np_ = self._noun_phrase(rng, g, noun, self.t.colour_probability, 0.0)
        if g.count == 1:
            return q, (
                f"Yes. Looking at the image, I can see {np_} {self._pos(g.cells[0])}. "
                f"So there is {_article(noun)} {noun} in the image."
            )
        return q, (
            f"Yes. Looking at the image, I can see {np_}, one {self._pos(g.cells[0])} and one "
            f"{self._pos(g.cells[1])}. So there are {plural} in the image."
        )

    def short_qa(
        self, rng: np.random.Generator, scene: dict[str, Any], turns: int
    ) -> list[tuple[str, str, str]]:
        """Write one-word presence questions (LLaVA-1.5's VQA-style short answers).

        Each turn asks about a different category: an absent one with probability
        ``absent_question_share``, else a present one. An absent one is the absent partner of a
        present object (like POPE's adversarial split) with probability
        ``partner_question_share`` when the scene has one, else drawn uniformly (POPE's random
        split).

        Args:
            rng: The image's short-answer generator.
            scene: A scene record with at least one object.
            turns: Number of questions.

        Returns:
            ``(category, question, answer)`` per turn; answers are ``Yes`` or ``No``.
        """
        present = {g.cat.name for g in self.groups(scene)}
        absent_partners = {
            c.partner for c in self.cfg.categories if c.name in present and c.partner
        } - present
        asked: set[str] = set()
        out: list[tuple[str, str, str]] = []
        for _ in range(turns):
            absent = rng.random() < self.t.absent_question_share
            pools = {
                side: [
                    c
                    for c in self.cfg.categories
                    if (c.name in present) != side and c.name not in asked
                ]
                for side in (True, False)
            }
            if not pools[absent]:  # every present category was asked already: ask an absent one
                absent = not absent
            pool = pools[absent]
            if not pool:
                break
            # Drawn only when asked for, so that a share of 0 leaves the world as it was.
            if absent and self.t.partner_question_share > 0:
                partners = [c for c in pool if c.name in absent_partners]
                if partners and rng.random() < self.t.partner_question_share:
                    pool = partners
            cat = pool[int(rng.integers(len(pool)))]
            asked.add(cat.name)
            noun = self._noun(rng, cat)
            question = self._pick(rng, _PRESENCE_Q).format(
                a_noun=f"{_article(noun)} {noun}", plural=self.cfg.plural(noun)
            )
            out.append(
                (cat.name, f"{question}\n{self.t.short_qa_suffix}", "No" if absent else "Yes")
            )
        return out

    def _q_purpose(
        self, rng: np.random.Generator, scene: dict[str, Any], groups: list[_Group], _s: Any
    ) -> tuple[str, str]:
        sc = self.cfg.scenes[scene["scene"]]
        q = self._pick(rng, _PURPOSE_Q)
        listed = self._listing(rng, groups)
        phrase = self.scene_phrase(rng, scene)
        return q, (
            f"The image shows {phrase} with {listed}. Objects like these are typical of such a "
            f"setting, so this is most likely {sc.purpose}."
        )

    def _listing(self, rng: np.random.Generator, groups: list[_Group]) -> str:
        mentioned = self._mentioned(rng, groups)
        return _join(
            [
                self._noun_phrase(rng, g, self._noun(rng, g.cat), self.t.colour_probability, 0.0)
                for g in mentioned
            ]
        )


def conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Format question-answer turns as LLaVA conversations; ``<image>`` opens the first turn.

    Args:
        turns: ``(question, answer)`` pairs.

    Returns:
        Alternating ``human``/``gpt`` messages.
    """
    out = []
    for k, (q, a) in enumerate(turns):
        out.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q}" if k == 0 else q})
        out.append({"from": "gpt", "value": a})
    return out
