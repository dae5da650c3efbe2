"""Names every package shares, defined once.

The ground-truth table that ``ingest_ground_truth`` writes and the injectors read, its task
types, the image placeholder of prompts, the label value losses skip, the POPE splits, and the
two summary metrics the champion gate compares. Modules import them from here; none spells
them again.
"""

from __future__ import annotations

# The image placeholder in prompts (LLaVA's), expanded by the processor into image tokens.
IMAGE_TOKEN = "<image>"

# Label value the language-model losses skip (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100

DESCRIPTION = "description"
REASONING = "reasoning"
VQA = "vqa"  # one-word answers (LLaVA-1.5's VQA-style "Yes" / "No" data)
TASK_TYPES = (DESCRIPTION, REASONING, VQA)

# One row per (human, gpt) turn; ``rejected`` is empty unless the source brought its own.
GROUND_TRUTH_COLUMNS = [
    "id",
    "image",
    "task_type",
    "prompt",
    "answer",
    "rejected",
    "source",
    "turn",
]

POPE_SPLITS = ("random", "popular", "adversarial")

# The summary metrics the gate compares between a candidate and the model it must beat.
GATE_CHAIR = "chair_s"
GATE_POPE_F1 = "pope_f1_mean"
GATE_METRICS = (GATE_CHAIR, GATE_POPE_F1)
