"""Dataclass configs for the tiny LLaVA: tokenizer, model, supervised training, generation.

Each config is a small ``@dataclass`` (nanoGPT style) that a Kedro ``params:`` input can be
built into; ``from_dict`` refuses unknown keys so that a typo in a parameters file fails at
start-up rather than silently falling back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from povid_kedro.config_reader import read_dataclass


@dataclass
class TokenizerConfig:
    """How the tokenizer of the tiny model is trained.

    Attributes:
        vocab_size: Upper bound on the vocabulary (BPE stops earlier when it runs out of merges).
        min_frequency: Minimum count of a pair for a BPE merge.
        lowercase: Lower-case all text before tokenizing (decoding then returns lower case).
    """

    vocab_size: int = 2048
    min_frequency: int = 2
    lowercase: bool = False

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "base_model.tokenizer"
    ) -> TokenizerConfig:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)


@dataclass
class ModelConfig:
    """Sizes of the tiny ``LlavaForConditionalGeneration`` (CLIP or LeViT vision tower + Llama LM).

    The defaults are the embedded default's model (``conf/base/parameters_base_model.yml``):
    ≈0.8 M parameters with a ~900-token vocabulary, 96×96 images in 16-px patches, i.e. 36
    image tokens.

    Attributes:
        vision_tower: ``clip`` (a ViT: one token per ``patch_size`` patch, CLS dropped) or
            ``levit`` (transformers' LeViT: four stride-2 conv + BatchNorm layers down to 16 px
            patches, ``vision_layers`` attention blocks, then one attention subsampling to half
            the resolution and twice the width). ``vision_feature_layer`` 0 reads the stem's
            tokens (36 for 96 px images), -1 the subsampled ones (9). Its BatchNorm statistics
            stay frozen in DPO.
        image_size: Side of the square input image in pixels (the image processor resizes to it).
        patch_size: Side of a vision patch (of the stem, for ``levit``).
        vision_hidden_size: Width of the vision transformer.
        vision_layers: Depth of the vision transformer.
        vision_heads: Attention heads of the vision transformer.
        vision_intermediate_size: MLP width of the vision transformer.
        vision_feature_layer: Which vision hidden state feeds the projector (LLaVA uses -2 on a
            24-layer tower; a 2-layer tower needs its last, -1).
        text_hidden_size: Width of the language model.
        text_layers: Depth of the language model.
        text_heads: Attention heads of the language model.
        text_kv_heads: Key/value heads (grouped-query attention when below ``text_heads``).
        text_intermediate_size: MLP width of the language model.
        max_position_embeddings: Longest sequence (image tokens included) the LM supports.
        rope_theta: RoPE base of the language model.
        tie_word_embeddings: Share the LM's input embedding and output head.
        image_mean: Per-channel mean the image processor subtracts (CLIP's by default).
        image_std: Per-channel std the image processor divides by (CLIP's by default).
        seed: Seed of the weight initialisation.
    """

    vision_tower: str = "clip"
    image_size: int = 96
    patch_size: int = 16  # conf/base: 16 px patches tile the 32 px grid cells
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    vision_feature_layer: int = -1
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 4
    text_intermediate_size: int = 512
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vision_tower not in ("clip", "levit"):
            raise ValueError(f"vision_tower must be 'clip' or 'levit', got {self.vision_tower!r}")
        if self.vision_tower == "levit" and self.patch_size != 16:
            raise ValueError(
                f"levit: patch_size must be 16 (its stem is four stride-2 convolutions), got "
                f"{self.patch_size}"
            )
        if self.vision_tower == "levit" and self.vision_feature_layer not in (-1, 0, 1):
            raise ValueError(
                "levit: vision_feature_layer must be 0 (the convolutional stem's tokens) or -1 / 1 "
                f"(after the attention stage and its subsampling), got {self.vision_feature_layer}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.image_size % self.token_grid:
            raise ValueError(
                f"levit: image_size {self.image_size} is not a multiple of its {self.token_grid} "
                "image-token rows; pick an image_size / patch_size that is even"
            )

    @property
    def token_grid(self) -> int:
        """Image tokens per row: one per patch (``clip``), one per two patches (``levit``)."""
        side = self.image_size // self.patch_size
        if self.vision_tower == "clip" or self.vision_feature_layer == 0:
            return side
        return (side - 1) // 2 + 1

    @property
    def token_patch_size(self) -> int:
        """Pixels per image token along a side (what the processor's ``patch_size`` must be)."""
        return self.image_size // self.token_grid

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image (CLIP's CLS token is dropped)."""
        return self.token_grid**2

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "base_model.model"
    ) -> ModelConfig:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)


@dataclass
class TrainConfig:
    """Supervised fine-tuning (SFT) of the tiny model on (image, prompt, answer) rows.

    The embedded default (``conf/base/parameters_base_model.yml``, tuned with
    ``scripts/tune_base_model.py``) is a 400-step text-only warm-up on the descriptions, then
    2000 steps of 16 descriptions + 4 records of 4 packed one-word VQA turns (VQA weight 10),
    which fits in 5 minutes on 2 CPU cores. Smaller batches with more steps beat larger ones at
    equal compute: the vision tower learns from the number of updates more than from their size.

    Attributes:
        steps: Optimiser steps of the image-conditioned training.
        batch_size: Rows per step.
        lr: Peak learning rate (AdamW).
        min_lr_ratio: The cosine schedule decays to ``lr * min_lr_ratio``.
        warmup_ratio: Share of ``steps`` spent warming the learning rate up linearly.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        grad_clip: Clip the gradient norm to this (0 disables).
        max_length: Truncate sequences (image tokens included) to this many tokens.
        seed: Seed of the data order (and of anything random in training).
        num_threads: ``torch.set_num_threads`` during training (0 leaves it unchanged).
        text_warmup_steps: Text-only steps before image training, so that the language model
            learns the world's language prior first (0 disables; it also needs ``text_rows``
            passed to :func:`~povid_kedro.modeling.train.train_sft`).
        text_warmup_lr: Peak learning rate of the text-only warm-up.
        log_every: Log the running loss every this many steps.
        loss_normalization: ``token`` averages the loss over every answer token in the batch
            (Hugging Face's default: long answers dominate); ``sample`` averages each row's
            tokens first, so a one-word answer weighs as much as a description.
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    max_length: int = 256
    seed: int = 0
    num_threads: int = 0
    text_warmup_steps: int = 400
    text_warmup_lr: float = 3e-3
    log_every: int = 50
    loss_normalization: str = "token"
    task_batch: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.task_batch is not None and (
            not self.task_batch or any(int(n) < 1 for n in self.task_batch.values())
        ):
            raise ValueError(f"task_batch needs a count >= 1 per task, got {self.task_batch}")
        if self.loss_normalization not in ("token", "sample"):
            raise ValueError(
                f"loss_normalization must be 'token' or 'sample', got {self.loss_normalization!r}"
            )

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "base_model.train"
    ) -> TrainConfig:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        values = dict(values or {})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return read_dataclass(cls, values, where)


@dataclass
class GenerateConfig:
    """Decoding settings for :func:`povid_kedro.modeling.generate.generate`.

    Attributes:
        max_new_tokens: Longest answer in tokens.
        do_sample: Sample (``True``) or decode greedily (``False``).
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        batch_size: Prompts decoded together.
        stop_strings: Strings that end an answer (the string itself is cut off).
        seed: Seed for sampling (``None`` leaves the global RNG as it is).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64
    stop_strings: list[str] | None = None
    seed: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "generate") -> GenerateConfig:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)
