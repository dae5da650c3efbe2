"""MMHal-Bench scoring (Sun et al. 2023; MMHal-Bench ``eval_gpt4.py``, LLaVA-RLHF ``Eval/``).

A text-only judge reads the image contents, the question, the standard human-generated answer
and the model's response, and rates the response 0-6 (6: very informative with good analysis
or reasoning, no hallucination ... 0: not informative, with hallucination). The rating is read
as the single ``rating: N`` in the reply; a reply with none, or with several different ones,
scores 0 with a warning. Ratings below 3 count as hallucinations. The judge call itself lives
elsewhere; this module builds its prompt and scores its replies.

Command line::

    python -m povid_kedro.metrics.mmhal --responses FILE.json --judgements FILE.json \\
        --output OUT.json
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from povid_kedro.metrics._io import InputError, read_json, require_keys, run_cli

logger = logging.getLogger(__name__)

#: The eight MMHal-Bench question types, in the benchmark's order (question i has type i % 8).
MMHAL_QUESTION_TYPES: tuple[str, ...] = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)
#: Keys every MMHal response record must have to build a judge prompt.
RECORD_KEYS: tuple[str, ...] = ("question_type", "image_content", "question", "gt_answer")
#: Ratings below this count as a hallucination.
HALLUCINATION_THRESHOLD = 3
#: Highest rating on the judge's scale.
MAX_RATING = 6

#: The judge prompt of MMHal-Bench ``eval_gpt4.py`` (LLaVA-RLHF ``Eval/eval_gpt_mmhal.py``),
#: verbatim, its typo "evalutation" included, so that scores stay comparable with published ones.
#: Fields: image_content, question, gt_answer, model_answer.
JUDGE_PROMPT_TEMPLATE = """Please act as an impartial and objective judge and evaluate the quality of the response provided by a Large Multimodal Model (LMM) to the user question. Your evaluation should be mainly based on whether the response is informative, and whether the response contains any hallucination. Hallucination, in this context, refers to a situation where the LMM generates a response that includes information not present or implied in the image or previous conversation. A hallucination could be a false claim about an object, action, emotion, or any other detail that is not grounded in the image.

For clarity, consider these examples:

### Example 1:
- Image Contents: Lynx, Cat
- Question: How many cats can you see in this image?
- Standard Human-Generated Answer: There are two cats visible in the image.
- LMM Response to Evaluate: There is one cat in the image.
- Analysis: The LMM's response is false because it claims there is only one cat in the image, when in fact there are two.
- Hallucination: Yes.

### Example 2:
- Image Contents: Tree, Plant, Panda, Animal
- Question: What can you see from this photo?
- Standard Human-Generated Answer: In this photo we can see branches. We can see a panda on a branch. The background is blurry.
- LMM Response to Evaluate: In the photo, I can see a large black and white panda sitting on a tree branch. The image captures the panda's unique appearance and its natural habitat, showcasing the beauty and rarity of these animals.
- Analysis: The LMM's response is not false because it does not make any false claims about the image contents. For example, it does not claim that the panda is eating bamboo.
- Hallucination: No.

### Example 3:
- Image Contents: Fashion accessory, Mammal, Dog, Umbrella
- Question: Describe this image in details.
- Standard Human-Generated Answer: In this picture I can see a dog laying under a yellow umbrella on a beach, and there is a rope on the right side. In the background I can see few persons talking or lying. At the top of the image, I can see the blue and clear sky.
- LMM Response to Evaluate: The image features a brown dog laying on the sand at the beach, underneath a yellow umbrella. The dog is positioned near the water, and there are people in the background. The beach is sandy, and the sun is shining, creating a pleasant atmosphere. The dog is enjoying the shade provided by the umbrella, which is a common way to protect pets from the sun's harmful rays. The presence of people in the background suggests that the beach is a popular spot for leisure activities, such as sunbathing, swimming, and relaxing.
- Analysis: The LMM's response is false because it claims that the dog is positioned near the water, but there is no water in the image.
- Hallucination: Yes.

### Example 4:
- Image Contents: Clothing, Luggage and bags, Man, Building, Woman, Person
- Question: Where is this photo taken?
- Standard Human-Generated Answer: From the slogan "Welcome to Houston, Texas", we can infer that this photo is taken at an airport in Houston, Texas.
- LMM Response to Evaluate: This photo is taken at an airport, specifically at the entrance of a terminal. However, the specific location of this airport cannot be determined from the image.
- Analysis: Although the LMM's response does not explicitly mention the location "Houston, Texas" and does not perfectly answer the question, it makes no false claims about the image contents. Therefore, this response is not considered hallucination. It is OK if the LMM fails to directly answer the question, expresses uncertainty, or cannot include all the objects or details in the human-generated answer.
- Hallucination: No.

### Example 5:
- Image Contents: Tree, Tower
- Question: What environmental concerns are involved in this photo?
- Standard Human-Generated Answer: This photo shows a smokestack emitting smoke. It may cause severe air pollution which threatens human health.
- LMM Response to Evaluate: In the photo, there are several environmental concerns related to the smokestack emitting smoke. The smoke from the smokestack is a byproduct of industrial processes, which can contribute to air pollution, climate change, and negative impacts on human health. The smoke contains harmful pollutants, such as particulate matter, sulfur dioxide, nitrogen oxides, and carbon monoxide, which can lead to respiratory problems, heart disease, and other health issues. Additionally, the smoke contributes to the greenhouse effect, which can lead to global warming and climate change. The smokestack's emissions also affect the environment, as they can harm wildlife, vegetation, and ecosystems. Therefore, it is essential to address these environmental concerns by implementing measures to reduce emissions and promote sustainable practices in industrial processes.
- Analysis: Although the LMM's response is significantly longer than the standard human-generated answer, it does not contain any false claims about the image contents. Instead, it provides additional general information about the environmental concerns, which can be inferred from the smoke emission. Such detailed analysis or reasoning should be considered as a positive aspect, as long as it contains no false claims.
- Hallucination: No.

With these examples in mind, please help me evaluate whether the response by the LMM is informative, and whether hallucination exists in it, based on the comparison between the LMM's response and the factual information provided in the image contents, question, and the standard human-generated answer below.

Please note that the standard human-generated answer may only contain factual information but may not give a detailed analysis. Also, the standard human-generated answer may not be completely comprehensive in describing all the objects and their attributes, so please be a bit more cautious during evalutation. LMM's detailed analysis or reasoning should be encouraged.

To evaluate the LMM responses, first, begin your evaluation by providing a short explanation. Second, after providing your explanation, you must rate the response by choosing from the following options:
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination

### Image Contents
{image_content}

### Question
{question}

### Standard Human-Generated Answer
{gt_answer}

### LMM Response to Evaluate
{model_answer}
"""  # noqa: E501


def _join_image_content(value: Any) -> str:
    """The reference joins the list of image labels with ``", "``; a string is used as is."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return ", ".join(value)
    raise ValueError(f"'image_content' must be a string or a list of strings, got {value!r}")


def build_judge_prompt(record: Mapping[str, Any]) -> str:
    """Fill :data:`JUDGE_PROMPT_TEMPLATE` for one MMHal-Bench record.

    Args:
        record: A ``response_template.json`` record with ``image_content`` (list of labels),
            ``question``, ``gt_answer`` and ``model_answer``.

    Returns:
        The prompt for the judge.

    Raises:
        ValueError: A key is missing or ``image_content`` is neither a string nor a list of
            strings.
    """
    require_keys(record, ["image_content", "question", "gt_answer", "model_answer"], "record")
    return JUDGE_PROMPT_TEMPLATE.format(
        image_content=_join_image_content(record["image_content"]),
        question=record["question"],
        gt_answer=record["gt_answer"],
        model_answer=record["model_answer"],
    )


# "rating: N" with N in 0..6 and not followed by another digit ("rating: 10" is not 1).
_RATING_RE = re.compile(rf"rating: ([0-{MAX_RATING}])(?!\d)")


def parse_rating(reply: str) -> int | None:
    """Read the judge's rating.

    Args:
        reply: The judge's reply.

    Returns:
        The rating, if the reply holds ``rating: N`` (case-insensitive) for exactly one N in
        0..6 (repeats of the same N are fine); ``None`` if it holds none or several different
        ones.
    """
    found = {int(match) for match in _RATING_RE.findall(reply.lower())}
    return found.pop() if len(found) == 1 else None


def judgement_text(judgement: Any) -> str:
    """Text of one judge reply: a string, or a chat completion's ``choices[0].message.content``.

    Args:
        judgement: The stored reply.

    Returns:
        The reply text.

    Raises:
        ValueError: Neither form.
    """
    if isinstance(judgement, str):
        return judgement
    try:
        content = judgement["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise ValueError(
            "expected a string or an object with choices[0].message.content (a string)"
        )
    return content


def score_mmhal(
    records: Sequence[Mapping[str, Any]],
    judgements: Sequence[Any],
    *,
    records_source: str = "responses",
    judgements_source: str = "judgements",
) -> dict[str, Any]:
    """Score MMHal-Bench responses from the judge's replies.

    Args:
        records: ``response_template.json`` records (``question_type``, ``question``, ...).
        judgements: The judge's replies, same order: strings or chat-completion objects.
        records_source: Name of the responses' file, used in messages.
        judgements_source: Name of the judgements' file, used in messages.

    Returns:
        ``average_score``; ``hallucination_rate`` (share of ratings < 3); ``per_type`` (average
        score per ``question_type``, the 8 MMHal types first, in benchmark order, then any
        other); ``n``; ``n_unparsed`` (replies scored 0 because they held no single rating);
        and ``questions``: per record its ``index``, ``question_type``, ``question``,
        ``rating`` and ``parsed``.

    Raises:
        ValueError: No records, counts differ, a record lacks a key, or a reply is malformed.
    """
    if not records:
        raise ValueError(f"{records_source}: no records to score")
    if len(records) != len(judgements):
        raise ValueError(
            f"{judgements_source} has {len(judgements)} replies but {records_source} has "
            f"{len(records)} records"
        )
    rows = []
    for i, (record, judgement) in enumerate(zip(records, judgements, strict=True)):
        require_keys(record, ["question_type", "question"], f"{records_source}: records[{i}]")
        try:
            text = judgement_text(judgement)
        except ValueError as exc:
            raise InputError(f"{judgements_source}: records[{i}]: {exc}") from exc
        rating = parse_rating(text)
        if rating is None:
            logger.warning(
                "%s: records[%d] (%s question %r): no single 'rating: N' in the judge's reply; "
                "scoring 0",
                judgements_source,
                i,
                record["question_type"],
                record["question"],
            )
        rows.append(
            {
                "index": i,
                "question_type": record["question_type"],
                "question": record["question"],
                "rating": 0 if rating is None else rating,
                "parsed": rating is not None,
            }
        )
    ratings = [row["rating"] for row in rows]
    by_type: dict[str, list[int]] = {}
    for row in rows:
        by_type.setdefault(str(row["question_type"]), []).append(row["rating"])
    unknown = sorted(set(by_type) - set(MMHAL_QUESTION_TYPES))
    if unknown:
        logger.warning("%s: question types outside MMHal's eight: %s", records_source, unknown)
    order = [t for t in MMHAL_QUESTION_TYPES if t in by_type] + unknown
    return {
        "average_score": sum(ratings) / len(ratings),
        "hallucination_rate": sum(r < HALLUCINATION_THRESHOLD for r in ratings) / len(ratings),
        "per_type": {t: sum(by_type[t]) / len(by_type[t]) for t in order},
        "n": len(rows),
        "n_unparsed": sum(not row["parsed"] for row in rows),
        "questions": rows,
    }


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m povid_kedro.metrics.mmhal",
        description="MMHal-Bench average score, hallucination rate and per-type scores.",
    )
    parser.add_argument(
        "--responses", required=True, help="JSON list of MMHal response_template.json records"
    )
    parser.add_argument(
        "--judgements", required=True, help="JSON list of the judge's replies, same order"
    )
    parser.add_argument("--output", required=True, help="JSON file to write")
    return parser


def _read_list(path: str) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list, got {type(data).__name__}")
    if not data:
        raise InputError(f"{path}: the list is empty")
    return data


def _compute(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    records = _read_list(args.responses)
    for i, record in enumerate(records):
        require_keys(record, RECORD_KEYS, f"{args.responses}: records[{i}]")
    judgements = _read_list(args.judgements)
    result = score_mmhal(
        records, judgements, records_source=args.responses, judgements_source=args.judgements
    )
    summary = {k: result[k] for k in ("average_score", "hallucination_rate", "per_type", "n")}
    summary["n_unparsed"] = result["n_unparsed"]
    return result, summary


def main(argv: list[str] | None = None) -> int:
    """Run the MMHal-Bench command.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 2 on missing or malformed input.
    """
    return run_cli(_build_parser(), _compute, argv)


if __name__ == "__main__":
    raise SystemExit(main())
