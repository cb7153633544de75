"""Label spreading over clip embeddings (seed 002): a second opinion on noisy labels.

The labelled clips (curated, plus any already trusted) seed a graph over the embeddings
of labelled and noisy clips; sklearn's LabelSpreading (rbf kernel) spreads their labels
along it. A noisy clip is accepted when the label that reaches it is one of its given
labels: its neighbours agree with what it was tagged. Accepted clips keep their given
labels; the spread label is returned too (for reports and t-SNE plots).

Choices, and why:
  - LabelSpreading is single-label: a labelled clip contributes its first label (lowest
    class index) within the group being spread; noisy clips enter unlabelled (-1).
  - Embeddings are standardised (per dimension, over the group's clips) and then
    L2-normalised. The rbf affinity exp(-gamma * |x - y|^2) depends on the scale of the
    vectors; on unit vectors |x - y|^2 = 2 - 2 cos(x, y) lies in [0, 4] whatever the
    model or PCA produced, so one gamma (20, as seed 002) means the same neighbourhood
    width everywhere. Standardising first keeps one loud dimension from owning the
    cosine and centres all-positive (ReLU) features so that the cosine means something.
  - Groups (seed 002's music / non-music split): spreading within a group of similar
    classes lets a clip choose among fewer, related labels. Classes named by no group form
    one "rest" group. A clip takes part in every group holding one of its labels; a noisy
    clip is accepted if any group's spread label is among its given labels.
  - A group whose labelled clips hold one class (a one-class group, a one-class "rest", a
    groups file trimmed to a subset, a fold lacking the group's other classes) would
    spread that class to every node and accept every clip tagged with it: its noisy clips
    are spread among all classes instead (none accepted by spreading when the labelled
    clips hold one class in all), with a warning.
  - The rbf graph is dense ((clips)^2 floats, about three copies inside sklearn), so at
    most cfg.max_graph clips go into one graph: noisy clips are spread in seeded random
    chunks, each with all the group's labelled clips; if the labelled clips alone would
    fill more than three quarters of the graph, a class-stratified random share of them
    is used (documented approximation; it bounds memory, it does not change the rule).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from raytag.config import SHIPPED_GROUPS, ConfigError, LabelSpreadingConfig, shipped_groups_file

REST_GROUP = "rest"
log = logging.getLogger(__name__)


def _as_2d(name: str, x, dtype=np.float64) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} must be finite; row {bad[0]}, column {bad[1]} is {x[tuple(bad)]}")
    return x


def embed_pca(features, n_components: int, seed: int = 0) -> np.ndarray:
    """float32 (n, k): standardised features projected on their first k principal axes.

    k = min(n_components, n, D). Used when cfg.embedding == "pca" (pooled log-mel
    statistics instead of a model's penultimate layer), and before t-SNE.
    """
    x = _as_2d("features", features)
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 clips, got {x.shape[0]}")
    k = max(1, min(int(n_components), x.shape[0], x.shape[1]))
    from sklearn.decomposition import PCA  # sklearn where used: every Train worker imports this module
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(x)
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)


def resolve_groups(groups: dict | None, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """{group: sorted class indices}; classes in no group form the "rest" group.

    Raises ConfigError naming a class that is not in `classes`, a class named by two
    groups, or a group called "rest" (that name is kept for the left-over classes).
    """
    index = {name: i for i, name in enumerate(classes)}
    if not groups:
        return {"all": np.arange(len(classes))}
    if not isinstance(groups, dict):
        raise ConfigError(f"pipeline.label_spreading.groups must map a group name to a list of classes, got {groups!r}")
    out: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for gname, members in groups.items():
        where = f"pipeline.label_spreading.groups.{gname}"
        if gname == REST_GROUP:
            raise ConfigError(f"{where}: the name '{REST_GROUP}' is reserved for classes in no group")
        if isinstance(members, str) or not isinstance(members, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of class names, got {members!r}")
        idx = []
        for cls in members:
            if cls not in index:
                raise ConfigError(f"{where}: unknown class {cls!r}; it is not one of the dataset's {len(classes)} classes")
            if cls in owner and owner[cls] != gname:
                raise ConfigError(f"{where}: class {cls!r} is already in group {owner[cls]!r}; a class belongs to one group")
            owner[cls] = gname
            idx.append(index[cls])
        if idx:
            out[str(gname)] = np.array(sorted(set(idx)))
    rest = [i for i, name in enumerate(classes) if name not in owner]
    if rest:
        out[REST_GROUP] = np.array(rest)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _stratified_share(labels: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about `keep` rows, the same share of each class (at least one per class)."""
    frac = keep / labels.size
    rows = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(members.size * frac)))
        rows.append(rng.choice(members, size=min(take, members.size), replace=False))
    return np.sort(np.concatenate(rows))


def _spread_one_graph(x_lab, lab_class, x_noisy, cfg: LabelSpreadingConfig) -> np.ndarray:
    """Spread label (class index) per noisy row; -1 where no label reached it."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.semi_supervised import LabelSpreading

    x = np.concatenate([x_lab, x_noisy])
    y = np.concatenate([lab_class, np.full(len(x_noisy), -1, dtype=np.int64)])
    model = LabelSpreading(kernel="rbf", gamma=cfg.gamma, alpha=cfg.alpha, max_iter=cfg.max_iter)
    with warnings.catch_warnings():
        # hitting max_iter still yields a usable (if less settled) spread; divide warnings
        # come from rows no label reaches, handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        with np.errstate(divide="ignore", invalid="ignore"):
            model.fit(x, y)
    dist = model.label_distributions_[len(x_lab):]
    reached = np.all(np.isfinite(dist), axis=1) & (np.nan_to_num(dist).sum(axis=1) > 0)
    pred = model.classes_[np.nan_to_num(dist, nan=-1.0).argmax(axis=1)]
    return np.where(reached, pred, -1)


def spread_labels(
    emb_labelled,
    y_labelled,
    emb_noisy,
    y_noisy_given,
    cfg: LabelSpreadingConfig,
    classes: Sequence[str],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Spread labelled clips' labels to noisy clips; see the module docstring.

    Args:
        emb_labelled (n_lab, D), y_labelled (n_lab, C) 0/1: trusted clips.
        emb_noisy (n_noisy, D), y_noisy_given (n_noisy, C) 0/1: noisy clips and given labels.
        cfg: gamma, alpha, max_iter, groups, max_graph.  classes: the C class names.
        seed: chunking and sub-sampling order (only used when a graph would exceed max_graph).

    Returns:
        accepted: bool (n_noisy,), the spread label is one of the clip's given labels.
        spread: int (n_noisy,), the spread class index (from the accepting group when there
            is one, else from the clip's first group); -1 where none reached the clip
            (no given label, or no labelled clip in its group).
    """
    x_lab = _as_2d("emb_labelled", emb_labelled)
    x_noi = _as_2d("emb_noisy", emb_noisy)
    y_lab = np.asarray(y_labelled) > 0
    y_noi = np.asarray(y_noisy_given) > 0
    n_classes = len(classes)
    if y_lab.shape != (len(x_lab), n_classes) or y_noi.shape != (len(x_noi), n_classes):
        raise ValueError(
            f"label matrices must be (clips, {n_classes} classes) matching the embeddings; got "
            f"y_labelled {y_lab.shape} for {len(x_lab)} clips, y_noisy_given {y_noi.shape} for {len(x_noi)} clips"
        )
    if x_lab.shape[1] != x_noi.shape[1]:
        raise ValueError(f"embedding widths differ: labelled {x_lab.shape[1]}, noisy {x_noi.shape[1]}")
    if cfg.max_graph < 2:
        raise ConfigError(f"pipeline.label_spreading.max_graph must be at least 2, got {cfg.max_graph}")

    groups = resolve_groups(cfg.groups, classes)
    rng = np.random.default_rng(seed)
    accepted = np.zeros(len(x_noi), dtype=bool)
    spread = np.full(len(x_noi), -1, dtype=np.int64)
    one_class = {}
    for name, members in groups.items():
        if _labelled_classes(y_lab, members) == 1:
            one_class[name] = members
            continue
        _spread_group(members, np.flatnonzero(y_noi[:, members].any(axis=1)), x_lab, y_lab, x_noi, y_noi,
                      cfg, rng, accepted, spread)
    if one_class:
        # one labelled class would reach every node and accept every clip tagged with it,
        # whatever it sounds like: those clips are spread among all classes instead
        everything = np.arange(n_classes)
        _warn_one_class_groups(one_class, classes)
        in_one_class = y_noi[:, np.concatenate(list(one_class.values()))].any(axis=1)
        if _labelled_classes(y_lab, everything) >= 2:
            _spread_group(everything, np.flatnonzero(in_one_class), x_lab, y_lab, x_noi, y_noi,
                          cfg, rng, accepted, spread)
    return accepted, spread


def _labelled_classes(y_lab: np.ndarray, members: np.ndarray) -> int:
    """How many of a group's classes some labelled clip carries."""
    return int(y_lab[:, members].any(axis=0).sum())


_warned_one_class: set = set()


def _warn_one_class_groups(one_class: dict, classes: Sequence[str]) -> None:
    """Once per set of groups (spread_labels runs once per fold)."""
    key = tuple(sorted(one_class))
    if key in _warned_one_class:
        return
    _warned_one_class.add(key)
    names = {g: [classes[i] for i in members] for g, members in one_class.items()}
    log.warning("pipeline.label_spreading: group(s) %s have labelled clips of one class only, so spreading "
                "within them would accept every noisy clip tagged with their class; their noisy clips are spread "
                "among all classes instead (none is accepted by spreading when the labelled clips hold one class "
                "in all). Merge such a group into another.", names)


def _spread_group(members, noi_rows, x_lab, y_lab, x_noi, y_noi, cfg: LabelSpreadingConfig,
                  rng: np.random.Generator, accepted: np.ndarray, spread: np.ndarray) -> None:
    """Spread the labels of `members` to the noisy rows `noi_rows`; updates accepted and spread."""
    lab_rows = np.flatnonzero(y_lab[:, members].any(axis=1))
    if lab_rows.size == 0 or noi_rows.size == 0:
        return  # nothing to spread from, or to
    # first in-group label of each labelled clip (members are sorted by class index)
    lab_class = members[y_lab[np.ix_(lab_rows, members)].argmax(axis=1)]
    x_group = _normalise(np.concatenate([x_lab[lab_rows], x_noi[noi_rows]]))
    xl, xn = x_group[: lab_rows.size], x_group[lab_rows.size:]

    lab_cap = max(1, (3 * cfg.max_graph) // 4)
    if xl.shape[0] > lab_cap:
        keep = _stratified_share(lab_class, lab_cap, rng)
        xl, lab_class = xl[keep], lab_class[keep]
    chunk = max(1, cfg.max_graph - xl.shape[0])
    order = rng.permutation(noi_rows.size) if noi_rows.size > chunk else np.arange(noi_rows.size)
    for part in np.array_split(order, int(np.ceil(noi_rows.size / chunk))):
        pred = _spread_one_graph(xl, lab_class, xn[part], cfg)
        rows = noi_rows[part]
        hit = np.zeros(rows.size, dtype=bool)
        ok = pred >= 0
        hit[ok] = y_noi[rows[ok], pred[ok]]
        # record the accepting group's label; else the first group's guess
        take = ~accepted[rows] & (hit | (spread[rows] < 0))
        spread[rows[take]] = pred[take]
        accepted[rows] |= hit


def load_groups_file(name_or_path: str, classes: Sequence[str]) -> dict[str, list[str]]:
    """Class groups from a YAML file ({group: [class, ...]}) or a shipped one by name
    (`esc50`: ESC-50's five major categories; `fsdkaggle2019`: AudioSet's top levels).

    A file describes an ontology, so classes the dataset lacks are dropped (a 10-class
    subset can use the 50-class file); a file that names none of the dataset's classes is
    an error, since spreading would then run in one group without saying so."""
    path = shipped_groups_file(name_or_path) or Path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_GROUPS.glob("*.yaml")))
        raise ConfigError(f"pipeline.label_spreading.groups_file: {name_or_path} is neither a file nor a "
                          f"shipped group set ({shipped})")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of group name -> list of class names")
    known = set(classes)
    groups = {str(g): [c for c in members if c in known] for g, members in data.items()}
    groups = {g: members for g, members in groups.items() if members}
    if not groups:
        raise ConfigError(f"{path}: names none of the dataset's {len(known)} classes "
                          f"(e.g. {sorted(known)[:3]}); is it the right group file?")
    return groups
