"""Front ends against librosa itself, on signals with tones, sweeps, noise and near silence."""
from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import torch

from raytag.config import ConfigError, FeatureConfig
from raytag.features.frontends import build_frontend, frontend_shape

torch.set_num_threads(1)


def realish(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A sweep, a harmonic tone, a noise burst and a quiet lead-in (so top_db bites)."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds) + 37  # not a multiple of the hop
    t = np.arange(n) / sr
    sweep = 0.3 * np.sin(2 * np.pi * (200 * t + 900 * t**2))
    tone = sum(0.1 / k * np.sin(2 * np.pi * 330 * k * t) for k in range(1, 6))
    noise = 0.05 * rng.standard_normal(n) * (t > seconds / 2)
    y = (sweep + tone + noise).astype(np.float32)
    y[: n // 10] *= 1e-4
    return y


def librosa_logmel(y, cfg: FeatureConfig, n_mels=None):
    mel = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=n_mels or cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=cfg.top_db)


def assert_db_close(ours, ref):
    """Tight within 80 dB of the clip's peak; bins further down sit at float32 FFT round-off
    (torch's and numpy's FFTs differ there by a few hundredths of a dB), so looser."""
    loud = ref > ref.max() - 80.0
    np.testing.assert_allclose(ours[loud], ref[loud], atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(ours[~loud], ref[~loud], atol=0.1)


def run(cfg: FeatureConfig, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build_frontend(cfg)(torch.from_numpy(y)[None]).numpy()[0]


FAT2019 = dict(sample_rate=44100, n_fft=2560, hop_length=345, n_mels=128, fmin=20.0)


@pytest.mark.parametrize("settings", [{}, FAT2019, {"top_db": None}, {"fmax": 6000.0, "n_mels": 40}])
def test_logmel_matches_librosa(settings):
    cfg = FeatureConfig(kind="logmel", **settings)
    y = realish(cfg.sample_rate, 2.0)
    ours, ref = run(cfg, y), librosa_logmel(y, cfg)
    assert ours.shape == (1, *ref.shape)
    assert_db_close(ours[0], ref)
    if cfg.top_db is not None:  # the clip's own floor is applied, as librosa does
        assert ours.min() == pytest.approx(ours.max() - cfg.top_db, abs=1e-3)


@pytest.mark.parametrize("n_mfcc", [13, 20])
def test_mfcc_matches_librosa(n_mfcc):
    cfg = FeatureConfig(kind="mfcc", n_mfcc=n_mfcc)
    y = realish(cfg.sample_rate, 2.0, seed=1)
    ref = librosa.feature.mfcc(
        y=y, sr=cfg.sample_rate, n_mfcc=n_mfcc, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, fmin=cfg.fmin,
    )
    ours = run(cfg, y)
    assert ours.shape == (1, n_mfcc, ref.shape[1])
    np.testing.assert_allclose(ours[0], ref, atol=2e-3, rtol=1e-5)


def test_colormel_is_a_three_times_finer_mel_split_in_thirds():
    cfg = FeatureConfig(kind="colormel", n_mels=48)
    y = realish(cfg.sample_rate, 2.0, seed=2)
    ref = librosa_logmel(y, cfg, n_mels=3 * cfg.n_mels)  # low frequencies first
    ours = run(cfg, y)
    assert ours.shape == (3, 48, ref.shape[1])
    for channel, rows in enumerate([slice(0, 48), slice(48, 96), slice(96, 144)]):
        np.testing.assert_allclose(ours[channel], ref[rows], atol=2e-3, rtol=1e-5)
    assert not np.allclose(ours[0], ours[2])  # channels carry different bands, not copies


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
@pytest.mark.parametrize("deltas", [1, 2])
def test_deltas_match_librosa(kind, deltas):
    cfg = FeatureConfig(kind=kind, deltas=deltas)
    base_cfg = dataclasses.replace(cfg, deltas=0)
    y = realish(cfg.sample_rate, 1.5, seed=3)
    base = run(base_cfg, y)[0]
    ours = run(cfg, y)
    assert ours.shape == (1 + deltas, *base.shape)
    np.testing.assert_allclose(ours[0], base, atol=1e-5)
    for order in range(1, deltas + 1):
        ref = librosa.feature.delta(base, width=9, order=order, mode="interp", axis=-1)
        np.testing.assert_allclose(ours[order], ref, atol=1e-4, rtol=1e-5)


def test_deltas_on_colormel_append_per_band_channels():
    cfg = FeatureConfig(kind="colormel", n_mels=32, deltas=1)
    y = realish(cfg.sample_rate, 1.0, seed=4)
    ours = run(cfg, y)
    assert ours.shape[0] == 6 and frontend_shape(cfg) == (6, 32)
    for c in range(3):
        np.testing.assert_allclose(ours[3 + c], librosa.feature.delta(ours[c], order=1), atol=1e-4)


def test_deltas_on_clips_shorter_than_the_window_run():
    cfg = FeatureConfig(kind="logmel", deltas=2)
    y = realish(cfg.sample_rate, 0.05)  # 3 frames; librosa.feature.delta refuses this
    out = run(cfg, y)
    assert out.shape == (3, cfg.n_mels, 1 + len(y) // cfg.hop_length)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("kind", ["logmel", "mfcc", "colormel", "pcen", "logmel_pcen", "raw"])
def test_batch_shapes_and_frame_count_match_librosa(kind):
    cfg = FeatureConfig(kind=kind, n_mels=32)
    waves = np.stack([realish(cfg.sample_rate, 1.0, seed=s) for s in range(3)])
    with torch.no_grad():
        out = build_frontend(cfg)(torch.from_numpy(waves)).numpy()
    frames = librosa.feature.melspectrogram(
        y=waves[0], sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=32
    ).shape[1]
    expected_t = waves.shape[1] if kind == "raw" else frames
    assert out.shape == (3, *frontend_shape(cfg), expected_t)
    # each row is the same as that clip alone (top_db is per clip, not per batch)
    np.testing.assert_allclose(out[1], run(cfg, waves[1]), atol=1e-4)
    if kind == "raw":
        np.testing.assert_array_equal(out[:, 0, 0], waves)


def test_filterbanks_are_buffers_that_move_with_the_module():
    front = build_frontend(FeatureConfig(kind="mfcc", deltas=1))
    names = {name for name, _ in front.named_buffers()}
    assert any("mel_basis" in n for n in names) and any("dct" in n for n in names)
    assert any("kernel1" in n for n in names)
    front = front.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in front.buffers())
    assert not list(front.parameters())  # nothing trainable


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="raw"):
        build_frontend(FeatureConfig(kind="raw", deltas=1))
    with pytest.raises(ConfigError, match="n_mfcc"):
        frontend_shape(FeatureConfig(kind="mfcc", n_mfcc=80, n_mels=64))


def test_logmel_matches_librosa_on_real_audio(bench_data):
    wav = sorted((bench_data / "train_curated").glob("*.wav"))[0]
    cfg = FeatureConfig(kind="logmel", sample_rate=16000)
    y, _ = librosa.load(wav, sr=cfg.sample_rate)
    np.testing.assert_allclose(run(cfg, y)[0], librosa_logmel(y, cfg), atol=2e-3, rtol=1e-5)


def pcen_steady_start(S: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """librosa.pcen with its smoother started in the steady state of the clip's first frame, as
    raytag's is (librosa's own default starts it at 1, a loud transient on scaled magnitudes)."""
    import scipy.signal

    t_frames = cfg.pcen_time_constant * cfg.sample_rate / cfg.hop_length
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, :] * S[:, :1]
    return librosa.pcen(S, sr=cfg.sample_rate, hop_length=cfg.hop_length, zi=zi, time_constant=cfg.pcen_time_constant,
                        gain=cfg.pcen_gain, bias=cfg.pcen_bias, power=cfg.pcen_power)


ONSETS = dict(pcen_time_constant=0.06, pcen_gain=0.8, pcen_bias=10.0, pcen_power=0.25)


@pytest.mark.parametrize("settings, seconds", [({}, 7.0), (FAT2019, 4.0), ({}, 0.5), (ONSETS, 3.0)])
def test_pcen_matches_librosa(settings, seconds):
    """7 s at 50 frames/s spans three of the smoother's blocks; 0.5 s is shorter than one;
    ONSETS sets every pcen_* parameter away from librosa's defaults."""
    cfg = FeatureConfig(kind="pcen", **settings)
    y = realish(cfg.sample_rate, seconds, seed=4)
    magnitude = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
        fmin=cfg.fmin, power=1,
    ) * 2.0**31
    ref = pcen_steady_start(magnitude, cfg)
    ours = run(cfg, y)
    assert ours.shape == (1, *ref.shape)
    # PCEN scales each band by its own smoothed level, so bins at FFT round-off (the quiet
    # lead-in) come out O(1) and carry the two FFTs' round-off differences; loud bins are tight
    loud = magnitude > magnitude.max() * 1e-4
    np.testing.assert_allclose(ours[0][loud], ref[loud], atol=5e-3, rtol=1e-4)
    np.testing.assert_allclose(ours[0][~loud], ref[~loud], atol=0.1)


def test_pcen_smoother_is_librosas_filter_across_blocks():
    """The blocked recursion equals scipy's IIR filter on the same input, block edges included."""
    import scipy.signal

    from raytag.features.frontends import PCEN

    cfg = FeatureConfig(kind="pcen", n_mels=8)
    rng = np.random.default_rng(0)
    s = rng.gamma(0.5, 1e6, size=(2, 8, 3 * PCEN.BLOCK + 17)).astype(np.float32)
    t_frames = 0.4 * cfg.sample_rate / cfg.hop_length
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, None, :] * s[..., :1]
    ref, _ = scipy.signal.lfilter([b], [1, b - 1], s.astype(np.float64), zi=zi, axis=-1)
    with torch.no_grad():
        ours = PCEN(cfg)._smooth(torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_pcen_settings_change_only_pcen_cache_keys():
    """pcen_* are PCEN's own: a log-mel store keeps the key it had before they existed."""
    assert FeatureConfig(kind="logmel").cache_key() == FeatureConfig(kind="logmel", pcen_gain=0.5).cache_key()
    assert FeatureConfig(kind="pcen").cache_key() != FeatureConfig(kind="pcen", pcen_gain=0.5).cache_key()
    assert FeatureConfig(kind="logmel_pcen").cache_key() != FeatureConfig(kind="logmel_pcen", pcen_gain=0.5).cache_key()
    assert FeatureConfig(kind="logmel").cache_key() == "20bdc320bce93cf5"  # its key before pcen_* existed


@pytest.mark.parametrize("settings", [{}, dict(ONSETS, deltas=1, n_mels=32)])
def test_logmel_pcen_is_the_two_front_ends_stacked(settings):
    """Channel 0 is kind logmel's output and channel 1 kind pcen's, from one STFT (and with
    deltas, each base channel's delta follows both base channels)."""
    cfg = FeatureConfig(kind="logmel_pcen", **settings)
    y = realish(cfg.sample_rate, 3.0, seed=5)
    ours = run(cfg, y)
    assert ours.shape[:2] == frontend_shape(cfg) == (2 * (1 + cfg.deltas), cfg.n_mels)
    no_deltas = dict(settings, deltas=0)
    np.testing.assert_allclose(ours[0], run(FeatureConfig(kind="logmel", **no_deltas), y)[0], atol=1e-4)
    np.testing.assert_allclose(ours[1], run(FeatureConfig(kind="pcen", **no_deltas), y)[0], rtol=1e-5, atol=1e-5)
    if cfg.deltas:
        np.testing.assert_allclose(ours[3], librosa.feature.delta(ours[1], order=1), atol=1e-3)
