"""Training augmentation: each effect does what it claims, keeps shape/type, and is seeded."""

import numpy as np
import pytest
import torch

from maata.audio import rms_dbfs
from maata.data.augment import (AugmentConfig, add_noise, augment, colored_noise, random_gain,
                                reverb, telephone)

SR = 16000


def speechlike(seconds=1.0, seed=0):
    """A harmonic tone with a syllable-rate envelope: broadband enough to test filters."""
    t = np.arange(int(SR * seconds)) / SR
    x = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate([120, 240, 480, 960, 1900, 3800, 6000]))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.2 * x * env / np.abs(x).max()).astype(np.float32)


def band_energy(x, low, high):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return spec[(f >= low) & (f < high)].sum()


def rng(seed=0):
    return np.random.default_rng(seed)


def test_gain_stays_in_range_and_never_clips():
    x = speechlike()
    for seed in range(20):
        y = random_gain(x, rng(seed), (-12.0, 6.0))
        change = rms_dbfs(y) - rms_dbfs(x)
        assert -12.01 < change < 6.01 and np.abs(y).max() <= 0.99 + 1e-6
    loud = random_gain(np.full(100, 0.9, np.float32), rng(), (20.0, 20.0))
    assert np.abs(loud).max() <= 0.99 + 1e-6


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_unit_rms_and_the_right_tilt(exponent):
    n = colored_noise(SR, rng(), exponent)
    assert abs(np.sqrt(np.mean(n ** 2)) - 1) < 1e-3
    ratio = band_energy(n, 50, 500) / band_energy(n, 4000, 4450)
    assert (ratio > 5) == (exponent > 0)


def test_noise_hits_the_requested_snr():
    x = speechlike()
    y = add_noise(x, rng(3), (10.0, 10.0))
    noise = y - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10) < 0.5


def test_noise_leaves_silence_alone():
    z = np.zeros(1000, np.float32)
    assert np.array_equal(add_noise(z, rng(), (5.0, 5.0)), z)


def test_telephone_band_limits():
    x = speechlike()
    y = telephone(x, SR)
    assert y.shape == x.shape and y.dtype == np.float32
    assert band_energy(y, 4500, 8000) < 1e-3 * band_energy(x, 4500, 8000)  # 8 kHz line: nothing above 4 kHz
    assert band_energy(y, 0, 150) < 0.05 * band_energy(x, 0, 150)            # below the 300 Hz band edge
    assert band_energy(y, 900, 1000) > 0.5 * band_energy(x, 900, 1000)       # the band itself passes


def test_reverb_keeps_length_and_level_and_smears_time():
    x = np.zeros(SR, np.float32)
    x[1000:1160] = 0.5  # a 10 ms click
    y = reverb(x, SR, rng(1), rt60_s=(0.4, 0.4), wet=(0.8, 0.8))
    assert y.shape == x.shape
    assert abs(rms_dbfs(y) - rms_dbfs(x)) < 0.1
    assert np.abs(y[3000:6000]).max() > 1e-3  # a tail long after the click
    assert np.abs(y[:1000]).max() < 1e-6      # causal: nothing before it (FFT rounding aside)


def test_numpy_and_torch_give_the_same_result_in_any_shape():
    x = speechlike(0.5)
    batch = np.stack([x, x * 0.5])[:, None]   # [B=2, C=1, T]
    out_np = augment(batch, SR, rng(7), AugmentConfig(1, (0.2, 0.3), 1, 1, (10, 20), 1))
    out_t = augment(torch.from_numpy(batch), SR, rng(7), AugmentConfig(1, (0.2, 0.3), 1, 1, (10, 20), 1))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    assert out_np.shape == batch.shape == tuple(out_t.shape)
    np.testing.assert_allclose(out_np, out_t.numpy(), atol=1e-6)
    assert not np.allclose(out_np, batch)


def test_seeded_and_varied():
    x = speechlike()
    assert np.array_equal(augment(x, SR, rng(5)), augment(x, SR, rng(5)))
    outputs = {augment(x, SR, rng(s)).tobytes() for s in range(10)}
    assert len(outputs) > 5
    untouched = AugmentConfig(p_reverb=0, p_telephone=0, p_noise=0, p_gain=0)
    assert np.array_equal(augment(x, SR, rng(), untouched), x)


def test_bad_input():
    with pytest.raises(ValueError, match="samples on the last axis"):
        random_gain(np.zeros(0, np.float32), rng())
    with pytest.raises(ValueError):
        random_gain(np.float32(0.5), rng())
