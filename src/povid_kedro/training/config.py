"""Dataclass configs of POVID's two DPO stages (the ``dpo_training`` parameters).

Built like trl's ``DPOConfig``: one dataclass per concern, every field with a ``help`` and a
docstring entry. Defaults are for the embedded default (the tiny model on 2 CPU cores); a real-scale
Kedro environment overrides them (LLaVA-1.5-7B: LoRA r 128, α 256, lr 1e-7, projector lr 2e-5, bf16,
gradient checkpointing, 3 epochs in stage 1, 1 in stage 2). ``from_dict`` refuses unknown keys, so a
typo in a parameters file fails at start-up instead of silently falling back to a default.

The noise of stage 2 (step, seed, ``y_n-`` mode) is *not* here: it lives in
:class:`povid_kedro.training.noise.NoiseConfig` (the ``noise_trigger`` parameters), once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from povid_kedro.config_reader import read_dataclass

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
"""DPO loss variants :func:`povid_kedro.training.losses.dpo_loss` implements."""


NOISE_POSITIONS = ("all", "image_dependent")


def _help(default: Any, text: str) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class LoraSettings:
    r"""LoRA adapter of one stage (peft), merged into the weights when the stage ends.

    Parameters:
        enabled (`bool`, *optional*, defaults to `True`):
            Train a LoRA adapter. With `False` the language model and projector are fully fine-tuned
            (the vision tower stays frozen) and a frozen copy of the model is the reference.
        r (`int`, *optional*, defaults to `16`):
            LoRA rank (the paper: 128 on LLaVA-1.5-7B).
        alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling α (the paper: 256).
        dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input. Only takes effect with `disable_dropout=False` in the stage
            config, since trl disables every dropout layer of the policy by default.
        target_modules (`str`, *optional*, defaults to `r".*language_model.*\.(q_proj|v_proj)"`):
            Regular expression (peft full-match) of the modules that get adapters. `lm_head` cannot
            be a target: trl computes log-probs from its weight directly.
        train_projector (`bool`, *optional*, defaults to `False`):
            Also train the multimodal projector (as a full trainable copy, peft `modules_to_save`);
            disabling the adapter still gives the reference's projector.
        projector_lr (`float`, *optional*):
            Learning rate of the projector's parameters when they are trained (the paper: 2e-5);
            `None` uses the stage's `learning_rate`. Follows the same schedule.
    """

    enabled: bool = _help(True, "Train a LoRA adapter (False: full fine-tuning of LM + projector).")
    r: int = _help(16, "LoRA rank.")
    alpha: int = _help(32, "LoRA scaling alpha.")
    dropout: float = _help(0.0, "LoRA dropout (needs disable_dropout=False to take effect).")
    target_modules: str = _help(
        r".*language_model.*\.(q_proj|v_proj)", "Regex of the modules that get LoRA adapters."
    )
    train_projector: bool = _help(False, "Also train the multimodal projector.")
    projector_lr: float | None = _help(None, "Learning rate of the projector (None: the stage's).")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA needs r >= 1 and alpha > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if "lm_head" in self.target_modules:
            raise ValueError(
                "lm_head cannot be a LoRA target: trl computes log-probs from its weight directly"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "lora") -> LoraSettings:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)


@dataclass
class StageConfig:
    r"""One DPO stage: loss, optimisation, reference caching and the LoRA adapter.

    Parameters:
        beta (`float`, *optional*, defaults to `0.1`):
            DPO β: how far the policy may move from the reference (higher = closer). For
            `loss_type="ipo"` it is IPO's τ.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`):
            `"sigmoid"` (DPO), `"ipo"` (IPO, per-token averaged log-ratios as in trl) or `"hinge"`
            (SLiC).
        ld_alpha (`float`, *optional*):
            Length-desensitised DPO (LD-DPO, trl's `ld_alpha`): log-probs of answer tokens beyond
            the shorter answer of a pair are weighted by this α in [0, 1]. `None` is plain DPO.
            Counters DPO's drift to shorter answers when rejections are longer.
        sft_weight (`float`, *optional*, defaults to `0.0`):
            Weight of a supervised term, the mean negative log-likelihood of the chosen answer's
            tokens, added to the DPO loss (trl 1.x: `loss_type=[..., "sft"]` with `loss_weights`;
            RPO). It keeps the policy producing the full ground-truth answer while DPO pushes
            the rejection down, another guard against learning to stop early.
        hallucination_weight (`float`, *optional*, defaults to `1.0`):
            `w_h`, weight of DPO(y+ vs y_h-). `0` with `sft_weight > 0` is the SFT-only control:
            the same steps, data and learning rate with supervised fine-tuning on the chosen
            answers alone.
        task_mix (`dict[str, float]`, *optional*):
            Ground-truth task type (`description`, `reasoning`, `vqa`) -> its share of the pairs
            trained on (normalised; a task that is absent is left out). With
            `pairs_for_steps_only` the steps' pairs are drawn per task by these shares;
            otherwise every pair of the listed tasks is used. `None`: all pairs as they come. A
            base model that never learnt a task gains nothing from its pairs, and one-word VQA
            pairs would outnumber the descriptions four to one.
        learning_rate (`float`, *optional*, defaults to `5e-4`):
            Peak learning rate (AdamW) of the trained parameters.
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`):
            transformers scheduler name (`"cosine"`, `"linear"`, `"constant_with_warmup"`, ...).
        warmup_ratio (`float`, *optional*, defaults to `0.03`):
            Share of the steps spent warming the learning rate up.
        num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs over the training pairs (ignored when `max_steps > 0`).
        max_steps (`int`, *optional*, defaults to `-1`):
            Optimiser steps; overrides `num_train_epochs` when positive.
        batch_size (`int`, *optional*, defaults to `8`):
            Preference pairs per micro-batch (each pair is 2 sequences in stage 1, 2-3 in stage 2).
        gradient_accumulation_steps (`int`, *optional*, defaults to `1`):
            Micro-batches per optimiser step.
        max_length (`int`, *optional*, defaults to `256`):
            Longest sequence, image tokens included; answers are cut at the end, and a pair whose
            prompt leaves no room for an answer is reported and skipped.
        weight_decay (`float`, *optional*, defaults to `0.0`):
            AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to `1.0`):
            Gradient-norm clipping (0 disables).
        gradient_checkpointing (`bool`, *optional*, defaults to `False`):
            Recompute activations in the backward pass (trl's default is `True`; it only costs time
            on a tiny model).
        bf16 (`bool`, *optional*, defaults to `False`):
            bfloat16 autocast (trl's default is `True`; keep `False` on CPU).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the adapter initialisation and the data order.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the policy (so the policy at step 0 equals the reference).
        cache_reference (`bool`, *optional*, defaults to `True`):
            Compute the reference log-probs (and, in stage 2, the reference's teacher-forced noisy
            log-probs) once before training and reuse them every epoch. Valid because the reference
            is frozen and the noise is seeded per sample; gives the same loss as recomputing them.
        reference_batch_size (`int`, *optional*, defaults to `32`):
            Pairs per forward when caching the reference log-probs.
        pairs_for_steps_only (`bool`, *optional*, defaults to `True`):
            When `max_steps > 0` covers fewer pairs than there are, train on a seeded sample of
            `max_steps × batch_size × gradient_accumulation_steps` pairs: the steps would see no
            others, and the rest need no checks, encoding or reference log-probs. The log and the
            report say how many were left out. `False` keeps every pair (the trainer then draws
            the same number from all of them).
        pixel_cache (`bool`, *optional*, defaults to `True`):
            Keep each processed image (clean and noisy) in memory after first use. Turn off at real
            scale, where 17K images of 336×336 would take tens of GB; they are then processed per
            batch.
        logging_steps (`int`, *optional*, defaults to `10`):
            Log (and report to `report_to`) every this many steps; per-step metrics are always
            returned.
        save_steps (`int`, *optional*, defaults to `0`):
            Save a trainer checkpoint every this many steps in `output_dir` (0: none).
        save_total_limit (`int`, *optional*, defaults to `2`):
            Checkpoints kept in `output_dir` (the oldest are deleted; `None`: all).
        output_dir (`str`, *optional*):
            Where checkpoints go, and where the last good model is saved if the loss becomes
            NaN/inf. `None`: a temporary directory (removed after a successful run, kept after a
            failure). A directory set here belongs to one run (a fingerprint of the config, the
            pairs and the starting weights): another run refuses it.
        resume (`bool`, *optional*, defaults to `True`):
            Continue from the newest complete checkpoint of this run in `output_dir` (adapter,
            optimiser, scheduler, RNG states, the cached reference log-probs and the step
            metrics); a run interrupted at any moment ends where an uninterrupted one ends.
        report_to (`list[str]`, *optional*, defaults to `[]`):
            transformers integrations to report to (e.g. `["mlflow"]`, which logs into the active
            run).
        num_threads (`int`, *optional*, defaults to `0`):
            `torch.set_num_threads` during training (0 leaves it unchanged).
        lora ([`LoraSettings`]):
            The LoRA adapter.
    """

    beta: float = _help(0.1, "DPO beta (IPO tau for loss_type='ipo').")
    loss_type: str = _help("sigmoid", f"DPO loss variant, one of {LOSS_TYPES}.")
    ld_alpha: float | None = _help(None, "LD-DPO weight of tokens past the shorter answer.")
    sft_weight: float = _help(0.0, "Weight of the chosen-answer NLL added to the loss.")
    learning_rate: float = _help(5e-4, "Peak learning rate.")
    lr_scheduler_type: str = _help("cosine", "transformers learning-rate scheduler name.")
    warmup_ratio: float = _help(0.03, "Share of steps spent warming up.")
    num_train_epochs: float = _help(1.0, "Epochs (ignored when max_steps > 0).")
    max_steps: int = _help(-1, "Optimiser steps (overrides num_train_epochs when > 0).")
    batch_size: int = _help(8, "Preference pairs per micro-batch.")
    gradient_accumulation_steps: int = _help(1, "Micro-batches per optimiser step.")
    max_length: int = _help(256, "Longest sequence, image tokens included.")
    weight_decay: float = _help(0.0, "AdamW weight decay.")
    max_grad_norm: float = _help(1.0, "Gradient-norm clipping (0 disables).")
    gradient_checkpointing: bool = _help(False, "Recompute activations in the backward pass.")
    bf16: bool = _help(False, "bfloat16 autocast.")
    seed: int = _help(0, "Seed of adapter initialisation and data order.")
    disable_dropout: bool = _help(True, "Disable dropout in the policy.")
    cache_reference: bool = _help(True, "Compute reference log-probs once before training.")
    reference_batch_size: int = _help(32, "Pairs per forward when caching reference log-probs.")
    pairs_for_steps_only: bool = _help(True, "Use only as many pairs as max_steps will see.")
    pixel_cache: bool = _help(True, "Keep processed images in memory.")
    logging_steps: int = _help(10, "Log every this many steps.")
    save_steps: int = _help(0, "Save a checkpoint every this many steps (0: none).")
    save_total_limit: int | None = _help(2, "Checkpoints kept (None: all).")
    output_dir: str | None = _help(None, "Checkpoint directory (None: a temporary one).")
    resume: bool = _help(True, "Resume from this run's newest checkpoint in output_dir.")
    report_to: list[str] = _help([], "transformers integrations to report to.")
    num_threads: int = _help(0, "torch.set_num_threads during training (0: unchanged).")
    hallucination_weight: float = _help(1.0, "w_h: weight of DPO(y+ vs y_h-).")
    task_mix: dict[str, float] | None = _help(
        None, "Task type -> share of the trained pairs (others left out); None: all as they come."
    )
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "The LoRA adapter of this stage."}
    )

    def __post_init__(self) -> None:
        if self.hallucination_weight < 0:
            raise ValueError(f"hallucination_weight must be >= 0, got {self.hallucination_weight}")
        if self.task_mix is not None and (
            not self.task_mix
            or any(w < 0 for w in self.task_mix.values())
            or sum(self.task_mix.values()) <= 0
        ):
            raise ValueError(
                f"task_mix must map task types to shares >= 0 with a positive sum, or be null "
                f"(all pairs), got {self.task_mix}"
            )
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if self.dpo_weight_total() + self.sft_weight <= 0:
            raise ValueError(
                "the DPO branch weights + sft_weight must be > 0 (nothing to train), got "
                f"{self.dpo_weight_total()} + {self.sft_weight}"
            )
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] or None, got {self.ld_alpha}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set max_steps > 0 or num_train_epochs > 0")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings.from_dict(self.lora)

    def dpo_weight_total(self) -> float:
        """Sum of this stage's DPO branch weights (0: the SFT-only control)."""
        return self.hallucination_weight

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "stage") -> StageConfig:
        """Build from a parameters mapping; unknown keys (also in ``lora``) raise ``ValueError``."""
        return read_dataclass(cls, values, where, {"lora": LoraSettings.from_dict})


@dataclass
class Stage2Config(StageConfig):
    r"""Stage 2 (POVID): `L = w_h·DPO(y+ vs y_h-) + w_n·DPO(y+ vs y_n-)` on the stage-1 model.

    Inherits every [`StageConfig`] parameter, plus:

    Parameters:
        hallucination_weight (`float`, *optional*, defaults to `0.5`):
            `w_h`, weight of the text-side branch (ground truth vs AI-hallucinated rewrite).
        noise_weight (`float`, *optional*, defaults to `0.5`):
            `w_n`, weight of the image-side branch (ground truth vs the answer under diffusion
            noise). Both weights `0` with `sft_weight > 0` is the SFT-only control.
        noise_positions (`str`, *optional*, defaults to `"all"`):
            Where the teacher-forced `y_n-` differs from `y+`: `"all"` positions whose
            noisy-image argmax differs (the official code), or `"image_dependent"` ones only:
            where the clean-image argmax is the ground truth and the noisy one is not, so that
            the image, not a wording preference, made the difference.
        noise_contrast_end (`bool`, *optional*, defaults to `True`):
            Whether the teacher-forced `y_n-` may differ at `y+`'s last token (its end). Under
            noise a model goes on naming objects where the ground truth ends, so contrasting
            there teaches it to stop early; `False` keeps the branch on what the image shows.
    """

    hallucination_weight: float = _help(0.5, "w_h: weight of DPO(y+ vs y_h-).")
    noise_weight: float = _help(0.5, "w_n: weight of DPO(y+ vs y_n-).")
    noise_positions: str = _help(
        "all", "Teacher-forced y_n-: 'all' positions (official) or 'image_dependent' ones."
    )
    noise_contrast_end: bool = _help(True, "Teacher-forced y_n-: contrast y+'s end token too.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hallucination_weight < 0 or self.noise_weight < 0:
            raise ValueError("hallucination_weight and noise_weight must be >= 0")
        if self.noise_positions not in NOISE_POSITIONS:
            raise ValueError(
                f"noise_positions must be one of {NOISE_POSITIONS}, got {self.noise_positions!r}"
            )

    def dpo_weight_total(self) -> float:
        """Sum of this stage's DPO branch weights (0: the SFT-only control)."""
        return self.hallucination_weight + self.noise_weight

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "stage2") -> Stage2Config:
        """Build from a parameters mapping; unknown keys (also in ``lora``) raise ``ValueError``."""
        return read_dataclass(cls, values, where, {"lora": LoraSettings.from_dict})


@dataclass
class RegistrySettings:
    r"""Where the trained model goes in the MLflow model registry.

    Parameters:
        model_name (`str`, *optional*, defaults to `"povid-tiny"`):
            Registered model name.
        alias (`str`, *optional*, defaults to `"candidate"`):
            Alias set on the new version (promotion to `champion` is the evaluation gate's job).
    """

    model_name: str = _help("povid-tiny", "Registered model name.")
    alias: str = _help("candidate", "Alias set on the new version.")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "registry"
    ) -> RegistrySettings:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)


@dataclass
class ProcessSettings:
    r"""How many processes train each stage (data parallel through accelerate).

    Parameters:
        num_processes (`int`, *optional*, defaults to `1`):
            Training processes. Above 1 the stage runs under `accelerate launch` (DDP over gloo
            on CPUs, NCCL on GPUs, or what `accelerate_config` sets up); the global batch is
            `num_processes × batch_size × gradient_accumulation_steps`. The caller's process
            keeps the inputs and outputs: only it writes catalog outputs and MLflow records.
        main_process_port (`int`, *optional*, defaults to `29500`):
            Port of the processes' rendezvous on this machine.
        accelerate_config (`str`, *optional*):
            An accelerate config file (DeepSpeed ZeRO-2/3 or FSDP; see `conf/base/accelerate/`).
            `None`: plain DDP.
    """

    num_processes: int = _help(1, "Training processes (> 1: accelerate launch).")
    main_process_port: int = _help(29500, "Rendezvous port of the processes.")
    accelerate_config: str | None = _help(None, "accelerate config file (DeepSpeed / FSDP).")

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ValueError(f"processes.num_processes must be >= 1, got {self.num_processes}")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "processes"
    ) -> ProcessSettings:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)


@dataclass
class DPOTrainingConfig:
    r"""The `dpo_training` parameters: both stages and the registry target.

    Parameters:
        stage1 ([`StageConfig`]):
            Stage 1: DPO on (`y+`, `y_h-`) with the clean image.
        stage2 ([`Stage2Config`]):
            Stage 2: POVID's two-branch DPO on the merged stage-1 model.
        registry ([`RegistrySettings`]):
            Registered model name and alias.
        processes ([`ProcessSettings`]):
            Training processes of both stages.
    """

    stage1: StageConfig = field(default_factory=StageConfig, metadata={"help": "Stage 1."})
    stage2: Stage2Config = field(default_factory=Stage2Config, metadata={"help": "Stage 2."})
    registry: RegistrySettings = field(
        default_factory=RegistrySettings, metadata={"help": "MLflow registry target."}
    )
    processes: ProcessSettings = field(
        default_factory=ProcessSettings, metadata={"help": "Training processes."}
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DPOTrainingConfig:
        """Build from the ``dpo_training`` mapping; unknown keys at any level raise ValueError."""
        return read_dataclass(
            cls,
            values,
            "dpo_training",
            {
                "stage1": StageConfig.from_dict,
                "stage2": Stage2Config.from_dict,
                "registry": RegistrySettings.from_dict,
                "processes": ProcessSettings.from_dict,
            },
        )
