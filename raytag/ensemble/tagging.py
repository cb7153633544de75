"""Tag audio files with a loaded ensemble artifact (`Artifact.predict_files`).

Each file is decoded once per sample rate the members need and turned into features
once per distinct front end (members with the same feature settings share them). Files
are taken in chunks: every member cuts the chunk's clips into segments once (segment
averaging, as in training's validation), every fold model of the member scores those
same segments in batches that span clips, fold models are averaged within a member, and
the members are combined with the artifact's combiner. All of it runs under
`torch.inference_mode` (no autograd bookkeeping).

A file that cannot be decoded is never scored as silence: it is returned in the
failures table and left out of the scores. So is one too long to decode whole with the
memory free (refused from its header, or by a MemoryError while decoding). The table's
`retry` column marks the failures another try may not repeat (memory, an I/O error), so a
caller that caches what it tagged can leave those files to be tried again.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from raytag.data.audio import AudioReadError, decode_memory_budget, load_audio, min_samples
from raytag.errors import AudioDecodeError
from raytag.features.frontends import build_frontend
from raytag.training.inference import clip_segments, normaliser, reduce_segments

FILES_PER_CHUNK = 16  # files decoded and featurised together (bounds memory for long lists)
OUT_OF_MEMORY = "out of memory while decoding it (a very long file?); split it into shorter files"
FAILURE_COLUMNS = ["file", "reason", "retry"]  # retry: the failure may pass (memory, I/O)


class _FrontEnd:
    """One distinct front end (feature settings), shared by the members that use it."""

    def __init__(self, cfg, device: str):
        self.cfg = cfg
        self.module = build_frontend(cfg).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def features(self, wave: np.ndarray) -> np.ndarray:
        # one clip at a time: top_db and lengths are per clip, as in the feature store
        x = torch.from_numpy(wave)[None].to(self.device)
        return as_stored(self.module(x)[0].float().cpu().numpy())


def as_stored(feats: np.ndarray) -> np.ndarray:
    """Features rounded as the feature store keeps them (float16, read back as float32):
    the OOF and test scores an artifact was chosen by came from stored features, so new
    audio is tagged from the same numbers. Beyond float16's range a value becomes inf,
    which the finite check after this refuses, as the store does."""
    with np.errstate(over="ignore"):
        return feats.astype(np.float16).astype(np.float32)


class _MemberRunner:
    """One member's segments, normalisation and fold models."""

    def __init__(self, member, frontend: str, batch_size: int, device: str):
        self.member = member
        self.frontend = frontend  # key into the shared front ends
        s = member.settings
        self.segment_frames = int(s["segment_frames"])
        inference = s.get("inference", {})
        self.overlap = inference.get("overlap", 0.5)
        self.reduce = inference.get("reduce", "mean")
        self.tta = inference.get("tta", 0)
        mean = None if s.get("norm_mean") is None else np.asarray(s["norm_mean"], dtype=np.float32)
        std = None if s.get("norm_std") is None else np.asarray(s["norm_std"], dtype=np.float32)
        self.norm = normaliser(mean, std)
        self.batch_size = batch_size
        self.device = device

    @torch.inference_mode()
    def predict(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        """(clips, classes): each fold model on the clips' segments, fold models averaged."""
        segs, owners = clip_segments(feats, self.segment_frames, self.overlap, self.tta)
        x = self.norm(torch.from_numpy(segs).to(self.device))  # once for every fold model
        per_fold = [reduce_segments(probs, owners, len(feats), self.reduce)
                    for probs in fold_segment_probs(self.member.models, x, self.batch_size)]
        return np.mean(per_fold, axis=0)  # fold models averaged within the member


@torch.inference_mode()
def fold_segment_probs(models, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """(fold models, segments, classes): each fold model's probabilities on the same
    normalised segments `x`, in batches of `batch_size`."""
    return np.stack([torch.cat([torch.sigmoid(model(x[i:i + batch_size])).float()
                                for i in range(0, len(x), batch_size)]).cpu().numpy()
                     for model in models])


class CompiledModel:
    """A fold model run through torch.compile (inductor, dynamic shapes: segment batches
    vary in size). On CPU it gave about 1.3x the eager throughput with probabilities equal
    to 1.2e-7, but compiling takes 15-40 s a run, so end to end it pays only on lists of
    several hours of audio (results/benchmarks/speed.md). torch.compile compiles at the
    first call, where a machine without a C++ compiler fails: then the model runs eager
    from there on, and `fallback` says why."""

    def __init__(self, model: torch.nn.Module):
        self.eager = model
        self.compiled = torch.compile(model, dynamic=True)
        self.fallback: str | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            try:
                return self.compiled(x)
            except Exception as err:  # noqa: BLE001 - any compiler failure: the eager model is the same function
                self.fallback = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                logging.getLogger("raytag").warning("torch.compile failed (%s); running the models eager",
                                                    self.fallback)
        return self.eager(x)


def compile_models(artifact) -> list[CompiledModel]:
    """Put every fold model of the artifact behind `CompiledModel` (in place); returns them."""
    out = []
    for m in artifact.members:
        m.models = [CompiledModel(model) for model in m.models]
        out.extend(m.models)
    return out


def _featurise(path: str, frontends: dict, need: dict) -> dict:
    """Each distinct front end's features of one file; AudioDecodeError when any step
    cannot use it. Decoding and front ends follow the feature store (raytag.features.store),
    so a clip usable in training is usable here and the other way round. A file whose
    header says it needs more memory than is free to decode whole is refused unread (a
    recording of hours would otherwise end the whole command)."""
    waves = {rate: load_audio(path, rate, min_samples=n, max_bytes=decode_memory_budget())
             for rate, n in need.items()}
    feats = {}
    for key, fe in frontends.items():
        try:
            x = fe.features(waves[fe.cfg.sample_rate])
        except RuntimeError as err:
            raise AudioDecodeError(path, f"front end failed: {str(err).splitlines()[0]}") from err
        if not np.isfinite(x).all():
            raise AudioDecodeError(path, "features are not finite (NaN/inf, or beyond float16 range)")
        feats[key] = x
    return feats


def predict_files(artifact, paths: Sequence, batch_size: int = 32, progress: bool = False,
                  device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(probs, failures): probs is indexed by file (str) with one column per class, in the
    order of `paths` minus the failures; failures has columns file, reason, retry (True
    where another try may succeed: refused or out of memory, an I/O error)."""
    (probs,), failures = predict_files_each([artifact], paths, batch_size, progress, device)
    return probs, failures


def predict_files_each(artifacts: Sequence, paths: Sequence, batch_size: int = 32, progress: bool = False,
                       device: str = "cpu") -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """`predict_files` for several artifacts over the same files, each file decoded and
    featurised once for all of them (e.g. one artifact per fold: raytag.ensemble.noisy_teacher).
    Returns ([probs of each artifact], failures)."""
    frontends: dict[str, _FrontEnd] = {}
    runners: list[list[_MemberRunner]] = []
    for artifact in artifacts:
        runners.append([])
        for m in artifact.members:
            cfg = m.feature_config
            key = cfg.cache_key()  # every setting that changes the features
            if key not in frontends:
                frontends[key] = _FrontEnd(cfg, device)
            runners[-1].append(_MemberRunner(m, key, batch_size, device))
    # each file is decoded once per rate, long enough for the longest frame at that rate
    # (the feature store's rule: one frame)
    need: dict[int, int] = {}
    for fe in frontends.values():
        rate = fe.cfg.sample_rate
        need[rate] = max(need.get(rate, 0), min_samples(fe.cfg))
    names, failures = [], []
    rows: list[list[np.ndarray]] = [[] for _ in artifacts]
    paths = [str(p) for p in paths]
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task("tagging", total=len(paths))
        for start in range(0, len(paths), FILES_PER_CHUNK):
            chunk = paths[start:start + FILES_PER_CHUNK]
            ok, feats = [], {key: [] for key in frontends}
            for path in chunk:
                try:
                    per_frontend = _featurise(path, frontends, need)
                except AudioDecodeError as err:
                    failures.append({"file": path, "reason": err.reason, "retry": isinstance(err, AudioReadError)})
                    continue
                except MemoryError:  # one huge file (its header understated it): its failure, not the list's
                    failures.append({"file": path, "reason": OUT_OF_MEMORY, "retry": True})
                    continue
                ok.append(path)
                for key, x in per_frontend.items():
                    feats[key].append(x)
            if ok:
                for out, artifact, members in zip(rows, artifacts, runners):
                    out.append(artifact.combine([r.predict(feats[r.frontend]) for r in members]))
                names.extend(ok)
            bar.update(task, advance=len(chunk))
    index = pd.Index(names, name="file")
    probs = [pd.DataFrame(np.concatenate(out) if out else np.zeros((0, len(a.classes)), dtype=np.float32),
                          index=index, columns=list(a.classes))
             for out, a in zip(rows, artifacts)]
    return probs, pd.DataFrame(failures, columns=FAILURE_COLUMNS).astype({"retry": bool})


def progress_bar(enabled: bool):
    """A rich progress bar on stderr, or a stand-in that shows nothing."""
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

