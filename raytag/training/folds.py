"""Multi-label stratified K folds over the labelled (curated) clips.

iterative-stratification (Sechidis et al. 2011) keeps every class's share of positives
close to 1/K in each fold, which a plain KFold does not do for rare classes.

Clips cut from one recording (ESC-50's takes A, B, C of one Freesound file; one uploader's
series in FSDKaggle2019) sound alike. Split at random, one lands in training and its sibling
in the held-out fold, and CV rewards remembering recordings: on the dev benchmark the held-out
clips with a sibling in training scored lwlrap 0.75 against 0.55 for the others
(results/benchmarks/quality.md). `cv.clip_groups` names a CSV (fname,group) whose groups
are kept whole: the stratification runs over groups, each carrying the union of its labels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raytag.config import ConfigError
from raytag.errors import DatasetError

log = logging.getLogger("raytag.data")


class FoldError(DatasetError):
    """The clips cannot be split into the requested number of folds."""


def make_folds(y: np.ndarray, n_folds: int, seed: int, groups: Optional[Sequence] = None) -> np.ndarray:
    """Fold id (0..n_folds-1) for each row of the multi-hot matrix y (n, C).

    The same y, n_folds, seed and groups give the same folds. Every row lands in exactly
    one fold, and rows with the same `groups` value (one per row) in the same fold. Soft
    targets are read as positive at >= 0.5; rows with no label are spread over the folds
    like any other.
    """
    y = np.asarray(y)
    if groups is None:
        return _stratified_folds(y, n_folds, seed)
    codes, index = pd.factorize(pd.Series(list(groups), dtype=object))
    if len(codes) != len(y):
        raise ValueError(f"groups has {len(codes)} entries for {len(y)} rows")
    if len(index) < n_folds:
        raise FoldError(
            f"the {len(y)} labelled clips form {len(index)} groups (cv.clip_groups), too few for "
            f"{n_folds} folds; lower cv.n_folds to at most {max(len(index), 2)}"
        )
    group_y = np.zeros((len(index), y.shape[1]), dtype=bool)
    np.logical_or.at(group_y, codes, y >= 0.5)
    return _stratified_folds(group_y, n_folds, seed)[codes]


def _stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    if y.ndim != 2:
        raise ValueError(f"y must be a (clips, classes) matrix, got shape {y.shape}")
    n = y.shape[0]
    if n_folds < 2:
        raise FoldError(f"cv.n_folds must be at least 2, got {n_folds}")
    if n < n_folds:
        raise FoldError(
            f"{n} labelled clips cannot be split into {n_folds} folds; "
            f"lower cv.n_folds to at most {max(n, 2)} or add curated clips"
        )
    labels = y >= 0.5
    if labels.shape[1] < 2:
        # iterstrat accepts only multi-label indicator matrices: add the complement column
        labels = np.concatenate([labels, ~labels], axis=1)
    # imported here: iterstrat brings sklearn (0.8-1 s), which Ray Train's controller and every
    # worker would otherwise import at start-up, unpickling a run's plan that never splits folds
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(n, -1, dtype=np.int64)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros((n, 1)), labels)):
        folds[test_idx] = k
    assert (folds >= 0).all(), "iterstrat left a row without a fold"
    return folds


def read_clip_groups(path: str | Path, fnames: Sequence[str], root: Optional[Path] = None,
                     kind: str = "curated", must_list_some: bool = True,
                     warn_unlisted: bool = True) -> Optional[list[str]]:
    """The group of each clip in `fnames`, from a CSV with columns fname and group (others
    are ignored). A relative path is looked up in `root` (the dataset folder) first.

    A clip the file does not list is its own group, with a warning: a partial list still
    keeps the listed siblings together. A file that lists none of the clips is an error,
    since the folds would then silently be the ungrouped ones; unless `must_list_some` is
    false (noisy clips, which a file of the curated clips' groups need not list): then None.
    `kind` names the clips in messages."""
    p = Path(path)
    if not p.is_absolute() and root is not None and (Path(root) / p).is_file():
        p = Path(root) / p
    if not p.is_file():
        where = f" (nor in the dataset folder {root})" if root is not None else ""
        raise ConfigError(f"cv.clip_groups: no such file {path}{where}")
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ConfigError(f"cv.clip_groups: {p} is not a readable CSV ({e})") from e
    missing_cols = [c for c in ("fname", "group") if c not in table.columns]
    if missing_cols:
        raise ConfigError(f"cv.clip_groups: {p} needs the columns fname and group; it lacks "
                          f"{', '.join(missing_cols)} (it has {', '.join(map(str, table.columns))})")
    repeated = table["fname"][table["fname"].duplicated()].unique()
    if len(repeated):
        raise ConfigError(f"cv.clip_groups: {p} lists {len(repeated)} clip(s) twice, e.g. {list(repeated[:3])}")
    group_of = dict(zip(table["fname"], table["group"]))
    unlisted = [f for f in fnames if f not in group_of]
    if len(unlisted) == len(fnames):
        if not must_list_some:
            return None
        raise ConfigError(f"cv.clip_groups: {p} lists none of the {len(fnames)} {kind} clips "
                          f"(e.g. {list(fnames[:2])}; it has {list(table['fname'][:2])}): is it this dataset's file?")
    if unlisted and warn_unlisted:
        log.warning("cv.clip_groups: %d of %d %s clips are not in %s (e.g. %s); each is its own group",
                    len(unlisted), len(fnames), kind, p, unlisted[:3])
    # an unlisted clip's group is its own name, prefixed so it cannot meet a listed group
    return [group_of[f] if f in group_of else f"\0unlisted:{f}" for f in fnames]
