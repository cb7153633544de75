"""Tag audio files with a loaded ensemble artifact (`Artifact.predict_files`).

Each file is decoded once per sample rate the members need, turned into each member's
features by its own front end, cut into segments (segment averaging, as in training's
validation), scored by every fold model of every member (fold models averaged within a
member), and the members are combined with the artifact's combiner.

A file that cannot be decoded is never scored as silence: it is returned in the
failures table and left out of the scores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from raytag.data.audio import load_audio, min_samples
from raytag.errors import AudioDecodeError
from raytag.features.frontends import build_frontend
from raytag.training.inference import predict_segments

FILES_PER_CHUNK = 16  # files decoded and featurised together (bounds memory for long lists)


class _MemberRunner:
    """One member's front end and fold models, applied to decoded waveforms."""

    def __init__(self, member, batch_size: int, device: str):
        self.member = member
        self.cfg = member.feature_config
        self.frontend = build_frontend(self.cfg).to(device).eval()
        s = member.settings
        self.segment_frames = int(s["segment_frames"])
        self.inference = s.get("inference", {})
        self.mean = None if s.get("norm_mean") is None else np.asarray(s["norm_mean"], dtype=np.float32)
        self.std = None if s.get("norm_std") is None else np.asarray(s["norm_std"], dtype=np.float32)
        self.batch_size = batch_size
        self.device = device

    @torch.no_grad()
    def features(self, wave: np.ndarray) -> np.ndarray:
        # one clip at a time: top_db and lengths are per clip, as in the feature store
        x = torch.from_numpy(wave)[None].to(self.device)
        return self.frontend(x)[0].float().cpu().numpy()

    def predict(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        per_fold = [
            predict_segments(
                model, feats, self.segment_frames,
                overlap=self.inference.get("overlap", 0.5),
                reduce=self.inference.get("reduce", "mean"),
                tta=self.inference.get("tta", 0),
                batch_size=self.batch_size, device=self.device, mean=self.mean, std=self.std,
            )
            for model in self.member.models
        ]
        return np.mean(per_fold, axis=0)  # fold models averaged within the member


def _featurise(path: str, runners: list, rates: set) -> list[np.ndarray]:
    """Each member's features of one file; AudioDecodeError when any step cannot use it.
    Decoding and front ends follow the feature store (raytag.features.store), so a clip
    usable in training is usable here and the other way round."""
    # the feature store's rule (one frame), per rate: the longest frame of the members at it
    need = {rate: max(min_samples(r.cfg) for r in runners if r.cfg.sample_rate == rate) for rate in rates}
    waves = {rate: load_audio(path, rate, min_samples=need[rate]) for rate in rates}
    feats = []
    for r in runners:
        try:
            x = r.features(waves[r.cfg.sample_rate])
        except RuntimeError as err:
            raise AudioDecodeError(path, f"front end failed: {str(err).splitlines()[0]}") from err
        if not np.isfinite(x).all():
            raise AudioDecodeError(path, "features are not finite (NaN/inf)")
        feats.append(x)
    return feats


def predict_files(artifact, paths: Sequence, batch_size: int = 32, progress: bool = False,
                  device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(probs, failures): probs is indexed by file (str) with one column per class, in the
    order of `paths` minus the failures; failures has columns file, reason."""
    runners = [_MemberRunner(m, batch_size, device) for m in artifact.members]
    rates = {r.cfg.sample_rate for r in runners}  # each file is decoded once per rate
    names, rows, failures = [], [], []
    paths = [str(p) for p in paths]
    bar = _progress(progress)
    with bar:
        task = bar.add_task("tagging", total=len(paths))
        for start in range(0, len(paths), FILES_PER_CHUNK):
            chunk = paths[start:start + FILES_PER_CHUNK]
            ok, feats = [], [[] for _ in runners]
            for path in chunk:
                try:
                    per_member = _featurise(path, runners, rates)
                except AudioDecodeError as err:
                    failures.append({"file": path, "reason": err.reason})
                    continue
                ok.append(path)
                for i, x in enumerate(per_member):
                    feats[i].append(x)
            if ok:
                rows.append(artifact.combine([r.predict(f) for r, f in zip(runners, feats)]))
                names.extend(ok)
            bar.update(task, advance=len(chunk))
    probs = np.concatenate(rows) if rows else np.zeros((0, len(artifact.classes)), dtype=np.float32)
    probs_df = pd.DataFrame(probs, index=pd.Index(names, name="file"), columns=list(artifact.classes))
    return probs_df, pd.DataFrame(failures, columns=["file", "reason"])


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


class _NoBar:
    """Stands in for rich's Progress when no bar is wanted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return None

    def update(self, *a, **k):
        pass

