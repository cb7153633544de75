"""train.normalize: per-bin, global and fixed input scaling, all as per-bin arrays."""
from pathlib import Path

import numpy as np
import pytest

from raytag.config import Config, ConfigError, InputNormConfig
from raytag.training.plan import input_scaling, warn_if_cepstra_pooled


def test_global_scaling_pools_the_bins_exactly():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(2, 8, 500)) * rng.uniform(1, 5, (2, 8, 1)) + rng.normal(size=(2, 8, 1)) * 10
    bin_mean, bin_std = frames.mean(axis=2), frames.std(axis=2)
    mean, std = input_scaling(InputNormConfig(kind="global"), bin_mean, bin_std)
    assert mean.shape == std.shape == (2, 8)
    for c in range(2):  # one mean/std per channel, equal to the statistics of all its values
        np.testing.assert_allclose(mean[c], frames[c].mean(), rtol=1e-5)
        np.testing.assert_allclose(std[c], frames[c].std(), rtol=1e-5)


def test_per_bin_and_fixed_scaling():
    bin_mean, bin_std = np.full((1, 4), -30.0), np.array([[1.0, 2.0, 0.0, 4.0]])
    mean, std = input_scaling(InputNormConfig(kind="per_bin"), bin_mean, bin_std)
    np.testing.assert_allclose(mean, bin_mean)
    assert std.min() > 0  # a constant bin never divides by zero
    mean, std = input_scaling(InputNormConfig(kind="fixed", offset=-40, scale=20), bin_mean, bin_std)
    np.testing.assert_allclose((np.array([[0.0, -40.0, -60.0, 20.0]]) - mean) / std, [[2.0, 0.0, -1.0, 3.0]])


def test_normalize_settings_are_checked():
    with pytest.raises(ConfigError, match="train.normalize.kind"):
        Config.from_dict({"train": {"normalize": {"kind": "per_clip"}}})
    with pytest.raises(ConfigError, match="train.normalize.scale"):
        Config.from_dict({"train": {"normalize": {"kind": "fixed", "scale": 0}}})


def test_cnn2d_without_neck_classifies_the_pooled_features():
    import torch

    from raytag.models import build_model

    cfg = Config.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "reference.yaml")
    model = build_model(cfg.model, 7, 1, 64)
    assert model.embed_dim == 256  # the last conv block's width
    x = torch.randn(3, 1, 64, 40)
    assert model(x).shape == (3, 7) and model.embed(x).shape == (3, 256)


def test_global_scaling_of_mfcc_is_flagged(caplog):
    """Pooled with c0 (~sqrt(n_mels) x the mean dB), the other cepstral coefficients reach the
    network far smaller: the run says so and names per_bin."""
    with caplog.at_level("WARNING"):
        warn_if_cepstra_pooled(InputNormConfig(kind="global"), "mfcc")
    assert "per_bin" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_if_cepstra_pooled(InputNormConfig(kind="global"), "logmel")
        warn_if_cepstra_pooled(InputNormConfig(kind="per_bin"), "mfcc")
    assert caplog.text == ""
