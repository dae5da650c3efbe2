"""The rule-based injector: each type changes what it claims, deterministically, fast."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import povid_kedro
from povid_kedro.experiments import deep_merge
from povid_kedro.hallucination import RuleInjector, make_injector, parse_synonyms
from povid_kedro.hallucination.base import assign_type
from povid_kedro.hallucination.config import InjectConfig
from povid_kedro.inflect import pluralize
from povid_kedro.testing.synthetic import make_samples

COCO_SYNONYMS = Path(povid_kedro.__file__).parent / "resources" / "coco_synonyms.txt"


def _only(base_params: dict, description: dict, **extra) -> dict:
    """Parameters whose description mix is exactly ``description`` (other weights 0)."""
    mix = {name: 0.0 for name in base_params["type_mix"]["description"]} | description
    return deep_merge(base_params, {"type_mix": {"description": mix}, **extra})


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return make_samples(400, seed=7)


def _run(params: dict, samples: pd.DataFrame, **kwargs):
    injector = make_injector(params, **kwargs)
    result = injector.inject(samples, None)
    return injector, result


def test_cooccurrence_adds_or_substitutes_an_absent_cooccurring_object(base_params, corpus):
    injector, result = _run(_only(base_params, {"cooccurrence": 1.0}), corpus)
    stats = injector.stats
    desc = result.pairs[result.pairs["task_type"] == "description"]
    assert len(desc) > 100 and set(desc["hallucination_type"]) == {"cooccurrence"}
    kinds = set()
    for row in desc.itertuples():
        kind, _, what = row.hallucination_detail.partition(":")
        kinds.add(kind)
        new = what.split("->")[-1]
        present = stats.analyses[row.id].present
        assert new not in present, row
        # It usually appears with something that is present.
        assert any(stats.cooccurrence[p][new] > 0 for p in present), row
        assert new in stats.analyse(row.rejected).present
        if kind == "substitute":
            old = what.split("->")[0]
            assert old in present and old not in stats.analyse(row.rejected).present
    assert kinds == {"add", "substitute"}


def test_substitution_share_balances_lengths(base_params, corpus):
    params = _only(base_params, {"cooccurrence": 1.0}, rules={"substitute_share": 1.0})
    _, result = _run(params, corpus)
    desc = result.pairs[result.pairs["task_type"] == "description"]
    assert desc["hallucination_detail"].str.startswith("substitute:").all()
    ratio = desc["rejected"].str.len() / desc["answer"].str.len()
    assert ratio.between(0.8, 1.25).all()
    assert abs(ratio.mean() - 1.0) < 0.05


def test_attribute_swaps_a_colour_count_size_or_shape(base_params, corpus):
    injector, result = _run(_only(base_params, {"attribute": 1.0}), corpus)
    rules = injector.rules
    groups = [
        set(rules.colour_words),
        set(rules.count_words),
        set(rules.shape_words),
        {w for pair in rules.size_swaps for w in pair},
    ]
    desc = result.pairs[result.pairs["task_type"] == "description"]
    assert set(desc["hallucination_type"]) == {"attribute"}
    for row in desc.itertuples():
        swaps = {tuple(s.split("->")) for s in row.hallucination_detail.split(":", 1)[1].split(",")}
        for old, new in swaps:
            assert old != new and any(old in g and new in g for g in groups), row
        # Nothing else changed: same words except the swapped ones.
        before, after = _words(row.answer), _words(row.rejected)
        assert len(before) == len(after)
        changed = {(a, b) for a, b in zip(before, after, strict=True) if a != b}
        assert changed == swaps, row


def test_relation_swaps_a_relation_word(base_params, corpus):
    injector, result = _run(_only(base_params, {"relation": 1.0}), corpus)
    relation_words = {w for pair in injector.rules.relation_swaps for w in pair}
    desc = result.pairs[result.pairs["task_type"] == "description"]
    assert set(desc["hallucination_type"]) == {"relation"}
    for row in desc.itertuples():
        for swap in row.hallucination_detail.split(":", 1)[1].split(","):
            old, new = swap.split("->")
            assert old in relation_words and new in relation_words and old != new
            assert new in row.rejected.lower()


def test_reasoning_rejections_change_facts_and_conclusion(base_params, corpus):
    injector, result = _run(base_params, corpus)
    reasoning = result.pairs[result.pairs["task_type"] == "reasoning"]
    assert len(reasoning) > 50
    assert set(reasoning["hallucination_type"]) == {"wrong_reasoning"}
    both = 0
    for row in reasoning.itertuples():
        detail = row.hallucination_detail
        assert "facts:" in detail or "conclusion:" in detail
        both += "facts:" in detail and "conclusion:" in detail
        assert _words(row.rejected) != _words(row.answer)
        if row.answer.startswith("Yes"):
            assert row.rejected.startswith("No")
    assert both / len(reasoning) > 0.9


def test_fallback_when_the_type_cannot_apply_and_failure_when_nothing_can(base_params):
    rows = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "image": ["a.png", "b.png", "c.png"],
            "task_type": ["description"] * 3,
            "prompt": ["<image>\nDescribe the image."] * 3,
            # a: objects but no colour / relation words; c: nothing any rule can change.
            "answer": [
                "A dog and a frisbee in a park with people.",
                "A red car is parked next to a bus.",
                "Nothing much to say here at all.",
            ],
            "rejected": [None] * 3,
            "source": ["t"] * 3,
            "turn": [0] * 3,
        }
    )
    _, result = _run(_only(base_params, {"attribute": 1.0}), rows)
    by_id = result.pairs.set_index("id")
    assert by_id.loc["a", "hallucination_type"] == "cooccurrence"
    assert by_id.loc["b", "hallucination_type"] == "attribute"
    assert result.failures["id"].tolist() == ["c"]
    assert result.failures["reason"].tolist() == ["no_applicable_edit"]
    assert result.stats["fallbacks"] == 1 and result.stats["failed"] == 1


def test_deterministic_per_seed_and_independent_of_row_order(base_params, corpus):
    _, first = _run(base_params, corpus)
    _, again = _run(base_params, corpus)
    pd.testing.assert_frame_equal(first.pairs, again.pairs)

    shuffled = corpus.sample(frac=1.0, random_state=1)
    _, reordered = _run(base_params, shuffled)
    a = first.pairs.set_index("id")["rejected"]
    b = reordered.pairs.set_index("id")["rejected"].loc[a.index]
    assert (a == b).all()

    _, other_seed = _run(deep_merge(base_params, {"seed": 1}), corpus)
    c = other_seed.pairs.set_index("id")["rejected"].loc[a.index]
    assert (a != c).mean() > 0.3


def test_type_assignment_ignores_mapping_order(base_params):
    forward = InjectConfig.from_dict(base_params)
    mix = base_params["type_mix"]["description"]
    backward = InjectConfig.from_dict(
        deep_merge(base_params, {"type_mix": {"description": dict(reversed(list(mix.items())))}})
    )
    ids = [f"id{i}" for i in range(200)]
    assert [assign_type(forward, i, "description") for i in ids] == [
        assign_type(backward, i, "description") for i in ids
    ]


def test_type_mix_is_followed(base_params, corpus):
    _, result = _run(base_params, make_samples(3000, seed=2, reasoning_share=0.0))
    shares = result.pairs["hallucination_type"].value_counts(normalize=True)
    for name, weight in base_params["type_mix"]["description"].items():
        assert shares[name] == pytest.approx(weight, abs=0.05)


def test_real_coco_sentences_with_the_coco_synonym_list(base_params):
    synonyms = COCO_SYNONYMS.read_text(encoding="utf-8")
    texts = [
        "The image shows a man riding a wave on top of a surfboard in the ocean. There are "
        "two other people in the water to the left, and a boat can be seen in the background.",
        "A kitchen with a white refrigerator next to a wooden dining table. Several chairs "
        "surround the table, and a bowl of oranges sits on the counter near the sink.",
        "A busy city street with cars and a red double-decker bus stopped at a traffic light. "
        "People walk on the sidewalk, and a man is holding an umbrella.",
        "A young boy rides a motor bike past a parked truck while a puppy watches him.",
        "Two giraffes are standing next to a tall tree, with a zebra grazing behind them.",
        "A plate with a slice of pizza, a fork and a knife sits next to a glass of wine.",
    ]
    rows = pd.DataFrame(
        {
            "id": [f"coco{i}" for i in range(len(texts))],
            "image": [f"COCO_train2014_{i:012d}.jpg" for i in range(len(texts))],
            "task_type": "description",
            "prompt": "<image>\nDescribe the following image in detail.",
            "answer": texts,
            "rejected": None,
            "source": "detail_23k",
            "turn": 0,
        }
    )
    for htype in ("cooccurrence", "attribute", "relation"):
        params = _only(base_params, {htype: 1.0})
        injector, result = _run(params, rows, synonyms=synonyms)
        assert isinstance(injector, RuleInjector)
        _check = result.pairs
        assert len(_check) == len(rows), result.failures
        assert (_check["rejected"] != _check["answer"]).all()

    stats = injector.stats
    assert stats.analyses["coco0"].present == {"person", "surfboard", "boat"}
    assert stats.analyses["coco1"].present >= {"refrigerator", "dining table", "chair", "sink"}
    # "motor bike" has a stray leading space in the COCO file; it still matches.
    assert "motorcycle" in stats.analyses["coco3"].present
    assert {"dog", "truck", "person"} <= stats.analyses["coco3"].present
    assert stats.analyses["coco4"].present == {"giraffe", "zebra"}
    people = [m for m in stats.analyses["coco2"].get("object") if m.text == "People"]
    assert people and people[0].payload == ("person", "person", True)
    # "orange" is a colour before a noun and a fruit on its own.
    assert "orange" in stats.analyses["coco1"].present


def test_synonym_list_parsing_and_plurals():
    parsed = parse_synonyms("person, girl, people\nmotorcycle, scooter,  motor bike\n\n")
    assert parsed == {
        "person": ["person", "girl", "people"],
        "motorcycle": ["motorcycle", "scooter", "motor bike"],
    }
    assert pluralize("bus") == "buses"
    assert pluralize("traffic light") == "traffic lights"
    assert pluralize("knife") == "knives"
    assert pluralize("sheep") == "sheep"
    assert pluralize("policeman") == "policemen"
    assert pluralize("strawberry") == "strawberries"


def test_articles_follow_the_new_word(base_params):
    rows = make_samples(1, seed=0).assign(
        answer=["A small red plate sits on the left next to a fork."], task_type="description"
    )
    params = _only(
        base_params, {"attribute": 1.0}, rules={"colour_words": ["red", "orange"], "max_edits": 1}
    )
    params["rules"]["size_swaps"] = []
    params["rules"]["count_words"] = []
    _, result = _run(params, rows)
    assert (
        result.pairs["rejected"].iloc[0] == "A small orange plate sits on the left next to a fork."
    )
    params["rules"]["colour_words"] = ["red", "orange"]
    rows = rows.assign(answer=["There is a red umbrella, and an orange cup."])
    _, result = _run(params, rows)
    assert result.pairs["rejected"].iloc[0] in (
        "There is an orange umbrella, and an orange cup.",
        "There is a red umbrella, and a red cup.",
    )


def test_every_row_is_a_pair_or_a_failure(base_params):
    rows = make_samples(50, seed=4)
    rows.loc[3, "rejected"] = "Given rejected answer."
    rows.loc[4, "task_type"] = "unknown"
    rows.loc[5, "answer"] = "Okay."
    _, result = _run(base_params, rows)
    ids = list(result.pairs["id"]) + list(result.failures["id"])
    assert sorted(ids) == sorted(rows["id"]) and len(set(ids)) == len(ids)
    assert set(result.failures["id"]) == {rows.loc[4, "id"], rows.loc[5, "id"]}
    given = result.pairs.set_index("id").loc[rows.loc[3, "id"]]
    assert given["rejected"] == "Given rejected answer." and given["injector"] == "provided"
    assert list(result.pairs.columns[:8]) == list(rows.columns)


def test_ten_thousand_samples_all_become_pairs(base_params):
    # How fast is benchmarks/inject.py's to say (a wall-clock bound here fails on a busy machine).
    samples = make_samples(10_000, seed=1)
    _, result = _run(base_params, samples)
    assert len(result.pairs) + len(result.failures) == 10_000
    assert result.failures.empty


def test_omission_leaves_out_one_present_object_and_nothing_else(base_params, corpus):
    injector, result = _run(_only(base_params, {"omission": 1.0}), corpus)
    stats = injector.stats
    desc = result.pairs[result.pairs["task_type"] == "description"]
    omitted = desc[desc["hallucination_type"] == "omission"]
    assert len(omitted) > 50
    for row in omitted.itertuples():
        gone = row.hallucination_detail.removeprefix("omit:")
        before, after = stats.analyses[row.id].present, stats.analyse(row.rejected).present
        assert gone in before and after == before - {gone}, row
        # Whole sentences go, in order: the rejection is a sub-sequence of the answer's words.
        words = iter(_words(row.answer))
        assert all(w in words for w in _words(row.rejected)), row
    assert (omitted["rejected"].str.len() < omitted["answer"].str.len()).all()


def _vqa_rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"vqa_{i}" for i in range(n)],
            "image": [f"train2014/kitchen_{i:05d}.png" for i in range(n)],
            "task_type": "vqa",
            "prompt": "<image>\nIs there a fork in the image?\nAnswer with one word.",
            "answer": ["Yes" if i % 2 else "No" for i in range(n)],
            "rejected": None,
            "source": "synthetic",
            "turn": 0,
        }
    )


def test_one_word_answers_are_turned_around(base_params, corpus):
    samples = pd.concat([corpus.head(40), _vqa_rows(10)], ignore_index=True)
    params = deep_merge(base_params, {"type_mix": {"vqa": {"answer_flip": 1.0}}})
    _, result = _run(params, samples)
    vqa = result.pairs[result.pairs["task_type"] == "vqa"]
    assert len(vqa) == 10 and set(vqa["hallucination_type"]) == {"answer_flip"}
    assert (vqa["rejected"] == vqa["answer"].map({"Yes": "No", "No": "Yes"})).all()
    assert set(vqa["hallucination_detail"]) == {"answer_flip:yes->no", "answer_flip:no->yes"}
