"""The injector interface, its result type, and what every injector shares.

An injector turns ground-truth samples into preference pairs: the chosen answer stays, the
rejected answer is the chosen one rewritten with plausible hallucinations. Every input row
ends in exactly one of ``pairs`` or ``failures``; nothing vanishes.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from PIL import Image

from povid_kedro.hallucination.config import InjectConfig
from povid_kedro.schema import DESCRIPTION, GROUND_TRUTH_COLUMNS, VQA

logger = logging.getLogger(__name__)

LoadImage = Callable[[str], Image.Image]

# The injectors read the ground-truth table as ingest writes it.
INPUT_COLUMNS = GROUND_TRUTH_COLUMNS
ADDED_COLUMNS = [
    "hallucination_type",
    "hallucination_detail",
    "injector",
    "prompt_version",
    "model",
]
FAILURE_COLUMNS = ["id", "reason", "detail", "last_output"]

# Pairs whose rejected answer came with the input (POVID's published data).
PROVIDED = "provided"

# Failure reasons, so failure tables can be counted and filtered.
NO_APPLICABLE_EDIT = "no_applicable_edit"
UNKNOWN_TASK_TYPE = "unknown_task_type"
IMAGE_ERROR = "image_error"

STAT_KEYS = (
    "samples",
    "pairs",
    "passthrough",
    "failed",
    "requests",
    "cached",
    "retries",
    "validation_retries",
    "rate_limited",
    "fallbacks",
    "prompt_tokens",
    "completion_tokens",
    "estimated_cost_usd",
    "seconds",
)


@dataclass
class InjectionResult:
    """What :meth:`Injector.inject` returns.

    Attributes:
        pairs: One row per sample with a rejected answer: the input columns plus
            ``hallucination_type``, ``hallucination_detail`` (what was changed, e.g.
            ``add:fork``; empty for model-made answers), ``injector``, ``prompt_version``,
            ``model``.
        failures: ``id``, ``reason``, ``detail``, ``last_output`` per sample without one.
        stats: Numbers only (they go to MLflow metrics): ``samples``, ``pairs``, ``passthrough``,
            ``failed``, ``requests``, ``cached``, ``retries``, ``prompt_tokens``,
            ``completion_tokens``, ``estimated_cost_usd``, ``seconds`` and ``type_<name>`` counts.
    """

    pairs: pd.DataFrame
    failures: pd.DataFrame
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to reach the endpoint. ``repr`` never shows the key.

    Attributes:
        base_url: Endpoint base URL (``.../v1``).
        api_key: The secret; ``None`` for endpoints without auth (a placeholder is sent).
        model: Model name, or ``None`` to use the parameters' ``openai.model``.
        key_source: Where the key came from, for error messages (never the key itself).
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    key_source: str = "the caller"

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return f"ClientConfig(base_url={self.base_url!r}, api_key={key!r}, model={self.model!r})"

    __str__ = __repr__


class Injector(abc.ABC):
    """Base class of all injectors.

    Args:
        config: The typed ``inject_hallucinations`` parameters.
    """

    name: str = "base"

    def __init__(self, config: InjectConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def inject(self, samples: pd.DataFrame, load_image: LoadImage) -> InjectionResult:
        """Give every sample a rejected answer, or a failure with its reason.

        Args:
            samples: The canonical ground-truth table (``id``, ``image``, ``task_type``,
                ``prompt``, ``answer``, ``rejected``, ``source``, ``turn``).
            load_image: Relative image path -> RGB image.

        Returns:
            Pairs, failures and numeric stats.
        """


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (independent of row order and PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_seed(*parts: object) -> int:
    """A 64-bit seed fixed by ``parts``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign_type(config: InjectConfig, sample_id: str, task_type: str) -> str:
    """The hallucination type of one sample, drawn from ``type_mix`` by (seed, id).

    Drawing per id (not per position) keeps a sample's type, and so its cache key, the same
    when the table is re-ordered, filtered or extended.
    """
    # Sorted by name: the draw must not depend on the mapping's key order (YAML dumps sort).
    mix = sorted((t, w) for t, w in config.type_mix[task_type].items() if w > 0)
    total = sum(w for _, w in mix)
    u = stable_unit(config.seed, "type", sample_id) * total
    acc = 0.0
    for name, weight in mix:
        acc += weight
        if u < acc:
            return name
    return mix[-1][0]


def fallback_order(config: InjectConfig, task_type: str, first: str) -> list[str]:
    """Types to try for a sample: its own, then its task's others, then the description ones.

    Others come by decreasing weight, zero weights last (a weight of 0 means "never drawn",
    not "never used as a fallback"). A reasoning answer whose facts and conclusion offer
    nothing to change can still take a description-type edit.
    """
    order = [first]
    # A one-word answer takes no description edit.
    for task in (task_type,) if task_type == VQA else (task_type, DESCRIPTION):
        mix = config.type_mix.get(task, {})
        for name, _ in sorted(mix.items(), key=lambda kv: (-kv[1], kv[0])):
            if name not in order:
                order.append(name)
    return order


def is_missing(value: Any) -> bool:
    """True for None / NaN / pd.NA / empty strings."""
    if value is None:
        return True
    try:
        if pd.isna(value):
            return True
    except (TypeError, ValueError):
        pass
    return isinstance(value, str) and not value.strip()


def check_samples(samples: pd.DataFrame) -> None:
    """Raise ``ValueError`` unless the table has the canonical columns and unique ids."""
    missing = [c for c in ("id", "image", "task_type", "prompt", "answer") if c not in samples]
    if missing:
        raise ValueError(f"samples lack column(s) {missing}; expected {INPUT_COLUMNS}")
    dup = samples["id"][samples["id"].duplicated()].head(5).tolist()
    if dup:
        raise ValueError(f"samples have duplicate ids, e.g. {dup}; ids must be unique")


def split_provided(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows that already have a rejected answer, rows that need one)."""
    if "rejected" not in samples:
        return samples.iloc[0:0], samples
    has = samples["rejected"].map(lambda v: not is_missing(v)).astype(bool)
    return samples[has], samples[~has]


def pairs_frame(samples: pd.DataFrame, rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Join per-id injection results onto the input rows, keeping input order and columns.

    Args:
        samples: The input table (any extra columns are kept).
        rows: Dicts with ``id``, ``rejected`` and the added columns.

    Returns:
        The pairs table: input columns (``rejected`` filled) + :data:`ADDED_COLUMNS`.
    """
    by_id = {row["id"]: row for row in rows}
    out = samples[samples["id"].isin(list(by_id))].reset_index(drop=True)
    ids = out["id"].tolist()
    # Object columns: a pandas "string" dtype would turn None into <NA>, which parquet and
    # JSON writers downstream treat differently from None.
    for col in ["rejected", *ADDED_COLUMNS]:
        out[col] = pd.Series([by_id[i][col] for i in ids], dtype=object)
    return out


def provided_rows(provided: pd.DataFrame) -> list[dict[str, Any]]:
    """Pass-through rows: their rejected answer is kept and tagged ``provided``."""
    return [
        {
            "id": sid,
            "rejected": rej,
            "hallucination_type": PROVIDED,
            "hallucination_detail": "",
            "injector": PROVIDED,
            "prompt_version": None,
            "model": None,
        }
        for sid, rej in zip(provided["id"], provided["rejected"], strict=True)
    ]


def failures_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The failures table with its fixed columns (empty rows -> empty table)."""
    frame = pd.DataFrame(list(rows), columns=FAILURE_COLUMNS)
    return frame.astype(object)


def redact(text: Any, secrets: Iterable[str | None]) -> Any:
    """Replace every secret in ``text`` by ``***`` (non-strings are returned unchanged)."""
    if not isinstance(text, str):
        return text
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def base_stats(n_samples: int) -> dict[str, float]:
    """All stat keys at zero, so every run logs the same metric names."""
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    stats["samples"] = float(n_samples)
    return stats


def finish_stats(stats: dict[str, float], pairs: pd.DataFrame, failures: pd.DataFrame) -> None:
    """Fill the count stats from the final tables (numbers only); warn about failures."""
    if len(failures):
        counts = failures["reason"].value_counts().to_dict()
        logger.warning(
            "%d of %d samples got no rejected answer, by reason: %s",
            len(failures),
            int(stats.get("samples", 0)),
            counts,
        )
    stats["pairs"] = float(len(pairs))
    stats["failed"] = float(len(failures))
    if len(pairs):
        for name, count in pairs["hallucination_type"].value_counts().items():
            stats[f"type_{name}"] = float(count)
    if len(failures):
        for name, count in failures["reason"].value_counts().items():
            stats[f"failed_{name}"] = float(count)
