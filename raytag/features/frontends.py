"""Torch front ends: waveform [B, N] -> features [B, C, F, T].

Built from `torch.stft` and librosa's own filter/DCT/Savitzky-Golay coefficients (torchaudio
does not install against the CPU torch used here). Every fixed matrix is a module buffer, so
`frontend.to("cuda")` moves the whole front end to the GPU. Each kind follows librosa's
conventions and is tested against librosa:

- logmel:   `librosa.feature.melspectrogram` (hann window, center=True with librosa's default
            padding, which is zero ("constant") padding since librosa 0.10; slaney mel, power 2)
            then `librosa.power_to_db(ref=1.0, amin=1e-10, top_db=cfg.top_db)`. top_db clips
            each clip (each batch row) at its own maximum minus top_db, as librosa does for
            one clip. C=1, F=n_mels.
- mfcc:     `librosa.feature.mfcc`: DCT type 2, norm "ortho", of the log-mel above, first
            n_mfcc coefficients. C=1, F=n_mfcc.
- colormel: seed 003's "coloured" mel: one mel spectrogram with 3*n_mels bands (same
            fmin/fmax), converted to dB as one image (one top_db for the clip), whose low,
            mid and high thirds become channels 0, 1, 2 with n_mels bins each. So the three
            channels carry different frequency ranges at three times the mel resolution,
            instead of three copies of one grey image. C=3, F=n_mels.
- pcen:     `librosa.pcen` of the mel *magnitude* spectrogram (power 1) scaled by 2**31, as
            librosa's documentation does for audio in [-1, 1], with cfg.pcen_time_constant,
            pcen_gain, pcen_bias and pcen_power (librosa's defaults: 0.4 s, 0.98, 2, 0.5;
            eps 1e-6). Per-channel energy
            normalisation is an automatic gain control per mel band: it divides each band by a
            smoothed copy of itself, which flattens stationary background and keeps onsets, a
            different view of the sound than dB (Wang et al. 2017; Lostanlen et al. 2019).
            C=1, F=n_mels. The smoother starts in the first frame's steady state (librosa's
            starts at 1: a loud transient at every clip's start). Computed over the whole clip
            (the smoother runs through time), so crops are cut from it, never computed alone.
- logmel_pcen: the two views above as two channels of one input, from one STFT: channel 0
            the log-mel (dB) of `logmel`, channel 1 the PCEN of `pcen`. One network then sees
            both the level of each band and its onsets against its own background. C=2, F=n_mels.
- raw:      the waveform itself, C=1, F=1, T=N.
- deltas:   1 appends the delta channel, 2 also the delta-delta channel, for each base
            channel (librosa.feature.delta: width 9, mode "interp"; order 2 is the second
            derivative of the features, not the delta of the delta). C = base C * (1+deltas).
            Not defined for raw.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from raytag.config import ConfigError, FeatureConfig

AMIN = 1e-10  # power floor of power_to_db (librosa's default)
DELTA_WIDTH = 9  # librosa.feature.delta's default window


def frontend_shape(cfg: FeatureConfig) -> tuple[int, int]:
    """(channels, bins) of the features `build_frontend(cfg)` produces."""
    _check(cfg)
    if cfg.kind == "raw":
        return 1, 1
    channels = {"colormel": 3, "logmel_pcen": 2}.get(cfg.kind, 1)
    bins = cfg.n_mfcc if cfg.kind == "mfcc" else cfg.n_mels  # logmel, colormel, pcen, logmel_pcen: n_mels
    return channels * (1 + cfg.deltas), bins


def build_frontend(cfg: FeatureConfig) -> nn.Module:
    """The front end for `cfg`: forward(wave[B, N] float32) -> [B, C, F, T]."""
    _check(cfg)
    if cfg.kind == "raw":
        return RawWave()
    if cfg.kind == "logmel":
        base: nn.Module = LogMel(cfg, n_mels=cfg.n_mels)
    elif cfg.kind == "mfcc":
        base = MFCC(cfg)
    elif cfg.kind == "colormel":
        base = ColorMel(cfg)
    elif cfg.kind == "pcen":
        base = PCEN(cfg)
    elif cfg.kind == "logmel_pcen":
        base = LogMelPCEN(cfg)
    else:  # config validation already restricts kind; this guards new kinds added there only
        raise ConfigError(f"features.kind: no front end for {cfg.kind!r}")
    if cfg.deltas:
        return nn.Sequential(base, Deltas(cfg.deltas))
    return base


def _check(cfg: FeatureConfig) -> None:
    if cfg.kind == "raw" and cfg.deltas:
        raise ConfigError("features.deltas: delta channels are not defined for kind 'raw'; set deltas: 0")
    if cfg.kind == "mfcc" and cfg.n_mfcc > cfg.n_mels:
        raise ConfigError(f"features.n_mfcc: {cfg.n_mfcc} exceeds features.n_mels ({cfg.n_mels})")
    if cfg.kind == "mfcc" and cfg.n_mfcc < 1:
        raise ConfigError("features.n_mfcc: must be at least 1")


def power_to_db(power: torch.Tensor, top_db: float | None) -> torch.Tensor:
    """librosa.power_to_db(ref=1.0, amin=1e-10, top_db) with the top_db floor per batch row."""
    db = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


class MelPower(nn.Module):
    """Power mel spectrogram [B, n_mels, T], as librosa.feature.melspectrogram."""

    def __init__(self, cfg: FeatureConfig, n_mels: int, magnitude: bool = False):
        super().__init__()
        self.magnitude = magnitude  # True: |STFT| (librosa's power=1), as PCEN takes
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        # librosa's "hann" is the periodic (fftbins=True) window
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32))
        # librosa and scipy are imported where used: a Train worker imports this module but
        # builds no front end, and they were 0.9 s of its start-up
        import librosa

        mel = librosa.filters.mel(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
            htk=False, norm="slaney",
        )
        self.register_buffer("mel_basis", torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power = self.stft_power(wave)
        return torch.matmul(self.mel_basis, power.sqrt() if self.magnitude else power)

    def power_and_magnitude(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The power and the magnitude mel spectrograms of one STFT (for logmel_pcen)."""
        power = self.stft_power(wave)
        return torch.matmul(self.mel_basis, power), torch.matmul(self.mel_basis, power.sqrt())

    def stft_power(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave, n_fft=self.n_fft, hop_length=self.hop_length, window=self.window,
            center=True, pad_mode="constant", return_complex=True,
        )
        return spec.real.square() + spec.imag.square()  # [B, n_fft//2+1, T]


class LogMel(nn.Module):
    """Log-mel in dB, [B, 1, n_mels, T]."""

    def __init__(self, cfg: FeatureConfig, n_mels: int):
        super().__init__()
        self.mel = MelPower(cfg, n_mels)
        self.top_db = cfg.top_db

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return power_to_db(self.mel(wave), self.top_db).unsqueeze(1)


class MFCC(nn.Module):
    """MFCC [B, 1, n_mfcc, T]: orthonormal DCT-II of the log-mel (librosa.feature.mfcc)."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.logmel = LogMel(cfg, n_mels=cfg.n_mels)
        # rows of the DCT matrix taken from scipy itself so the convention is exactly librosa's
        import scipy.fft

        dct = scipy.fft.dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]
        self.register_buffer("dct", torch.from_numpy(dct.astype(np.float32)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.dct, self.logmel(wave))


class ColorMel(nn.Module):
    """Seed 003's 3-band colour mel, [B, 3, n_mels, T] (low, mid, high thirds of 3*n_mels)."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.n_mels = cfg.n_mels
        self.logmel = LogMel(cfg, n_mels=3 * cfg.n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        db = self.logmel(wave)  # [B, 1, 3*n_mels, T], low frequencies first
        return db.reshape(db.shape[0], 3, self.n_mels, db.shape[-1])


class PCEN(nn.Module):
    """librosa.pcen of the scaled mel magnitude, [B, 1, n_mels, T].

    The smoother M[t] = (1 - b) M[t-1] + b S[t] starts in the steady state of the clip's
    first frame (M[-1] = S[0]: librosa's `pcen(..., zi=lfilter_zi * S[:, :1])`). librosa's
    own default starts it at 1, which on magnitudes scaled by 2**31 leaves every clip's first
    half second or so barely normalised, a loud onset that is not in the sound; the tests
    compare against librosa with that `zi`. A Python loop over frames would be
    slow and torch has no IIR filter (torchaudio's lfilter is not installable here), so the
    recursion runs in blocks of `BLOCK` frames: inside a block it is one matmul with the
    filter's impulse-response matrix, and only the state at each block's end is carried.
    """

    SCALE = 2.0 ** 31  # librosa's documented scaling for float audio in [-1, 1]
    EPS = 1e-6  # librosa.pcen's default
    BLOCK = 128

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.mel = MelPower(cfg, cfg.n_mels, magnitude=True)
        self.gain, self.bias, self.power = cfg.pcen_gain, cfg.pcen_bias, cfg.pcen_power
        t_frames = cfg.pcen_time_constant * cfg.sample_rate / cfg.hop_length
        b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)  # as librosa.pcen works it out
        k = torch.arange(self.BLOCK, dtype=torch.float64)
        lag = k[:, None] - k[None, :]
        response = torch.where(lag >= 0, b * (1 - b) ** lag.clamp_min(0), torch.zeros(()))  # [out k, in j]
        self.register_buffer("response_t", response.T.contiguous().float())  # x[..., j] @ -> y[..., k]
        self.register_buffer("carry", ((1 - b) ** (k + 1)).float())  # weight of the previous block's state

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.from_magnitude(self.mel(wave))

    def from_magnitude(self, mel_magnitude: torch.Tensor) -> torch.Tensor:
        """[B, F, T] mel magnitudes -> [B, 1, F, T] PCEN."""
        s = mel_magnitude * self.SCALE
        smooth = self._smooth(s)
        agc = torch.exp(-self.gain * (math.log(self.EPS) + torch.log1p(smooth / self.EPS)))  # (eps + M)^-gain
        out = self.bias**self.power * torch.expm1(self.power * torch.log1p(s * agc / self.bias))
        return out.unsqueeze(1)

    def _smooth(self, s: torch.Tensor) -> torch.Tensor:
        n_frames = s.shape[-1]
        blocks = -(-n_frames // self.BLOCK)
        padded = nn.functional.pad(s, (0, blocks * self.BLOCK - n_frames))  # causal: the tail changes nothing before it
        within = torch.matmul(padded.unflatten(-1, (blocks, self.BLOCK)), self.response_t)  # zero-state responses
        state = s[..., 0]  # the steady state librosa starts from
        out = []
        for i in range(blocks):
            block = within[..., i, :] + self.carry * state[..., None]
            out.append(block)
            state = block[..., -1]
        return torch.cat(out, dim=-1)[..., :n_frames]


class LogMelPCEN(nn.Module):
    """[B, 2, n_mels, T]: channel 0 `LogMel`, channel 1 `PCEN`, both from one STFT."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.pcen = PCEN(cfg)  # holds the magnitude MelPower; its filterbank serves both channels
        self.top_db = cfg.top_db

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power, magnitude = self.pcen.mel.power_and_magnitude(wave)
        return torch.cat([power_to_db(power, self.top_db).unsqueeze(1), self.pcen.from_magnitude(magnitude)], dim=1)


class RawWave(nn.Module):
    """The waveform as [B, 1, 1, N]."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return wave[:, None, None, :]


class Deltas(nn.Module):
    """Append delta (and delta-delta) channels: [B, C, F, T] -> [B, C*(1+order), F, T].

    Matches librosa.feature.delta(width=9, mode="interp"): a Savitzky-Golay derivative
    filter inside, and at each edge the derivative of the polynomial fitted to the first
    (last) 9 frames. Both are linear in the frames, so the weights are read off scipy's
    savgol_filter applied to the identity (written here because no torch library offers
    librosa's interp edges). For clips shorter than 9 frames, where librosa refuses, the
    edge frames are repeated to 9 frames first (documented fallback).
    """

    def __init__(self, order: int, width: int = DELTA_WIDTH):
        super().__init__()
        if order not in (1, 2):
            raise ConfigError(f"features.deltas: {order} is not 0, 1 or 2")
        self.order = order
        self.width = width
        import scipy.signal

        half = width // 2
        for k in range(1, order + 1):
            m = scipy.signal.savgol_filter(np.eye(width), width, polyorder=k, deriv=k, axis=0, mode="interp")
            self.register_buffer(f"kernel{k}", torch.from_numpy(m[half].astype(np.float32)).view(1, 1, width))
            self.register_buffer(f"left{k}", torch.from_numpy(m[:half].astype(np.float32)))
            self.register_buffer(f"right{k}", torch.from_numpy(m[width - half:].astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        flat = x.reshape(b * c * f, t)
        if t < self.width:  # librosa has no answer here; repeat edge frames to the window
            extra = self.width - t
            flat = torch.cat([flat, flat[:, -1:].expand(-1, extra)], dim=1)
        outs = [x]
        for k in range(1, self.order + 1):
            d = self._derivative(flat, k)[:, :t]
            outs.append(d.reshape(b, c, f, t))
        return torch.cat(outs, dim=1)

    def _derivative(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        half = self.width // 2
        kernel, left, right = getattr(self, f"kernel{k}"), getattr(self, f"left{k}"), getattr(self, f"right{k}")
        inner = torch.nn.functional.conv1d(flat.unsqueeze(1), kernel).squeeze(1)  # [R, T-2*half]
        head = flat[:, : self.width] @ left.T  # [R, half]
        tail = flat[:, -self.width:] @ right.T
        return torch.cat([head, inner, tail], dim=1)
