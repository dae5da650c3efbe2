"""Diffusion noise: the official schedule, reproducible per sample, clamped."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from povid_kedro.training.noise import (
    POVID_SCHEDULER_KWARGS,
    NoiseConfig,
    add_diffusion_noise,
    noise_scales,
    noise_seed,
    noisy_image,
)


def _formula_scales(step: int) -> tuple[float, float]:
    # docs/design.md §1a: β = sigmoid(linspace(-6, 6, T))·(5e-3 − 1e-5) + 1e-5,
    # ᾱ = cumprod(1 − β), float32
    total = POVID_SCHEDULER_KWARGS["num_train_timesteps"]
    betas = torch.sigmoid(torch.linspace(-6, 6, total)) * (5e-3 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1 - betas, dim=0)[step]
    return float(alpha_bar.sqrt()), float((1 - alpha_bar).sqrt())


def test_paper_scales_at_step_500():
    signal, noise = noise_scales(500)
    assert signal == pytest.approx(0.8630173, abs=2e-7)
    assert noise == pytest.approx(0.5051745, abs=2e-7)


@pytest.mark.parametrize("step", [0, 1, 350, 500, 999])
def test_scales_equal_the_formula(step):
    assert noise_scales(step) == pytest.approx(_formula_scales(step), rel=1e-5)


def test_last_step_is_not_pure_noise():
    signal, _ = noise_scales(999)
    assert signal**2 == pytest.approx(0.081, abs=1e-3)


def test_noisy_image_is_the_forward_process_on_raw_pixels():
    rng = np.random.default_rng(0)
    # Mid-grey values, so that no pixel is clamped at this noise level.
    pixels = rng.integers(110, 146, size=(8, 6, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    seed = noise_seed(3, "sample-1")
    noisy = np.asarray(add_diffusion_noise(image, 50, seed)).astype(np.float64)
    x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    signal, scale = noise_scales(50)
    expected = (signal * x + scale * eps).permute(1, 2, 0).numpy() * 255
    assert expected.min() > 0 and expected.max() < 255  # nothing clamped: a pure formula check
    assert np.abs(noisy - expected).max() <= 0.5 + 1e-3  # uint8 rounding only


def test_noise_is_reproducible_per_seed_and_sample():
    image = Image.new("RGB", (16, 16), (100, 150, 200))
    a = np.asarray(add_diffusion_noise(image, 500, noise_seed(0, "x")))
    again = np.asarray(add_diffusion_noise(image, 500, noise_seed(0, "x")))
    other_sample = np.asarray(add_diffusion_noise(image, 500, noise_seed(0, "y")))
    other_run = np.asarray(add_diffusion_noise(image, 500, noise_seed(1, "x")))
    assert np.array_equal(a, again)
    assert not np.array_equal(a, other_sample)
    assert not np.array_equal(a, other_run)
    via_config = noisy_image(image, "x", NoiseConfig(step=500, seed=0))
    assert np.array_equal(np.asarray(via_config), a)


def test_noise_seed_is_a_stable_hash_not_pythons():
    digest = hashlib.sha256(b"7\x1fabc").digest()
    assert noise_seed(7, "abc") == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert noise_seed(7, 12) == noise_seed(7, "12")


def test_noise_clamps_instead_of_wrapping():
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    noisy = np.asarray(add_diffusion_noise(white, 500, 1)).astype(np.float64)
    eps = torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(1))
    signal, scale = noise_scales(500)
    raw = (signal + scale * eps).permute(1, 2, 0).numpy()  # x = 1 everywhere
    assert (raw > 1).mean() > 0.3  # plenty of pixels overflow
    # Overflowing pixels saturate at 255 (uint8 wrap-around would make them nearly black).
    assert np.all(noisy[raw > 1] == 255)
    assert np.abs(noisy - np.clip(raw, 0, 1) * 255).max() <= 0.5 + 1e-3


def test_grey_image_mode_and_bad_steps():
    grey = Image.new("L", (8, 8), 128)
    assert add_diffusion_noise(grey, 10, 0).mode == "RGB"
    for step in (-1, 1000):
        with pytest.raises(ValueError, match="noise step"):
            add_diffusion_noise(grey, step, 0)


def test_noise_config_rejects_unknown_keys_and_modes():
    assert NoiseConfig.from_dict({"step": 350}).mode == "teacher_forced"
    with pytest.raises(ValueError, match="noise_trigger: unknown keys"):
        NoiseConfig.from_dict({"stpe": 350})
    with pytest.raises(ValueError, match="noise mode"):
        NoiseConfig(mode="sampled")
