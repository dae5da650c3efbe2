"""Diffusion noise for POVID's image-side dispreferred answers (``y_n-``).

POVID distorts an image with the forward process of a DDPM, ``x_k = sqrt(ᾱ_k)·x + sqrt(1-ᾱ_k)·ε``,
and lets the model answer (or be teacher-forced) under the distorted image, which exposes the
hallucinations that come from its language prior. The schedule is the official one (a sigmoid
``β`` schedule from 1e-5 to 5e-3 over 1000 steps, ``k = 500``), defined here once and used by the
noise-trigger pipeline and by stage-2 training alike.

Differences from the official code, on purpose:

- the noise is **seeded per sample** (:func:`noise_seed`), so a sample's noisy image is the same in
  every run and the reference model's log-probs under it can be computed once and cached;
- pixels are **clamped** to [0, 1] after noising, where the official code let uint8 values wrap.

Noise is added to raw pixels in [0, 1] **before** the image processor, as in the official code.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import torch
from PIL import Image

from povid_kedro.config_reader import read_dataclass
from povid_kedro.ingest.images import ImageFolder

POVID_SCHEDULER_KWARGS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "sigmoid",
    "beta_start": 1e-5,
    "beta_end": 5e-3,
}
"""``diffusers.DDPMScheduler`` arguments of the official POVID noise schedule."""

POVID_NOISE_STEP = 500
"""The paper's noise step ``k`` (of 1000), chosen for natural photos."""

TEACHER_FORCED: Final = "teacher_forced"
GENERATED: Final = "generated"
NoiseMode = Literal["teacher_forced", "generated"]
NOISE_MODES: tuple[NoiseMode, ...] = (TEACHER_FORCED, GENERATED)
"""How ``y_n-`` is built: teacher-forced argmax tokens (official code) or a free answer."""


@functools.lru_cache(maxsize=1)
def _scheduler() -> Any:
    # Imported lazily: diffusers is heavy, and only this module needs it.
    from diffusers import DDPMScheduler

    return DDPMScheduler(**POVID_SCHEDULER_KWARGS)


def _check_step(step: int) -> int:
    total = POVID_SCHEDULER_KWARGS["num_train_timesteps"]
    if isinstance(step, bool) or not 0 <= int(step) < total:
        raise ValueError(f"noise step must be an integer in [0, {total - 1}], got {step!r}")
    return int(step)


def noise_scales(step: int) -> tuple[float, float]:
    """The signal and noise scales of the POVID schedule at ``step``.

    Args:
        step: Diffusion step ``k`` in ``[0, 999]``.

    Returns:
        ``(sqrt(ᾱ_k), sqrt(1 - ᾱ_k))`` in float32 precision, e.g. ``(0.8630173, 0.5051745)`` at 500.
    """
    step = _check_step(step)
    alphas_cumprod = _scheduler().alphas_cumprod.to(torch.float32)  # (T,)
    alpha_bar = alphas_cumprod[step]
    return float(alpha_bar**0.5), float((1 - alpha_bar) ** 0.5)


def noise_seed(run_seed: int, sample_id: str | int) -> int:
    """A stable per-sample seed: the same ``(run_seed, sample_id)`` gives the same noise anywhere.

    Python's ``hash`` of a string changes between processes, so sha256 is used instead.

    Args:
        run_seed: The run's noise seed (a parameter).
        sample_id: The preference sample's id.

    Returns:
        A non-negative 63-bit integer for ``torch.Generator.manual_seed``.
    """
    digest = hashlib.sha256(f"{int(run_seed)}\x1f{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def add_diffusion_noise(image: Image.Image, step: int, seed: int) -> Image.Image:
    """Noise an image with the forward diffusion process at ``step``, reproducibly.

    Args:
        image: The clean image (converted to RGB when it is not).
        step: Diffusion step ``k`` in ``[0, 999]`` (the paper uses 500).
        seed: Seed of the Gaussian noise ``ε`` (see :func:`noise_seed`).

    Returns:
        The noisy RGB image of the same size, pixels clamped to [0, 1] and rounded to uint8.
    """
    step = _check_step(step)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    generator = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)  # (3, H, W)
    noisy = _scheduler().add_noise(x[None], eps[None], torch.tensor([step]))[0]  # (3, H, W)
    # The official code let uint8 wrap around (bright pixels turn dark); clamping keeps the meaning.
    pixels = (noisy.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def noise_fields(group: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`NoiseConfig` fields of a ``noise_trigger`` parameter group: its ``figure``
    key drives only the noise figure node."""
    return {k: v for k, v in group.items() if k != "figure"}


def noisy_image(image: Image.Image, sample_id: str | int, cfg: NoiseConfig) -> Image.Image:
    """A sample's noisy image, the same in the noise-trigger pipeline and in stage-2 training.

    Args:
        image: The sample's clean image.
        sample_id: The preference sample's id (seeds the noise with ``cfg.seed``).
        cfg: Noise step and run seed.

    Returns:
        ``add_diffusion_noise(image, cfg.step, noise_seed(cfg.seed, sample_id))``.
    """
    return add_diffusion_noise(image, cfg.step, noise_seed(cfg.seed, sample_id))


def noisy_image_file(
    images: ImageFolder, relpath: str, sample_id: str | int, cfg: NoiseConfig
) -> Image.Image:
    """:func:`noisy_image` of the image ``relpath`` under ``images`` (opened here, so a process
    that writes many noisy images reads their clean ones itself)."""
    return noisy_image(images.open(relpath).convert("RGB"), sample_id, cfg)


@dataclass
class NoiseConfig:
    """How the image-side dispreferred answers ``y_n-`` are made (``noise_trigger`` parameters).

    One place for the noise facts: the noise-trigger pipeline uses them to write noisy images (and,
    in ``generated`` mode, free answers under them) and stage-2 training uses them to rebuild the
    same noisy images for teacher forcing.

    Attributes:
        step: Diffusion step ``k`` of 1000. The paper's 500 was tuned on natural photos; sparse
            synthetic images become unreadable earlier, so tune it to the world.
        seed: Run seed; each sample's noise is seeded by ``noise_seed(seed, sample_id)``.
        mode: ``"teacher_forced"`` (official code: argmax tokens under the noisy image, scored under
            the clean one) or ``"generated"`` (a free answer decoded under the noisy image, in the
            ``noisy_rejected`` column).
        generate: Decoding settings for ``generated`` mode (keys of
            :class:`povid_kedro.modeling.config.GenerateConfig`).
    """

    step: int = POVID_NOISE_STEP
    seed: int = 0
    mode: NoiseMode = TEACHER_FORCED
    generate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_step(self.step)
        if self.mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {self.mode!r}")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, where: str = "noise_trigger"
    ) -> NoiseConfig:
        """Build from a parameters mapping; unknown keys raise ``ValueError``."""
        return read_dataclass(cls, values, where)
