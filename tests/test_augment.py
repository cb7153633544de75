"""Augmentations: seeded, bounded, and doing what they claim."""

import numpy as np
import pytest
import torch

from raytag.config import FeatureConfig, SpecAugmentConfig, WaveAugmentConfig
from raytag.training.augment import (
    gain_pattern,
    mixup,
    random_crop_start,
    random_gain_shift,
    sample_mixup_lambda,
    spec_augment,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batch(b=8, c=1, f=16, t=50):
    x = torch.randn(b, c, f, t, generator=gen(123))
    y = torch.zeros(b, 5)
    y[torch.arange(b), torch.arange(b) % 5] = 1
    w = torch.tensor([1.0, 0.5] * (b // 2))
    return x, y, w


def test_mixup_lambda_bounds_and_distribution():
    g = gen(0)
    lams = np.array([sample_mixup_lambda(0.4, g) for _ in range(2000)])
    assert lams.min() >= 0 and lams.max() <= 1
    # Beta(0.4, 0.4): mean 1/2, variance 1/(4*(2*0.4+1)) = 0.139
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * 1.8), abs=0.015)
    assert sample_mixup_lambda(0.0, g) == 1.0


def test_mixup_mixes_inputs_targets_and_weights_with_one_lambda():
    x, y, w = _batch()
    xm, ym, wm, lam = mixup(x, y, w, alpha=0.4, prob=1.0, generator=gen(5))
    assert 0 < lam < 1
    # each mixed row is lam * row + (1-lam) * some other row of the batch
    for i in range(len(x)):
        j = [k for k in range(len(x)) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[k], atol=1e-6)]
        assert j, f"row {i} is not a mixture with lambda {lam}"
        torch.testing.assert_close(ym[i], lam * y[i] + (1 - lam) * y[j[0]])
        assert wm[i].item() == pytest.approx(lam * w[i].item() + (1 - lam) * w[j[0]].item())
    # soft targets keep their mass: each row still sums to 1
    torch.testing.assert_close(ym.sum(1), torch.ones(len(x)))


def test_mixup_prob_zero_leaves_batch_alone():
    x, y, w = _batch()
    xm, ym, wm, lam = mixup(x, y, w, alpha=0.4, prob=0.0, generator=gen(1))
    assert lam == 1.0 and xm is x and ym is y and wm is w


def test_mixup_prob_is_respected_and_seeded():
    x, y, w = _batch()
    g = gen(2)
    mixed = sum(mixup(x, y, None, 0.4, 0.3, g)[3] < 1 for _ in range(400))
    assert 0.22 < mixed / 400 < 0.38
    a = mixup(x, y, w, 0.4, 1.0, gen(9))
    b = mixup(x, y, w, 0.4, 1.0, gen(9))
    torch.testing.assert_close(a[0], b[0])
    assert a[3] == b[3]


def test_spec_augment_masks_inside_bounds():
    x, _, _ = _batch(b=16, c=2)
    cfg = SpecAugmentConfig(enabled=True, time_masks=2, time_width=7, freq_masks=1, freq_width=4)
    out = spec_augment(x, cfg, gen(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    changed = out != x  # [B, C, F, T]
    fill = x.mean(dim=(1, 2, 3))
    for i in range(len(x)):
        torch.testing.assert_close(out[i][changed[i]], fill[i].expand(int(changed[i].sum())))
        # a changed value lies in a masked time column or a masked frequency row
        full_time = changed[i].all(dim=(0, 1))  # frames masked across all bins
        full_freq = changed[i].all(dim=(0, 2))  # bins masked across all frames
        assert full_time.sum() <= 2 * 7 and full_freq.sum() <= 4
        covered = full_time[None, None, :] | full_freq[None, :, None]
        assert not (changed[i] & ~covered).any()


def test_spec_augment_disabled_and_seeded():
    x, _, _ = _batch()
    assert spec_augment(x, SpecAugmentConfig(enabled=False), gen(0)) is x
    cfg = SpecAugmentConfig(enabled=True)  # off by default (the default recipe)
    torch.testing.assert_close(spec_augment(x, cfg, gen(4)), spec_augment(x, cfg, gen(4)))
    assert not torch.equal(spec_augment(x, cfg, gen(4)), spec_augment(x, cfg, gen(5)))


def test_gain_is_added_in_db_and_bounded():
    x, _, _ = _batch()
    out = random_gain_shift(x, WaveAugmentConfig(gain_db=6.0, time_shift=0.0), gen(0))
    delta = (out - x).reshape(len(x), -1)
    # one constant offset per clip, inside [-6, 6] dB
    torch.testing.assert_close(delta.max(1).values, delta.min(1).values, atol=1e-5, rtol=0)
    assert delta.abs().max() <= 6.0 and delta[:, 0].std() > 0


def test_gain_multiplies_raw_waves():
    wave = torch.randn(4, 1, 1, 100, generator=gen(1))
    out = random_gain_shift(wave, WaveAugmentConfig(gain_db=6.0, time_shift=0.0), gen(0), is_log=False)
    ratio = (out / wave).reshape(4, -1)
    torch.testing.assert_close(ratio.max(1).values, ratio.min(1).values, atol=1e-4, rtol=1e-4)
    assert ratio.min() >= 10 ** (-6 / 20) - 1e-6 and ratio.max() <= 10 ** (6 / 20) + 1e-6


def test_time_shift_is_a_bounded_circular_roll():
    x, _, _ = _batch(t=40)
    out = random_gain_shift(x, WaveAugmentConfig(gain_db=0.0, time_shift=0.1), gen(3))
    shifts = []
    for i in range(len(x)):
        found = [s for s in range(-4, 5) if torch.equal(out[i], torch.roll(x[i], s, dims=-1))]
        assert found, f"clip {i} is not a roll of at most 4 frames"
        shifts.append(found[0])
    assert len(set(shifts)) > 1


def test_gain_pattern_spares_deltas_and_moves_only_c0_of_mfcc():
    p = gain_pattern(FeatureConfig(kind="logmel", n_mels=32, deltas=2))
    assert p.shape == (3, 32) and torch.all(p[0] == 1) and torch.all(p[1:] == 0)
    p = gain_pattern(FeatureConfig(kind="colormel", n_mels=16))
    assert p.shape == (3, 16) and torch.all(p == 1)
    p = gain_pattern(FeatureConfig(kind="mfcc", n_mels=64, n_mfcc=20))
    assert p[0, 0] == pytest.approx(8.0) and p.sum() == pytest.approx(8.0)
    p = gain_pattern(FeatureConfig(kind="logmel", n_mels=4), std=np.full((1, 4), 2.0))
    assert torch.all(p == 0.5)
    p = gain_pattern(FeatureConfig(kind="logmel_pcen", n_mels=8, deltas=1))  # the dB channel only
    assert p.shape == (4, 8) and torch.all(p[0] == 1) and torch.all(p[1:] == 0)


def test_mfcc_pattern_matches_a_real_gain():
    """+g dB on the wave's power moves MFCC exactly by g * pattern (before top_db clips)."""
    from raytag.features.frontends import build_frontend

    cfg = FeatureConfig(kind="mfcc", n_mels=32, n_mfcc=13, top_db=None, sample_rate=16000)
    fe = build_frontend(cfg)
    wave = torch.randn(1, 8000, generator=gen(0))
    g = 6.0
    diff = fe(wave * 10 ** (g / 20)) - fe(wave)
    expected = g * gain_pattern(cfg)[..., None].expand_as(diff[0])
    torch.testing.assert_close(diff[0], expected, atol=1e-3, rtol=0)


def test_random_crop_start():
    g = gen(0)
    starts = [random_crop_start(100, 30, g) for _ in range(500)]
    assert min(starts) == 0 and max(starts) == 70
    assert random_crop_start(20, 30, g) == 0 and random_crop_start(30, 30, g) == 0
    assert random_crop_start(100, 30, gen(7)) == random_crop_start(100, 30, gen(7))
    with pytest.raises(ValueError):
        random_crop_start(100, 0, g)


def test_gain_pattern_applies_per_bin_on_a_batch_of_any_length():
    """A [C, F] pattern broadcasts over batch and time (T != F), delta channels untouched."""
    cfg = FeatureConfig(kind="logmel", n_mels=8, deltas=1)
    pattern = gain_pattern(cfg)
    x = torch.zeros(3, 2, 8, 37)
    out = random_gain_shift(x, WaveAugmentConfig(gain_db=6.0, time_shift=0.0), torch.Generator().manual_seed(0),
                            is_log=True, pattern=pattern)
    assert out.shape == x.shape
    assert torch.all(out[:, 1] == 0)  # delta channel: a gain has no derivative
    per_clip = out[:, 0, 0, 0]
    assert torch.all(out[:, 0] == per_clip.view(3, 1, 1))  # one gain per clip, all bins and frames
    assert per_clip.abs().max() > 0
