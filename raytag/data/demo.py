"""A deterministic synthetic dataset in the exact FSDKaggle2019 layout, for the demo and tests.

    make_demo_dataset(out, seed=0, scale=1.0)

writes train_curated.csv + train_curated/, train_noisy.csv + train_noisy/, test/ and
sample_submission.csv (16 kHz 16-bit mono WAV, random hex names as on Kaggle), plus, as
in the real benchmark, test_labels.csv and train_noisy_truth.csv (for scoring only).

Fourteen classes of synthetic sound events. Pairs are meant to be confusable so that a
small CNN on log-mel learns something real: tremolo / vibrato / whistle are all
mid-pitch tones that differ in their time structure, ticks_slow / ticks_fast / knock are
all pulse trains, rumble / knock / buzz all live low. Every clip has a random length
(0.5 to 6 s, log-uniform), the event covers a random part of it at a random gain and
pitch, over pink background noise; about 15% are mixtures of two classes (two labels).
Noisy clips get more background noise and about half of them one wrong label (a true
label replaced by another class; the truth is in train_noisy_truth.csv).

At scale=1.0: 20 curated, 40 noisy and 10 test clips per class (about 1000 clips, a few
seconds to write). A folder already holding a complete set of the same seed, scale and
version (its demo.json says so) is returned as it is.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq

from raytag.errors import DatasetError, RaytagError
from raytag.storage import local_folder_option

log = logging.getLogger("raytag.data")

SAMPLE_RATE = 16000
DEMO_VERSION = 2  # bump when the generated audio changes, so old folders are rewritten
PER_CLASS = {"curated": 20, "noisy": 40, "test": 10}
MIX_FRACTION = 0.15
NOISY_WRONG_FRACTION = 0.5
MIN_SECONDS, MAX_SECONDS = 0.5, 6.0
_FOLDERS = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
_CSVS = ["train_curated.csv", "train_noisy.csv", "sample_submission.csv",
         "test_labels.csv", "train_noisy_truth.csv"]
_MARKER = "demo.json"


# ----------------------------------------------------------------------------- event generators
# Each returns `n` samples of one event, peak about 1. Pitch, rate and timing are drawn
# from `rng` inside class-specific ranges.
def _t(n):
    return np.arange(n) / SAMPLE_RATE


def _gate(rng, n, n_bursts, burst_s, ramp_s=0.01):
    """Envelope with `n_bursts` smooth bursts of random length spread over n samples."""
    env = np.zeros(n)
    ramp = max(1, int(ramp_s * SAMPLE_RATE))
    for _ in range(n_bursts):
        length = min(n, int(rng.uniform(*burst_s) * SAMPLE_RATE))
        start = int(rng.integers(0, max(1, n - length + 1)))
        shape = np.ones(length)
        r = min(ramp, length // 2)
        if r:
            shape[:r] = np.linspace(0, 1, r)
            shape[-r:] = np.linspace(1, 0, r)
        env[start:start + length] = np.maximum(env[start:start + length], shape)
    return env


def _fade(n, fade_s=0.02):
    env = np.ones(n)
    r = min(n // 2, int(fade_s * SAMPLE_RATE))
    if r:
        env[:r] = np.linspace(0, 1, r)
        env[-r:] = np.linspace(1, 0, r)
    return env


def _band_noise(rng, n, centre, octaves):
    """White noise shaped by a Gaussian band on a log-frequency axis (FFT filter)."""
    m = next_fast_len(n, real=True)  # clip lengths are random: pad to a fast FFT size
    spec = rfft(rng.standard_normal(m))
    f = np.maximum(rfftfreq(m, 1 / SAMPLE_RATE), 1.0)
    spec *= np.exp(-0.5 * (np.log2(f / centre) / (octaves / 2)) ** 2)
    x = irfft(spec, m)[:n]
    return x / (np.abs(x).max() + 1e-9)


def _pink(rng, n):
    m = next_fast_len(n, real=True)
    spec = rfft(rng.standard_normal(m))
    f = rfftfreq(m)
    f[0] = f[1] if m > 1 else 1.0
    x = irfft(spec / np.sqrt(f), m)[:n]
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _pulse_train(rng, n, rate_hz, kernel):
    out = np.zeros(n + len(kernel))
    period = SAMPLE_RATE / rate_hz
    # the first pulse lands inside the event, whole where it fits: an event (0.3 s or more)
    # may be shorter than one period (up to 1 s), and one with no pulse would be silence
    pos = rng.uniform(0, max(1, min(period, n - len(kernel))))
    while pos < n:
        i = int(pos)
        out[i:i + len(kernel)] += kernel * rng.uniform(0.6, 1.0)
        pos += period * rng.uniform(0.85, 1.15)  # a little jitter
    return out[:n]


def _tone_bursts(lo, hi):
    def make(rng, n):
        f = rng.uniform(lo, hi)
        env = _gate(rng, n, int(rng.integers(2, 6)), (0.08, 0.4))
        return np.sin(2 * np.pi * f * _t(n) + rng.uniform(0, 6.3)) * env
    return make


def _chirp(up):
    def make(rng, n):
        f0, f1 = rng.uniform(250, 700), rng.uniform(2500, 5500)
        if not up:
            f0, f1 = f1, f0
        sweeps = int(rng.integers(1, 4))
        seg = max(1, n // sweeps)
        phase_t = (np.arange(n) % seg) / seg  # 0..1 within each sweep
        freq = f0 * (f1 / f0) ** phase_t
        phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
        env = np.minimum(1.0, np.minimum(phase_t, 1 - phase_t) * 20)
        return np.sin(phase) * env
    return make


def _buzz(rng, n):
    f0, t = rng.uniform(90, 180), _t(n)
    k = np.arange(1, int(rng.integers(10, 20)) + 1)[:, None]
    x = (np.sin(2 * np.pi * f0 * k * t) / k).sum(axis=0)
    return x / np.abs(x).max() * _fade(n)


def _whistle(rng, n):
    f0, t = rng.uniform(650, 1100), _t(n)
    x = np.sin(2 * np.pi * f0 * t) + 0.4 * np.sin(4 * np.pi * f0 * t) + 0.2 * np.sin(6 * np.pi * f0 * t)
    return x / 1.6 * _fade(n)


def _tremolo(rng, n):
    f0, rate, t = rng.uniform(500, 1200), rng.uniform(5, 12), _t(n)
    am = 0.5 * (1 + np.sin(2 * np.pi * rate * t))
    return np.sin(2 * np.pi * f0 * t) * am * _fade(n)


def _vibrato(rng, n):
    f0, rate, depth = rng.uniform(500, 1200), rng.uniform(4, 8), rng.uniform(40, 120)
    freq = f0 + depth * np.sin(2 * np.pi * rate * _t(n))
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * _fade(n)


def _band(lo, hi, octaves):
    def make(rng, n):
        return _band_noise(rng, n, rng.uniform(lo, hi), octaves) * _fade(n, 0.05)
    return make


def _ticks(lo, hi):
    def make(rng, n):
        kernel = rng.standard_normal(48) * np.exp(-np.arange(48) / 8.0)
        return _pulse_train(rng, n, rng.uniform(lo, hi), kernel / np.abs(kernel).max())
    return make


def _knock(rng, n):
    f = rng.uniform(80, 200)
    m = int(0.25 * SAMPLE_RATE)
    tt = np.arange(m) / SAMPLE_RATE
    kernel = np.sin(2 * np.pi * f * tt) * np.exp(-tt * rng.uniform(15, 30))
    kernel[:64] += rng.standard_normal(64) * np.exp(-np.arange(64) / 10.0) * 0.5
    return _pulse_train(rng, n, rng.uniform(1.0, 2.5), kernel / np.abs(kernel).max())


def _bell(rng, n):
    f0 = rng.uniform(400, 900)
    m = min(n, int(rng.uniform(0.6, 1.5) * SAMPLE_RATE))
    tt = np.arange(m) / SAMPLE_RATE
    ratios, decays = (1.0, 2.76, 5.40, 8.93), (3.0, 5.0, 8.0, 12.0)
    strike = sum(np.sin(2 * np.pi * f0 * r * tt) * np.exp(-tt * d) / (i + 1)
                 for i, (r, d) in enumerate(zip(ratios, decays)))
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        start = int(rng.integers(0, max(1, n - m // 2)))
        end = min(n, start + m)
        out[start:end] += strike[:end - start]
    return out / (np.abs(out).max() + 1e-9)


GENERATORS = {
    "bell": _bell,
    "buzz": _buzz,
    "chirp_down": _chirp(up=False),
    "chirp_up": _chirp(up=True),
    "hiss": _band(3500, 6000, 1.0),
    "knock": _knock,
    "rumble": _band(120, 300, 1.2),
    "ticks_fast": _ticks(18, 40),
    "ticks_slow": _ticks(3, 7),
    "tone_high": _tone_bursts(1800, 3000),
    "tone_low": _tone_bursts(220, 420),
    "tremolo": _tremolo,
    "vibrato": _vibrato,
    "whistle": _whistle,
}
CLASSES = sorted(GENERATORS)


# ----------------------------------------------------------------------------- clips
def _rms(x):
    return float(np.sqrt(np.mean(x ** 2) + 1e-12))


def _event_into(rng, clip, name, level_db):
    """Add one event of class `name` over a random part of `clip` at `level_db` (rms)."""
    n = len(clip)
    length = min(n, max(int(0.3 * SAMPLE_RATE), int(rng.uniform(0.4, 1.0) * n)))
    start = int(rng.integers(0, n - length + 1))
    event = GENERATORS[name](rng, length)
    assert np.any(event), f"the {name} generator made silence: the clip would be labelled {name} without it"
    clip[start:start + length] += event / _rms(event) * 10 ** (level_db / 20)


def _make_clip(rng, labels, snr_db):
    """Waveform (float32, peak <= 0.9) with one event per label over pink noise."""
    n = int(np.exp(rng.uniform(np.log(MIN_SECONDS), np.log(MAX_SECONDS))) * SAMPLE_RATE)
    clip = np.zeros(n)
    for k, name in enumerate(labels):
        _event_into(rng, clip, name, 0.0 if k == 0 else -rng.uniform(0, 6))
    clip += _pink(rng, n) * 10 ** (-snr_db / 20)
    clip *= 10 ** (rng.uniform(-20, 0) / 20) * 0.9 / np.abs(clip).max()
    return clip.astype(np.float32)


def _plan(seed, scale):
    """Every clip to make: (split, true labels, given labels, rng), deterministic."""
    plan_rng = np.random.default_rng([seed, 0])
    plan = []
    for s_idx, split in enumerate(("curated", "noisy", "test")):
        per_class = max(1, int(round(PER_CLASS[split] * scale)))
        for c_idx, name in enumerate(CLASSES):
            for i in range(per_class):
                labels = [name]
                if plan_rng.random() < MIX_FRACTION:
                    labels.append(str(plan_rng.choice([c for c in CLASSES if c != name])))
                given = list(labels)
                if split == "noisy" and plan_rng.random() < NOISY_WRONG_FRACTION:
                    j = int(plan_rng.integers(len(given)))
                    given[j] = str(plan_rng.choice([c for c in CLASSES if c not in labels]))
                # one independent stream per clip: a clip does not depend on the others
                clip_rng = np.random.default_rng([seed, 1, s_idx, c_idx, i])
                plan.append((split, sorted(labels), sorted(given), clip_rng))
    order = plan_rng.permutation(len(plan))
    return [plan[i] for i in order]


def make_demo_dataset(out: str | Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Write (or reuse) the demo dataset in `out`; returns the folder."""
    # not the current folder nor a local "s3:": clips and CSVs would land beside the user's own files
    out = local_folder_option(out, "OUT", "give the folder to write the demo dataset to",
                              "the demo dataset is written to a local folder; give a local path, then copy it "
                              "(e.g. aws s3 sync DIR s3://bucket/prefix)", RaytagError)
    if not scale > 0:  # also refuses NaN
        raise RaytagError(f"--scale {scale}: must be a positive number (1.0 is the full demo set)")
    if int(seed) < 0:  # checked before an earlier set is cleared: numpy refuses it only later
        raise RaytagError(f"--seed {seed}: must be 0 or more (the same seed gives the same files)")
    wanted = {"seed": int(seed), "scale": float(scale), "version": DEMO_VERSION}
    if _is_complete(out, wanted):
        log.info("demo dataset in %s reused (seed %d, scale %g)", out, seed, scale)
        return out
    _clear(out)
    _start_folder(out, wanted)
    for folder in _FOLDERS.values():
        (out / folder).mkdir()

    name_rng = np.random.default_rng([seed, 2])
    names: set[str] = set()
    rows = {split: [] for split in _FOLDERS}
    for split, labels, given, rng in _plan(seed, scale):
        snr = rng.uniform(3, 15) if split == "noisy" else rng.uniform(10, 30)
        wave = _make_clip(rng, labels, snr)
        while (fname := f"{int(name_rng.integers(0, 16 ** 8)):08x}.wav") in names:
            pass
        names.add(fname)
        sf.write(out / _FOLDERS[split] / fname, wave, SAMPLE_RATE, subtype="PCM_16")
        rows[split].append((fname, given, labels))

    _write_csv(out / "train_curated.csv", ["fname", "labels"],
               [(f, ",".join(g)) for f, g, _ in rows["curated"]])
    _write_csv(out / "train_noisy.csv", ["fname", "labels"],
               [(f, ",".join(g)) for f, g, _ in rows["noisy"]])
    _write_csv(out / "train_noisy_truth.csv", ["fname", "labels"],
               [(f, ",".join(t)) for f, _, t in rows["noisy"]])
    _write_csv(out / "test_labels.csv", ["fname", "labels"],
               [(f, ",".join(t)) for f, _, t in rows["test"]])
    _write_csv(out / "sample_submission.csv", ["fname"] + CLASSES,
               [(f, *([0] * len(CLASSES))) for f, _, _ in rows["test"]])
    counts = {split: len(r) for split, r in rows.items()}
    wrong = sum(g != t for _, g, t in rows["noisy"])
    _write_marker(out, {**wanted, "complete": True, "classes": CLASSES, "counts": counts,
                        "noisy_wrong": wrong})
    log.info("demo dataset written to %s: %s, %d noisy clips with a wrong label", out, counts, wrong)
    return out


# ----------------------------------------------------------------------------- reuse
def _is_complete(out: Path, wanted: dict) -> bool:
    marker = _read_marker(out)
    if not marker or not marker.get("complete"):
        return False
    if any(marker.get(k) != v for k, v in wanted.items()):
        return False
    if not all((out / name).is_file() for name in _CSVS):
        return False
    for split, csv_name in (("curated", "train_curated.csv"), ("noisy", "train_noisy.csv"),
                            ("test", "test_labels.csv")):
        with open(out / csv_name, newline="") as f:
            fnames = [row["fname"] for row in csv.DictReader(f)]
        if len(fnames) != marker.get("counts", {}).get(split):
            return False
        if not all((out / _FOLDERS[split] / fname).is_file() for fname in fnames):
            return False
    return True


def _read_marker(out: Path):
    try:
        return json.loads((out / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _start_folder(out: Path, wanted: dict):
    """Create `out` and mark it as an incomplete demo set (an interrupted write is then
    recognised as ours and redone), or say why it cannot hold the demo set."""
    if out.exists() and not out.is_dir():
        raise RaytagError(f"{out} is a file; give a folder (new or empty) for the demo dataset")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_marker(out, {**wanted, "complete": False})
    except OSError as err:
        raise RaytagError(f"cannot write the demo dataset to {out} ({err.strerror or err}); "
                          "give a folder you can write to") from None


def _clear(out: Path):
    """Remove an earlier demo set in `out`; refuse to overwrite files that are not ours."""
    ours = [out / name for name in _CSVS] + [out / f for f in _FOLDERS.values()]
    present = [p for p in ours if p.exists()]
    if not present:
        return
    if _read_marker(out) is None:
        raise DatasetError(
            f"{out} already holds {present[0].name} but no {_MARKER}: it was not made by "
            "make_demo_dataset; choose an empty folder for the demo data"
        )
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write_marker(out: Path, data: dict):
    tmp = out / (_MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / _MARKER)


def _write_csv(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
