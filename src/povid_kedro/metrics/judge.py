"""Ask an OpenAI-compatible judge (GPT-4, or a local server) to rate MMHal-Bench answers.

The network side of :mod:`povid_kedro.metrics.mmhal`: one chat completion per record, the
prompt built by :func:`~povid_kedro.metrics.mmhal.build_judge_prompt`. The API key comes with
the client config (credentials or environment) and is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from povid_kedro.metrics.mmhal import build_judge_prompt

logger = logging.getLogger(__name__)


def judge_mmhal(
    records: Sequence[Mapping[str, Any]],
    client_config: Any,
    *,
    model: str,
    temperature: float = 0.0,
    max_tokens: int = 512,
    timeout: float = 60.0,
    max_retries: int = 5,
) -> list[str]:
    """The judge's reply to each record (``model_answer`` filled in).

    Args:
        records: MMHal-Bench records with the model's answers.
        client_config: ``base_url`` and ``api_key`` (what ``OpenAIClientDataset`` loads).
        model: The judge model (the benchmark used ``gpt-4-0314``).
        temperature: Sampling temperature of the judge.
        max_tokens: Longest reply.
        timeout: Seconds per request.
        max_retries: Retries of the ``openai`` client (with its exponential backoff).

    Returns:
        The replies, in record order.
    """
    from openai import OpenAI

    client = OpenAI(
        base_url=client_config.base_url,
        api_key=client_config.api_key or "not-needed",
        timeout=timeout,
        max_retries=max_retries,
    )
    replies = []
    for record in records:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": build_judge_prompt(record)}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        replies.append(response.choices[0].message.content or "")
    logger.info("MMHal-Bench: %d judge replies from %s", len(replies), model)
    return replies
