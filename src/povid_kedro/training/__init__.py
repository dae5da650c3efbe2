"""POVID preference training: checked pair encoding, DPO losses, the two-stage engine (no Kedro).

- :mod:`~povid_kedro.training.config`: dataclass configs of both stages (``dpo_training`` params);
- :mod:`~povid_kedro.training.losses`: sequence log-probs, DPO variants, teacher-forced ``y_n-``;
- :mod:`~povid_kedro.training.data`: pair checks (reported by id), encoding, batching collator;
- :mod:`~povid_kedro.training.trainer`: :class:`POVIDTrainer` (a trl ``DPOTrainer``),
  :func:`train_stage1`, :func:`train_stage2`;
- :mod:`~povid_kedro.training.registry`: an MLflow pyfunc model around a model directory and a
  helper that logs, registers and aliases it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported lazily (PEP 562): the trainer pulls in trl, peft and datasets, which a process that only
# serves a registered model (registry) should not pay for.
_EXPORTS = {
    "DPOTrainingConfig": "config",
    "LoraSettings": "config",
    "RegistrySettings": "config",
    "Stage2Config": "config",
    "StageConfig": "config",
    "EncodedPairs": "data",
    "ImageBank": "data",
    "PairCollator": "data",
    "encode_pairs": "data",
    "DPOLossOutput": "losses",
    "dpo_loss": "losses",
    "length_desensitised_logps": "losses",
    "sequence_logps": "losses",
    "teacher_forced_noisy_logps": "losses",
    "NonFiniteLossError": "trainer",
    "POVIDTrainer": "trainer",
    "TrainReport": "trainer",
    "train_stage1": "trainer",
    "train_stage2": "trainer",
    "PovidVLMModel": "registry",
    "log_and_register": "registry",
}

__all__ = list(_EXPORTS)  # noqa: PLE0605 (built from the table above)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
