"""The offline rule-based injector: corpus statistics + targeted edits of the ground truth.

It learns what is plausible from the ground-truth answers themselves (which objects appear
together, which colours and counts are common) and then makes the three kinds of description
hallucination POVID asks GPT-4V for (docs/design.md §1) — an absent but co-occurring object, a
changed relation/position, a changed attribute — and, for reasoning answers, corrupted facts plus
an inverted conclusion. Everything is deterministic per (seed, sample id).

Co-occurrence additions make rejections longer, and always-longer rejections teach DPO to stop
early; a configurable share of them is therefore done as a substitution instead.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from povid_kedro.hallucination.base import (
    NO_APPLICABLE_EDIT,
    UNKNOWN_TASK_TYPE,
    InjectionResult,
    Injector,
    LoadImage,
    assign_type,
    base_stats,
    check_samples,
    failures_frame,
    fallback_order,
    finish_stats,
    pairs_frame,
    provided_rows,
    split_provided,
    stable_seed,
)
from povid_kedro.hallucination.config import (
    ANSWER_FLIP,
    ATTRIBUTE,
    COOCCURRENCE,
    OMISSION,
    RELATION,
    WRONG_REASONING,
    InjectConfig,
    RulesConfig,
)
from povid_kedro.hallucination.validate import Validator
from povid_kedro.inflect import INVARIANT, IRREGULAR_PLURALS, article, pluralize
from povid_kedro.metrics.chair import parse_synonyms as chair_parse_synonyms
from povid_kedro.schema import TASK_TYPES

logger = logging.getLogger(__name__)

# Groups of the phrase matcher.
OBJECT = "object"
COLOUR = "colour"
SHAPE = "shape"
COUNT = "count"
SIZE = "size"
REL = "relation"
FLIP = "flip"

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_TOKEN_GAP = re.compile(r"[\sA-Za-z-]*")  # words and spaces only, no punctuation
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_ANAPHORIC_START = re.compile(
    r"(?:it|its|they|their|them|he|she|his|her|this|these|those|both|part|one|another|"
    r"the other)\b",
    re.IGNORECASE,
)
_ARTICLE_BEFORE = re.compile(r"\b([Aa]n?)(\s+)$")
_PLURAL_CUES = {"many", "several", "some", "few", "multiple", "these", "those", "both"}


def parse_synonyms(
    source: str | Mapping[str, Iterable[str]] | Iterable[str],
) -> dict[str, list[str]]:
    """Read a synonym list into ``{canonical: [surface forms]}``.

    Args:
        source: The file's text (``canonical, syn1, syn2`` per line, the CHAIR / COCO format),
            a list of such lines, or a mapping ``canonical -> synonyms``.

    Returns:
        Canonical name -> its surface forms (canonical first, stripped, lower-case, unique).
        Entries with stray spaces (`` motor bike`` in the COCO list) are stripped, so they match.
    """
    if isinstance(source, Mapping):
        items = [[str(k), *map(str, v)] for k, v in source.items()]
    else:
        # One reader of the COCO synonym format for the whole project: the CHAIR metric's.
        text = source if isinstance(source, str) else "\n".join(source)
        items = chair_parse_synonyms(text)
    out: dict[str, list[str]] = {}
    for entries in items:
        words = [" ".join(e.split()).lower() for e in entries]
        words = [w for w in words if w]
        if not words:
            continue
        canonical = words[0]
        forms = out.setdefault(canonical, [])
        for w in words:
            if w not in forms:
                forms.append(w)
    return out


@dataclass(frozen=True)
class _Match:
    """A phrase found in a text: token span, char span, matched text, group payload."""

    start: int
    end: int
    text: str
    payload: Any


@dataclass
class _Analysis:
    """The matches of one answer, per group."""

    text: str
    matches: dict[str, list[_Match]] = field(default_factory=dict)

    def get(self, group: str) -> list[_Match]:
        return self.matches.get(group, [])

    @property
    def present(self) -> set[str]:
        return {m.payload[0] for m in self.get(OBJECT)}


@dataclass(frozen=True)
class _Edit:
    text: str
    detail: str


class _PhraseMatcher:
    """Longest-match lookup of multi-word phrases over word tokens, per group.

    A token pass with dictionary lookups instead of one giant regex alternation: the COCO
    vocabulary has ~1,600 surface forms and 10,000 answers must be analysed in about a second.
    """

    def __init__(self) -> None:
        self.table: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.max_len = 1
        self.multi_first: set[str] = set()  # first words of multi-word phrases

    def add(self, phrase: str, group: str, payload: Any) -> None:
        key = " ".join(phrase.lower().split())
        if not key:
            return
        entries = self.table[key]
        if any(g == group for g, _ in entries):
            return  # first definition wins (e.g. a synonym listed under two categories)
        entries.append((group, payload))
        if " " in key:
            self.multi_first.add(key.split(" ", 1)[0])
            self.max_len = max(self.max_len, key.count(" ") + 1)

    def analyse(self, text: str) -> _Analysis:
        spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
        words = [text[a:b].lower() for a, b in spans]
        found: dict[str, list[_Match]] = {}
        covered: dict[str, int] = {}  # group -> token index up to which it is matched
        n = len(words)
        table, multi_first, max_len = self.table, self.multi_first, self.max_len
        for i in range(n):
            keys = [words[i]]
            if keys[0] in multi_first:
                key = keys[0]
                for j in range(i + 1, min(n, i + max_len)):
                    # A phrase may not run across punctuation ("left. Right").
                    if text[spans[j - 1][1] : spans[j][0]].strip():
                        break
                    key = f"{key} {words[j]}"
                    keys.append(key)
            # Longest first.
            for length in range(len(keys), 0, -1):
                entries = table.get(keys[length - 1])
                if not entries:
                    continue
                j = i + length
                for group, payload in entries:
                    if covered.get(group, 0) > i:
                        continue
                    covered[group] = j
                    start, end = spans[i][0], spans[j - 1][1]
                    found.setdefault(group, []).append(_Match(start, end, text[start:end], payload))
        return _Analysis(text, found)


def _match_case(original: str, replacement: str) -> str:
    if original[:1].isupper() and replacement:
        return replacement[0].upper() + replacement[1:]
    return replacement


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace char spans (non-overlapping), fixing ``a``/``an`` right before each one."""
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        before = text[:start]
        found = _ARTICLE_BEFORE.search(before)
        if found and new:
            wanted = _match_case(found.group(1), article(new))
            before = before[: found.start(1)] + wanted + found.group(2)
        text = before + new + text[end:]
    return text


class CorpusStats:
    """Vocabulary and statistics mined from the ground-truth answers.

    Args:
        config: The rules parameters (word lists).
        synonyms: ``{canonical: surface forms}`` defining the object vocabulary; when ``None``
            each of ``config.object_words`` is its own category.

    Attributes:
        object_count: Canonical object -> number of answers that mention it.
        cooccurrence: Canonical object -> Counter of the objects mentioned in the same answers.
        word_count: Counter of colour / shape / size words seen in the corpus.
        surface_count: Canonical -> Counter of singular surface forms used for it.
    """

    def __init__(
        self, config: RulesConfig, synonyms: Mapping[str, list[str]] | None = None
    ) -> None:
        self.config = config
        self.matcher = _PhraseMatcher()
        self.colours = [w.lower() for w in config.colour_words]
        self.shapes = [w.lower() for w in config.shape_words]
        self.count_words = [w.lower() for w in config.count_words]
        self.size_alts = self._swap_table(config.size_swaps)
        self.relation_alts = self._swap_table(config.relation_swaps)
        self.flip_alts = self._swap_table(config.conclusion_flips)
        vocab = (
            dict(synonyms) if synonyms else {w.lower(): [w.lower()] for w in config.object_words}
        )
        self.categories = sorted(vocab)
        self._build_matcher(vocab)
        self.object_count: Counter[str] = Counter()
        self.cooccurrence: dict[str, Counter[str]] = defaultdict(Counter)
        self.word_count: Counter[str] = Counter()
        self.surface_count: dict[str, Counter[str]] = defaultdict(Counter)
        self.analyses: dict[str, _Analysis] = {}

    @staticmethod
    def _swap_table(pairs: Iterable[Iterable[str]]) -> dict[str, list[str]]:
        table: dict[str, list[str]] = defaultdict(list)
        for first, second in pairs:
            a, b = first.lower(), second.lower()
            if b not in table[a]:
                table[a].append(b)
            if a not in table[b]:
                table[b].append(a)
        return dict(table)

    def _build_matcher(self, vocab: Mapping[str, list[str]]) -> None:
        m = self.matcher
        for canonical, forms in vocab.items():
            for form in forms:
                if form in IRREGULAR_PLURALS.values():
                    # Listed plurals ("people" under person) are plurals, not new nouns.
                    singular = next(k for k, v in IRREGULAR_PLURALS.items() if v == form)
                    m.add(form, OBJECT, (canonical, singular, True))
                    continue
                m.add(form, OBJECT, (canonical, form, False))
        # Plurals after all singulars, so a listed form never becomes someone's plural.
        for canonical, forms in vocab.items():
            for form in forms:
                plural = pluralize(form)
                if plural != form:
                    m.add(plural, OBJECT, (canonical, form, True))
        for w in self.colours:
            m.add(w, COLOUR, w)
        for w in self.shapes:
            m.add(w, SHAPE, w)
        for value, w in enumerate(self.count_words, start=2):
            m.add(w, COUNT, value)
        for value in range(2, 100):
            m.add(str(value), COUNT, value)
        for w in self.size_alts:
            m.add(w, SIZE, w)
        for w in self.relation_alts:
            m.add(w, REL, w)
        for w in self.flip_alts:
            m.add(w, FLIP, w)

    def analyse(self, text: str) -> _Analysis:
        """Matches of one text, with colour-vs-object ambiguities resolved (``orange``)."""
        analysis = self.matcher.analyse(text)
        objects = analysis.get(OBJECT)
        colour_like = {m.start for m in (*analysis.get(COLOUR), *analysis.get(SHAPE))}
        if objects and colour_like:
            starts = sorted(m.start for m in objects)
            keep: list[_Match] = []
            for obj in objects:
                if obj.start in colour_like:
                    # An adjective when another object follows right after ("orange cup").
                    nxt = next((s for s in starts if s > obj.end), None)
                    if nxt is not None and not text[obj.end : nxt].strip():
                        continue
                    analysis.matches[COLOUR] = [
                        c for c in analysis.get(COLOUR) if c.start != obj.start
                    ]
                keep.append(obj)
            analysis.matches[OBJECT] = keep
        # A digit is a count only right before an object ("3 dogs", not "in 2015" or "view 16").
        counts = analysis.get(COUNT)
        if counts:
            object_starts = [m.start for m in analysis.get(OBJECT)]
            analysis.matches[COUNT] = [
                c
                for c in counts
                if not c.text.isdigit()
                or any(
                    s > c.end
                    and len(text[c.end : s].split()) <= 2
                    and _TOKEN_GAP.fullmatch(text[c.end : s])
                    for s in object_starts
                )
            ]
        # Invariant nouns ("three sheep") take their number from the words before them.
        fixed: list[_Match] = []
        for obj in analysis.get(OBJECT):
            canonical, singular, plural = obj.payload
            if not plural and singular in INVARIANT:
                before = text[: obj.start].lower().split()[-2:]
                plural = any(w in _PLURAL_CUES or w in self.count_words for w in before)
                fixed.append(_Match(obj.start, obj.end, obj.text, (canonical, singular, plural)))
            else:
                fixed.append(obj)
        if fixed:
            analysis.matches[OBJECT] = fixed
        return analysis

    def fit(self, texts: Iterable[tuple[str, str]]) -> CorpusStats:
        """Mine the statistics from ``(sample id, answer)`` pairs; keeps each analysis."""
        for sid, text in texts:
            analysis = self.analyse(text)
            self.analyses[sid] = analysis
            present = analysis.present
            for canonical in present:
                self.object_count[canonical] += 1
                row = self.cooccurrence[canonical]
                for other in present:
                    if other != canonical:
                        row[other] += 1
            for obj in analysis.get(OBJECT):
                self.surface_count[obj.payload[0]][obj.payload[1]] += 1
            for group in (COLOUR, SHAPE, SIZE):
                for m in analysis.get(group):
                    self.word_count[m.payload] += 1
        return self

    def surface(self, canonical: str) -> str:
        """The singular form most used for a category in the corpus (else its name)."""
        counts = self.surface_count.get(canonical)
        if counts:
            return max(sorted(counts), key=lambda w: counts[w])
        return canonical

    def cooccurring(self, present: set[str]) -> tuple[list[str], list[float], bool]:
        """Absent categories with their co-occurrence weight with the present ones.

        Returns:
            (candidates, weights, by_cooccurrence); when nothing co-occurs, the candidates are
            the absent categories seen in the corpus, weighted by frequency, and the flag is
            False.
        """
        score: Counter[str] = Counter()
        for p in present:
            for other, n in self.cooccurrence.get(p, {}).items():
                if other not in present:
                    score[other] += n
        if score:
            names = sorted(score)
            return names, [float(score[n]) for n in names], True
        names = sorted(c for c in self.object_count if c not in present)
        return names, [float(self.object_count[n]) for n in names], False


class RuleInjector(Injector):
    """Offline, deterministic injector built from corpus statistics.

    Args:
        config: The typed parameters; ``config.rules`` must be set.
        synonyms: Optional synonym list (text or mapping) defining the object vocabulary;
            overrides ``rules.synonyms_path``.
    """

    name = "rules"

    def __init__(
        self,
        config: InjectConfig,
        synonyms: str | Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    ) -> None:
        super().__init__(config)
        if config.rules is None:
            raise ValueError("inject_hallucinations.rules is required for the rules injector")
        self.rules = config.rules
        if synonyms is None and self.rules.synonyms_path:
            synonyms = Path(self.rules.synonyms_path).read_text(encoding="utf-8")
        self.synonyms = parse_synonyms(synonyms) if synonyms is not None else None
        self.validator = Validator(config.validation)
        self.stats: CorpusStats | None = None

    # ------------------------------------------------------------------ public
    def fit(self, samples: pd.DataFrame) -> CorpusStats:
        """Mine corpus statistics from the ``answer`` column (done by :meth:`inject`)."""
        stats = CorpusStats(self.rules, self.synonyms)
        stats.fit(zip(samples["id"].astype(str), samples["answer"].astype(str), strict=True))
        self.stats = stats
        return stats

    def inject(self, samples: pd.DataFrame, load_image: LoadImage | None = None) -> InjectionResult:
        """Rewrite each sample's answer with rule-made hallucinations.

        Args:
            samples: The canonical ground-truth table.
            load_image: Unused (rules read only text); accepted for the common interface.

        Returns:
            Pairs, failures and stats.
        """
        t0 = time.perf_counter()
        check_samples(samples)
        stats_out = base_stats(len(samples))
        provided, todo = split_provided(samples)
        corpus = self.fit(samples)
        rows = provided_rows(provided)
        failures: list[dict[str, Any]] = []
        for sid, task, answer in zip(
            todo["id"].astype(str), todo["task_type"], todo["answer"].astype(str), strict=True
        ):
            if task not in TASK_TYPES:
                failures.append(
                    {
                        "id": sid,
                        "reason": UNKNOWN_TASK_TYPE,
                        "detail": f"task_type {task!r} is not one of {list(TASK_TYPES)}",
                        "last_output": None,
                    }
                )
                continue
            assigned = assign_type(self.config, sid, task)
            outcome = self._inject_one(corpus, sid, task, answer, assigned)
            if isinstance(outcome, dict):
                failures.append(outcome)
                continue
            used, edit = outcome
            stats_out["fallbacks"] += float(used != assigned)
            rows.append(
                {
                    "id": sid,
                    "rejected": edit.text,
                    "hallucination_type": used,
                    "hallucination_detail": edit.detail,
                    "injector": self.name,
                    "prompt_version": self.rules.version,
                    "model": None,
                }
            )
        pairs = pairs_frame(samples, rows)
        fails = failures_frame(failures)
        stats_out["passthrough"] = float(len(provided))
        stats_out["seconds"] = time.perf_counter() - t0
        finish_stats(stats_out, pairs, fails)
        logger.info(
            "rules injector: %d pairs (%d provided), %d failures, %d fallbacks in %.2f s",
            len(pairs),
            len(provided),
            len(fails),
            int(stats_out["fallbacks"]),
            stats_out["seconds"],
        )
        return InjectionResult(pairs=pairs, failures=fails, stats=stats_out)

    # ------------------------------------------------------------------ per sample
    def _inject_one(
        self, corpus: CorpusStats, sid: str, task: str, answer: str, assigned: str
    ) -> tuple[str, _Edit] | dict[str, Any]:
        analysis = corpus.analyses.get(sid) or corpus.analyse(answer)
        last_reason, last_detail, last_output = NO_APPLICABLE_EDIT, "", None
        tried: list[str] = []
        for htype in fallback_order(self.config, task, assigned):
            tried.append(htype)
            rng = random.Random(stable_seed(self.config.seed, "rules", sid, htype))
            for edit in self._candidates(corpus, analysis, htype, rng):
                verdict = self.validator.check(edit.text, answer)
                if verdict.ok:
                    return htype, _Edit(verdict.text, edit.detail)
                last_reason, last_detail, last_output = (
                    verdict.reason or NO_APPLICABLE_EDIT,
                    f"{htype}: {verdict.detail}",
                    edit.text,
                )
        if last_reason == NO_APPLICABLE_EDIT:
            last_detail = f"nothing to change for {tried} (no matching words in the answer)"
        return {"id": sid, "reason": last_reason, "detail": last_detail, "last_output": last_output}

    def _candidates(
        self, corpus: CorpusStats, analysis: _Analysis, htype: str, rng: random.Random
    ) -> Iterable[_Edit]:
        """Edits of one type, best first (a later one is tried if validation rejects one)."""
        if htype == COOCCURRENCE:
            substitute_first = rng.random() < self.rules.substitute_share
            makers = (
                (self._substitute, self._add) if substitute_first else (self._add, self._substitute)
            )
            for make in makers:
                edit = make(corpus, analysis, rng)
                if edit is not None:
                    yield edit
        elif htype == ATTRIBUTE:
            edit = self._swap(corpus, analysis, rng, (COLOUR, SHAPE, COUNT, SIZE), "attribute")
            if edit is not None:
                yield edit
        elif htype == RELATION:
            edit = self._swap(corpus, analysis, rng, (REL,), "relation")
            if edit is not None:
                yield edit
        elif htype == ANSWER_FLIP:
            flip = self._conclusion_flip(corpus, analysis, rng)
            if flip is not None:
                start, end, new, note = flip
                yield _Edit(
                    _apply(analysis.text, [(start, end, new)]), note.replace("conclusion", htype)
                )
        elif htype == OMISSION:
            edit = self._omit(analysis, rng)
            if edit is not None:
                yield edit
        elif htype == WRONG_REASONING:
            edit = self._wrong_reasoning(corpus, analysis, rng)
            if edit is not None:
                yield edit

    # ------------------------------------------------------------------ edits
    def _new_object(
        self, corpus: CorpusStats, present: set[str], rng: random.Random
    ) -> tuple[str, bool] | None:
        names, weights, by_cooc = corpus.cooccurring(present)
        if not names:
            return None
        return rng.choices(names, weights=weights, k=1)[0], by_cooc

    def _add(self, corpus: CorpusStats, analysis: _Analysis, rng: random.Random) -> _Edit | None:
        objects = analysis.get(OBJECT)
        if not objects or not self.rules.addition_templates:
            return None
        picked = self._new_object(corpus, analysis.present, rng)
        if picked is None:
            return None
        new, by_cooc = picked
        anchor = rng.choice(objects)
        surface = corpus.surface(new)
        a_new = f"{article(surface)} {surface}"
        sentence = rng.choice(self.rules.addition_templates).format(
            a_new=a_new,
            A_new=_match_case("A", a_new),
            relation=rng.choice(self.rules.addition_relations or ["near"]),
            present=anchor.text.lower(),
        )
        text = analysis.text.rstrip()
        # After a random sentence, not always at the end, as a model would; but never before
        # a sentence that refers back ("It is partly covered."), whose referent would change.
        ends = [
            m.end()
            for m in _SENTENCE_END.finditer(text)
            if not _ANAPHORIC_START.match(text[m.end() :].lstrip())
        ]
        if not ends:
            return _Edit(f"{text}. {sentence}", f"add:{new}")
        cut = rng.choice(ends)
        rest = text[cut:].lstrip()
        text = f"{text[:cut]} {sentence}" + (f" {rest}" if rest else "")
        return _Edit(text, f"add:{new}" + ("" if by_cooc else "(frequency)"))

    def _omit(self, analysis: _Analysis, rng: random.Random) -> _Edit | None:
        """Leave out every sentence that names one present object (at least one other stays)."""
        present = sorted(analysis.present)
        if len(present) < 2:
            return None
        old = rng.choice(present)
        text = analysis.text  # match offsets are into this text: it is not stripped
        bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
        spans = list(zip(bounds, bounds[1:], strict=False))  # (start, end) of each sentence
        sentences = [text[a:b].strip() for a, b in spans]
        drop: set[int] = set()
        for i, (start, end) in enumerate(spans):
            if any(m.payload[0] == old and start <= m.start < end for m in analysis.get(OBJECT)):
                drop.add(i)
                # A following sentence that refers back ("It is partly covered.") goes with it.
                if i + 1 < len(sentences) and _ANAPHORIC_START.match(sentences[i + 1]):
                    drop.add(i + 1)
        kept = [t for i, t in enumerate(sentences) if t and i not in drop]
        if not drop or not kept:
            return None
        return _Edit(" ".join(kept), f"omit:{old}")

    def _substitute(
        self, corpus: CorpusStats, analysis: _Analysis, rng: random.Random
    ) -> _Edit | None:
        objects = analysis.get(OBJECT)
        if not objects:
            return None
        present = analysis.present
        old = rng.choice(sorted(present))
        picked = self._new_object(corpus, present, rng)
        if picked is None:
            return None
        new, by_cooc = picked
        surface = corpus.surface(new)
        edits = [
            (m.start, m.end, _match_case(m.text, pluralize(surface) if m.payload[2] else surface))
            for m in objects
            if m.payload[0] == old
        ]
        detail = f"substitute:{old}->{new}" + ("" if by_cooc else "(frequency)")
        return _Edit(_apply(analysis.text, edits), detail)

    def _replacement(
        self, corpus: CorpusStats, group: str, match: _Match, rng: random.Random
    ) -> str | None:
        word = match.payload
        if group in (COLOUR, SHAPE):
            pool = [w for w in (corpus.colours if group == COLOUR else corpus.shapes) if w != word]
            if not pool:
                return None
            # Common words in this corpus are the plausible ones; +1 keeps unseen ones possible.
            return rng.choices(pool, weights=[corpus.word_count[w] + 1 for w in pool], k=1)[0]
        if group == COUNT:
            value = int(word)
            new = max(2, value + rng.choice((-1, 1, 1, 2)))
            if new == value:
                new = value + 1
            if match.text.isdigit():
                return str(new)
            index = new - 2
            return corpus.count_words[index] if index < len(corpus.count_words) else str(new)
        table = {SIZE: corpus.size_alts, REL: corpus.relation_alts, FLIP: corpus.flip_alts}[group]
        alts = table.get(match.text.lower()) or table.get(word)
        return rng.choice(alts) if alts else None

    def _swap(
        self,
        corpus: CorpusStats,
        analysis: _Analysis,
        rng: random.Random,
        groups: tuple[str, ...],
        label: str,
    ) -> _Edit | None:
        spans = [(g, m) for g in groups for m in analysis.get(g)]
        if not spans:
            return None
        spans.sort(key=lambda gm: gm[1].start)
        k = rng.randint(1, min(self.rules.max_edits, len(spans)))
        chosen = sorted(rng.sample(range(len(spans)), k))
        edits: list[tuple[int, int, str]] = []
        notes: list[str] = []
        taken: list[tuple[int, int]] = []
        for idx in chosen:
            group, match = spans[idx]
            if any(s < match.end and match.start < e for s, e in taken):
                continue
            new = self._replacement(corpus, group, match, rng)
            if not new or new.lower() == match.text.lower():
                continue
            edits.append((match.start, match.end, _match_case(match.text, new)))
            taken.append((match.start, match.end))
            notes.append(f"{match.text.lower()}->{new}")
        if not edits:
            return None
        return _Edit(_apply(analysis.text, edits), f"{label}:" + ",".join(notes))

    def _wrong_reasoning(
        self, corpus: CorpusStats, analysis: _Analysis, rng: random.Random
    ) -> _Edit | None:
        """Corrupt one kind of fact (number, colour, object) and invert the conclusion."""
        text = analysis.text
        edits: list[tuple[int, int, str]] = []
        notes: list[str] = []
        fact_kinds = [g for g in (COUNT, COLOUR) if analysis.get(g)]
        if analysis.get(OBJECT):
            fact_kinds.append(OBJECT)
        if fact_kinds:
            kind = rng.choice(fact_kinds)
            if kind == OBJECT:
                present = analysis.present
                old = rng.choice(sorted(present))
                picked = self._new_object(corpus, present, rng)
                if picked is not None:
                    surface = corpus.surface(picked[0])
                    for m in analysis.get(OBJECT):
                        if m.payload[0] == old:
                            word = pluralize(surface) if m.payload[2] else surface
                            edits.append((m.start, m.end, _match_case(m.text, word)))
                    notes.append(f"facts:{old}->{picked[0]}")
            else:
                match = rng.choice(analysis.get(kind))
                new = self._replacement(corpus, kind, match, rng)
                if new:
                    edits.append((match.start, match.end, _match_case(match.text, new)))
                    notes.append(f"facts:{match.text.lower()}->{new}")
        flip = self._conclusion_flip(corpus, analysis, rng)
        if flip is not None:
            start, end, new, note = flip
            if not any(s < end and start < e for s, e, _ in edits):
                edits.append((start, end, new))
                notes.append(note)
        if not edits:
            return None
        return _Edit(_apply(text, edits), "wrong_reasoning:" + ";".join(notes))

    def _conclusion_flip(
        self, corpus: CorpusStats, analysis: _Analysis, rng: random.Random
    ) -> tuple[int, int, str, str] | None:
        """Flip a leading yes/no, else the last flip phrase (the conclusion comes last)."""
        text = analysis.text
        first = _TOKEN.search(text)
        if first is not None:
            word = first.group().lower()
            lead = {"yes": "no", "no": "yes"}
            if word in lead:
                flipped = _match_case(first.group(), lead[word])
                return first.start(), first.end(), flipped, f"conclusion:{word}->{lead[word]}"
        flips = analysis.get(FLIP)
        if not flips:
            return None
        match = flips[-1]
        new = self._replacement(corpus, FLIP, match, rng)
        if not new:
            return None
        note = f"conclusion:{match.text.lower()}->{new}"
        return match.start, match.end, _match_case(match.text, new), note
