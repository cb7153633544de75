"""What one pipeline run trains on, fixed on the driver before any worker starts.

The plan holds clip ids, label matrices, fold ids and the rough noisy subset; the
workers receive it whole (a few MB even at FAT2019 scale). Truth files for test and
noisy clips never enter it: the workers cannot see them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from raytag.config import Config, ConfigError, InputNormConfig
from raytag.data.labels import labels_to_matrix
from raytag.errors import DatasetError
from raytag.pipeline.selection import select_noisy_subset
from raytag.pipeline.spreading import load_groups_file
from raytag.training.folds import FoldError, make_folds, read_clip_groups

log = logging.getLogger(__name__)


@dataclass
class Plan:
    cfg: dict
    classes: list[str]
    layout: str
    store_path: str
    curated_ids: list[str]
    curated_y: np.ndarray  # (n, C) float32
    curated_fold: np.ndarray  # (n,) int
    noisy_ids: list[str]
    noisy_y: np.ndarray
    noisy_subset: list[str]  # the rough selection (seed 000's best50s)
    test_ids: list[str]
    folds: list[int]  # CV folds this run trains (cv.folds or all)
    refit_fold: Optional[int] = None  # cv.refit: the id (n_folds) of the model on every curated clip
    data_ref: str = ""  # the dataset as the user gave it (path or URI): for nodes without the store
    feature_cache: str = ""
    channels: int = 1
    bins: int = 1
    norm_mean: np.ndarray = field(default=None)  # (C, F)
    norm_std: np.ndarray = field(default=None)
    # cv.noisy_folds: the fold of each noisy clip (aligned with noisy_ids), which that fold's
    # model does not train on and predicts; None: every fold trains on every noisy clip
    noisy_fold: Optional[np.ndarray] = None
    # train.noisy_teacher: {model fold: (noisy clips, classes) float32 targets} aligned with
    # noisy_ids, the given labels blended with the teacher's fold models' predictions
    # (raytag.ensemble.noisy_teacher); None: the given labels
    noisy_targets: Optional[dict] = None
    noisy_teacher_id: Optional[str] = None  # the teacher's contents (run_settings records it)
    # the features the run trains on (FeatureStore.identity: the store's key and its clips' audio
    # contents), which run_settings records as plan.features; None: not known
    features_id: Optional[str] = None
    # the held-out score the reports' rung_score is in (rungs.resolve_rung_metric): a sweep's
    # search metric, "lwlrap" or "map3"; None: the layout's own
    rung_metric: Optional[str] = None

    @property
    def config(self) -> Config:
        return Config.from_dict(self.cfg)

    @property
    def model_folds(self) -> list[int]:
        """Every model the run trains: the CV folds, then the refit model if any."""
        return self.folds + ([self.refit_fold] if self.refit_fold is not None else [])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def cv_folds(cfg: Config) -> list[int]:
    """The CV folds a run trains: cv.folds, or all of them."""
    return sorted(set(cfg.cv.folds)) if cfg.cv.folds is not None else list(range(cfg.cv.n_folds))


def model_folds(cfg: Config) -> list[int]:
    """Every model a run trains, as Plan.model_folds says, known from the config alone."""
    return cv_folds(cfg) + ([cfg.cv.n_folds] if cfg.cv.refit else [])


def build_plan(cfg: Config, dataset, store, data_ref: str = "", feature_cache: str = "") -> Plan:
    """Folds, the noisy subset and label matrices for the clips the store could decode."""
    warn_if_cepstra_pooled(cfg.train.normalize, cfg.features.kind)
    warn_if_filter_judges_its_own_training_clips(cfg)
    usable = set(store.clip_ids)
    clips = dataset.clips[dataset.clips["clip_id"].isin(usable)]
    curated = clips[clips["split"] == "curated"].reset_index(drop=True)
    noisy = clips[clips["split"] == "noisy"].reset_index(drop=True)
    test = clips[clips["split"] == "test"].reset_index(drop=True)
    classes = list(dataset.classes)
    lost = _curated_lost_to_decoding(dataset, usable, store)
    curated_y = labels_to_matrix(list(curated["labels"]), classes)
    groups = None
    if cfg.cv.clip_groups:  # read here, on the driver: workers on other nodes may not have the file
        groups = read_clip_groups(cfg.cv.clip_groups, list(curated["fname"]), Path(dataset.root))
    try:
        fold_ids = make_folds(curated_y, cfg.cv.n_folds, cfg.cv.seed, groups)
    except FoldError as err:
        if not lost:
            raise
        raise FoldError(f"{err}. {len(lost)} curated clips failed to decode and are not counted "
                        f"(listed with the reasons in {Path(store.path) / 'failed.csv'})") from err
    noisy_y = labels_to_matrix(list(noisy["labels"]), classes) if len(noisy) else np.zeros((0, len(classes)), np.float32)
    # an unlisted clip's own group (folds.read_clip_groups) is shared with no clip
    curated_fold_of_group = {g: int(f) for g, f in zip(groups or [], fold_ids) if not g.startswith("\0")}
    if cfg.cv.noisy_folds:
        noisy_fold = _noisy_folds(cfg, noisy, noisy_y, Path(dataset.root), curated_fold_of_group)
    else:
        noisy_fold = None
        _warn_if_groups_span_splits(cfg, noisy, Path(dataset.root), curated_fold_of_group)
    folds = cv_folds(cfg)
    bad = [f for f in folds if not 0 <= f < cfg.cv.n_folds]
    if bad:
        raise ConfigError(f"cv.folds: {bad} out of range 0..{cfg.cv.n_folds - 1}")
    subset = (
        select_noisy_subset(noisy, classes, cfg.pipeline.noisy_selection, cfg.seed)
        if len(noisy) and cfg.pipeline.noisy_selection.enabled
        else list(noisy["clip_id"])
    )
    _refuse_a_warmup_without_clips(cfg, len(noisy), len(subset))
    channels, bins = store.shape
    spreading = cfg.pipeline.label_spreading
    if spreading.groups_file and not spreading.groups:
        # resolved here, on the driver: workers on other nodes may not have the file
        cfg = cfg.with_overrides({"pipeline.label_spreading.groups": load_groups_file(spreading.groups_file, classes)})
    return Plan(
        cfg=cfg.to_dict(),
        classes=classes,
        layout=dataset.layout,
        store_path=str(store.path),
        curated_ids=list(curated["clip_id"]),
        curated_y=curated_y,
        curated_fold=np.asarray(fold_ids, dtype=np.int64),
        noisy_ids=list(noisy["clip_id"]),
        noisy_y=noisy_y,
        noisy_subset=list(subset),
        noisy_fold=noisy_fold,
        test_ids=list(test["clip_id"]),
        folds=folds,
        refit_fold=cfg.cv.n_folds if cfg.cv.refit else None,
        data_ref=str(data_ref or dataset.root),
        feature_cache=str(feature_cache),
        channels=int(channels),
        bins=int(bins),
        **dict(zip(("norm_mean", "norm_std"), input_scaling(cfg.train.normalize, store.mean, store.std))),
    )


def _curated_lost_to_decoding(dataset, usable: set, store) -> list[str]:
    """The curated clips the dataset kept but the store could not decode. None left at all
    is a DatasetError pointing at failed.csv: no setting of the run can help then."""
    curated = dataset.clips[dataset.clips["split"] == "curated"]
    lost = [str(p) for cid, p in zip(curated["clip_id"], curated["path"]) if cid not in usable]
    if lost and len(lost) == len(curated):
        raise DatasetError(f"{dataset.root}: no curated clip could be decoded ({len(lost)} failed, "
                           f"e.g. {_failure_example(store, dataset.root, lost[0])}); each is listed with its "
                           f"reason in {Path(store.path) / 'failed.csv'}: fix or replace those files")
    return lost


def _failure_example(store, root, path: str) -> str:
    """`file: reason` of one failed clip from the store's failures (keyed by the path in the dataset)."""
    try:
        file = str(Path(path).relative_to(root))
    except ValueError:
        file = path
    reasons = dict(zip(store.failed["file"], store.failed["reason"])) if len(store.failed) else {}
    return f"{file}: {reasons[file]}" if file in reasons else file


def _refuse_a_warmup_without_clips(cfg: Config, n_noisy: int, n_subset: int) -> None:
    """The warm-up trains on noisy clips alone; with none it would fail late, in a worker
    (and be retried), instead of here."""
    warmup = cfg.pipeline.warmup
    if not (warmup.enabled and warmup.epochs > 0):
        return
    n_used = n_subset if warmup.use == "subset" else n_noisy
    if n_used:
        return
    if n_noisy == 0:
        why = "the dataset has no usable noisy clips (no train_noisy.csv, or none could be decoded)"
    else:
        why = f"pipeline.noisy_selection keeps none of the {n_noisy} noisy clips"
    raise ConfigError(f"pipeline.warmup trains on noisy clips (pipeline.warmup.use: {warmup.use}), but {why}; "
                      "set pipeline.warmup.enabled: false, pipeline.warmup.use: all, or loosen "
                      "pipeline.noisy_selection")


def _noisy_folds(cfg: Config, noisy, noisy_y: np.ndarray, root: Path,
                 curated_fold_of_group: dict | None = None) -> np.ndarray:
    """cv.noisy_folds: a fold id for each noisy clip, stratified on the given labels as the
    curated folds are, with cv.clip_groups' groups kept whole when the file lists noisy clips
    (a noisy clip cut from the recording of another must not be predicted by a model that
    heard its sibling). A noisy clip whose group also holds curated clips (FSDKaggle2018:
    both splits come from one train.csv) takes that group's curated fold."""
    if len(noisy) < cfg.cv.n_folds:
        raise ConfigError(f"cv.noisy_folds: {len(noisy)} noisy clip(s) cannot be split into {cfg.cv.n_folds} "
                          "folds; set cv.noisy_folds: false")
    groups = None
    if cfg.cv.clip_groups:  # a file of the curated clips' groups alone: each noisy clip its own group
        groups = read_clip_groups(cfg.cv.clip_groups, list(noisy["fname"]), root, kind="noisy", must_list_some=False)
    shared = np.array([g in (curated_fold_of_group or {}) for g in groups]) if groups else np.zeros(0, bool)
    if not shared.any():  # as before: every noisy clip stratified
        return np.asarray(make_folds(noisy_y, cfg.cv.n_folds, cfg.cv.seed, groups), dtype=np.int64)
    folds = np.array([curated_fold_of_group.get(g, -1) for g in groups], dtype=np.int64)
    rest = ~shared
    if rest.any():
        folds[rest] = _folds_of_the_rest(noisy_y[rest], [g for g, r in zip(groups, rest) if r], cfg)
    return folds


def _folds_of_the_rest(y: np.ndarray, groups: list, cfg: Config) -> np.ndarray:
    """Stratified folds for the noisy clips no curated group claims; too few groups to
    stratify are dealt out in a seeded order."""
    if len(set(groups)) >= cfg.cv.n_folds:
        return make_folds(y, cfg.cv.n_folds, cfg.cv.seed, groups)
    codes, _ = pd.factorize(pd.Series(groups, dtype=object))
    dealt = np.random.default_rng(cfg.cv.seed).permutation(codes.max() + 1) % cfg.cv.n_folds
    return dealt[codes]


def _warn_if_groups_span_splits(cfg: Config, noisy, root: Path, curated_fold_of_group: dict) -> None:
    """Without cv.noisy_folds every fold trains on every noisy clip, so a noisy sibling of a
    held-out curated clip leaks it into the model that predicts it."""
    if not (curated_fold_of_group and len(noisy)):
        return
    groups = read_clip_groups(cfg.cv.clip_groups, list(noisy["fname"]), root, kind="noisy",
                              must_list_some=False, warn_unlisted=False)
    shared = sorted({g for g in groups or [] if g in curated_fold_of_group})
    if shared:
        log.warning("cv.clip_groups: %d group(s) hold both curated and noisy clips (e.g. %s); without "
                    "cv.noisy_folds every fold trains on the noisy ones, so held-out curated clips leak "
                    "through their noisy siblings; set cv.noisy_folds: true", len(shared), shared[:3])


def warn_if_filter_judges_its_own_training_clips(cfg: Config) -> None:
    """pipeline.finetune.noisy: all (or subset) fits the stage-1 model to those noisy clips' given
    labels, and the probability filter then judges them with that model: it accepts nearly all
    of them, wrong labels included. A legitimate baseline, so a warning, not a refusal."""
    p = cfg.pipeline
    fits_noisy = p.finetune.enabled and p.finetune.epochs > 0 and p.finetune.noisy != "none"
    if p.filter.enabled and fits_noisy:
        which = "every noisy clip" if p.finetune.noisy == "all" else "the rough noisy subset"
        log.warning("pipeline.filter judges noisy clips with the stage-1 model, but pipeline.finetune.noisy: %s "
                    "trained that model on %s at face value, so it accepts nearly all of them, wrong labels "
                    "included; set pipeline.finetune.noisy: none for a filter that means something",
                    p.finetune.noisy, which)


def warn_if_cepstra_pooled(norm: InputNormConfig, features_kind: str) -> None:
    """Global scaling pools every bin with the first: on MFCC, c0 is ~sqrt(n_mels) x the mean
    dB, so the other coefficients reach the network ~20x smaller than it. Cepstra are scaled
    per coefficient (CMVN) as a rule."""
    if norm.kind == "global" and features_kind == "mfcc":
        log.warning("train.normalize.kind: global on MFCC scales every coefficient by c0's spread, so c1... "
                    "reach the network ~20x smaller; train.normalize.kind: per_bin scales each coefficient "
                    "on its own (cepstral mean and variance normalisation)")


def input_scaling(norm: InputNormConfig, bin_mean, bin_std) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) arrays of shape (C, F) that the model input is scaled by: (x - mean) / std.

    Whatever the kind, the result is per-bin arrays, so the workers, inference and the
    artifact apply one formula. "global" pools the per-bin statistics of each channel
    exactly (every bin has the same frames): var = mean(std^2 + mean^2) - mean^2."""
    bin_mean = np.asarray(bin_mean, dtype=np.float64)
    bin_std = np.asarray(bin_std, dtype=np.float64)
    if norm.kind == "per_bin":
        mean, std = bin_mean, bin_std
    elif norm.kind == "global":
        mu = bin_mean.mean(axis=1, keepdims=True)
        var = (bin_std**2 + bin_mean**2).mean(axis=1, keepdims=True) - mu**2
        mean = np.broadcast_to(mu, bin_mean.shape)
        std = np.broadcast_to(np.sqrt(np.maximum(var, 0.0)), bin_mean.shape)
    else:  # fixed
        mean = np.full(bin_mean.shape, norm.offset)
        std = np.full(bin_mean.shape, norm.scale)
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)
