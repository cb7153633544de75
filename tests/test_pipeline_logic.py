"""Pure stage logic of the noisy-label pipeline (raytag.pipeline), on constructed data."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from raytag.config import ConfigError, LabelSpreadingConfig, NoisySelectionConfig, ThresholdSchedule
from raytag.metrics import lwlrap
from raytag.pipeline.filters import accept_by_rule, clip_lwlrap, combine_filters
from raytag.pipeline.pseudo import select_pseudo
from raytag.pipeline.report import filter_precision_recall, tsne_plot
from raytag.pipeline.schedule import lower_bound
from raytag.pipeline.selection import select_noisy_subset
from raytag.pipeline.spreading import embed_pca, resolve_groups, spread_labels


# ----------------------------------------------------------------------------- schedule
def test_linear_schedule_hits_seed_002_endpoints_and_rises_evenly():
    cfg = ThresholdSchedule(start=0.35, end=0.65, shape="linear")
    values = [lower_bound(i, 7, cfg) for i in range(7)]
    assert values[0] == pytest.approx(0.35) and values[-1] == pytest.approx(0.65)
    assert np.allclose(np.diff(values), 0.05)


def test_constant_and_cosine_schedules():
    const = ThresholdSchedule(start=0.4, end=0.9, shape="constant")
    assert {lower_bound(i, 4, const) for i in range(4)} == {0.4}
    cos = ThresholdSchedule(start=0.2, end=0.6, shape="cosine")
    lin = ThresholdSchedule(start=0.2, end=0.6, shape="linear")
    values = [lower_bound(i, 9, cos) for i in range(9)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.6)
    assert values[4] == pytest.approx(0.4)  # the half-cosine is symmetric about the middle
    assert np.all(np.diff(values) > 0)
    # slow at both ends, fast in the middle: below the line before the middle, above after
    assert values[1] < lower_bound(1, 9, lin) and values[7] > lower_bound(7, 9, lin)
    assert values[1] - values[0] < values[4] - values[3]


def test_schedule_single_round_and_bad_round():
    cfg = ThresholdSchedule()
    assert lower_bound(0, 1, cfg) == pytest.approx(cfg.start)
    with pytest.raises(ValueError, match="round_idx"):
        lower_bound(3, 3, cfg)
    with pytest.raises(ValueError, match="n_rounds"):
        lower_bound(0, 0, cfg)


# ----------------------------------------------------------------------------- pseudo labels
def test_select_pseudo_bounds_and_targets():
    probs = np.array([
        [0.30, 0.20, 0.10],  # top below lower: left out
        [0.50, 0.45, 0.10],  # taken, two confident classes
        [0.99, 0.01, 0.00],  # already sure (>= upper): left out
        [0.10, 0.97, 0.60],  # taken
        [0.40, 0.00, 0.00],  # exactly at lower: taken ([lower, upper))
        [0.00, 0.98, 0.00],  # exactly at upper: left out
    ])
    rows, targets = select_pseudo(probs, lower=0.4, upper=0.98)
    assert rows.tolist() == [False, True, False, True, True, False]
    assert targets.dtype == np.float32
    assert targets.tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]]
    # every taken row keeps its top class
    assert np.all(targets[rows, probs[rows].argmax(axis=1)] == 1)


def test_select_pseudo_upper_one_takes_certain_clips_and_rejects_bad_input():
    rows, _ = select_pseudo(np.array([[1.0, 0.0]]), 0.5, 1.0)
    assert rows.tolist() == [True]
    with pytest.raises(ValueError, match="lower < upper"):
        select_pseudo(np.zeros((2, 2)), 0.7, 0.6)
    with pytest.raises(ValueError, match="finite"):
        select_pseudo(np.array([[np.nan, 0.1]]), 0.3, 0.9)


# ----------------------------------------------------------------------------- filters
def test_clip_lwlrap_matches_sklearn_and_metrics_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 7)) < 0.3).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1
    scores = np.round(rng.random((60, 7)), 1)  # coarse: many ties
    per_clip = clip_lwlrap(y, scores)
    expected = [label_ranking_average_precision_score(y[i:i + 1], scores[i:i + 1]) for i in range(60)]
    assert np.allclose(per_clip, expected)
    weights = y.sum(axis=1)
    assert (per_clip * weights).sum() / weights.sum() == pytest.approx(lwlrap(y, scores))
    # the design notes' worked example
    truth = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]])
    s = np.array([[.9, .8, .1, .3], [.2, .1, .7, .4], [.6, .5, .4, .9]])
    assert np.allclose(clip_lwlrap(truth, s), [0.75, 0.25, 23 / 36])


def test_accept_rules_on_a_constructed_case():
    y = np.array([
        [1, 0, 0],  # model agrees strongly
        [1, 1, 0],  # second label weak
        [0, 0, 1],  # model prefers another class
        [0, 1, 0],  # right ranking, low probability (poorly calibrated model)
        [0, 0, 0],  # no given label: never accepted
    ])
    p = np.array([
        [0.90, 0.10, 0.05],
        [0.80, 0.30, 0.10],
        [0.70, 0.10, 0.20],
        [0.05, 0.20, 0.10],
        [0.90, 0.90, 0.90],
    ])
    assert accept_by_rule(y, p, "min_prob", 0.5).tolist() == [True, False, False, False, False]
    assert accept_by_rule(y, p, "min_prob", 0.25).tolist() == [True, True, False, False, False]
    # clip lwlrap: 1.0, 1.0, 0.5, 1.0 -> ranking, not calibration, decides
    assert accept_by_rule(y, p, "clip_lwlrap", 0.75).tolist() == [True, True, False, True, False]
    assert accept_by_rule(y, p, "clip_lwlrap", 0.5).tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match="unknown filter rule"):
        accept_by_rule(y, p, "vote", 0.5)
    with pytest.raises(ValueError, match="shape|classes"):
        accept_by_rule(y[:, :2], p, "min_prob", 0.5)


def test_combine_filters_truth_table():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    assert combine_filters(a, b, "or").tolist() == [True, True, True, False]
    assert combine_filters(a, b, "and").tolist() == [True, False, False, False]
    assert combine_filters(a, b, "only").tolist() == b.tolist()
    with pytest.raises(ValueError, match="combine"):
        combine_filters(a, b, "xor")
    with pytest.raises(ValueError, match="length"):
        combine_filters(a, b[:3], "or")


# ----------------------------------------------------------------------------- selection
def _noisy_table(rows):
    return pd.DataFrame(
        [{"clip_id": f"noisy/{i:03d}.wav", "labels": tuple(labs), "duration": dur} for i, (labs, dur) in enumerate(rows)]
    )


def test_selection_caps_single_label_window_and_median_preference():
    rows = []
    # class a: 9 clips, durations 1..9 s -> median 5; cap 3 -> 5, then 4 and 6
    rows += [(("a",), float(d)) for d in range(1, 10)]
    # class b: clips outside the window, a multi-label clip, an unknown duration
    rows += [(("b",), 0.5), (("b",), 16.0), (("b",), 3.0), (("a", "b"), 5.0), (("b",), float("nan"))]
    rows += [(("b",), 15.0), (("b",), 1.0)]  # window ends are included
    df = _noisy_table(rows)
    cfg = NoisySelectionConfig(max_per_class=3, min_seconds=1.0, max_seconds=15.0)
    chosen = select_noisy_subset(df, ["a", "b"], cfg, seed=0)
    by_id = df.set_index("clip_id")
    durations_a = sorted(by_id.loc[[c for c in chosen if by_id.loc[c, "labels"] == ("a",)], "duration"])
    assert durations_a == [4.0, 5.0, 6.0]
    b_chosen = [c for c in chosen if "b" in by_id.loc[c, "labels"]]
    assert sorted(by_id.loc[b_chosen, "duration"]) == [1.0, 3.0, 15.0]  # only the 3 eligible b clips
    assert all(len(by_id.loc[c, "labels"]) == 1 for c in chosen)
    assert chosen == sorted(chosen)  # input order


def test_selection_is_seeded_and_ties_depend_on_seed():
    df = _noisy_table([(("a",), 5.0)] * 20)  # all tied
    cfg = NoisySelectionConfig(max_per_class=5)
    picks = {tuple(select_noisy_subset(df, ["a"], cfg, seed=s)) for s in range(6)}
    assert len(picks) > 1
    assert select_noisy_subset(df, ["a"], cfg, seed=3) == select_noisy_subset(df, ["a"], cfg, seed=3)
    assert all(len(p) == 5 for p in picks)


def test_selection_multi_label_respects_every_cap():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    rows = []
    for _ in range(120):
        k = rng.integers(1, 3)
        rows.append((tuple(rng.choice(classes, size=k, replace=False)), float(rng.uniform(1, 15))))
    df = _noisy_table(rows)
    chosen = select_noisy_subset(df, classes, NoisySelectionConfig(single_label_only=False, max_per_class=10), seed=0)
    counts = pd.Series([lab for labs in df.set_index("clip_id").loc[chosen, "labels"] for lab in labs]).value_counts()
    assert counts.max() <= 10 and counts.min() >= 8  # turns keep classes close to the cap
    assert any(len(labs) == 2 for labs in df.set_index("clip_id").loc[chosen, "labels"])


def test_selection_errors_and_disabled():
    df = _noisy_table([(("a",), 2.0), (("zzz",), 2.0)])
    with pytest.raises(ValueError, match="zzz"):
        select_noisy_subset(df, ["a"], NoisySelectionConfig(), 0)
    with pytest.raises(ValueError, match="duration"):
        select_noisy_subset(df.drop(columns="duration"), ["a", "zzz"], NoisySelectionConfig(), 0)
    assert select_noisy_subset(df, ["a"], NoisySelectionConfig(enabled=False), 0) == df["clip_id"].tolist()


# ----------------------------------------------------------------------------- label spreading
def _blobs(n, centres, rng, noise=1.0):
    """Clips of C classes, each class two Gaussian blobs (two kinds of the same sound)."""
    y = rng.integers(0, centres.shape[0], n)
    blob = rng.integers(0, 2, n)
    return centres[y, blob] + noise * rng.normal(size=(n, centres.shape[2])), y


def _flip(y, frac, n_classes, rng):
    flipped = rng.random(y.size) < frac
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return given, flipped


@pytest.fixture(scope="module")
def blob_task():
    rng = np.random.default_rng(7)
    n_classes, dim = 5, 12
    centres = rng.normal(size=(n_classes, 2, dim)) * 1.2
    x_lab, y_lab = _blobs(150, centres, rng)
    x_noisy, y_true = _blobs(400, centres, rng)
    given, flipped = _flip(y_true, 0.4, n_classes, rng)
    eye = np.eye(n_classes)
    return dict(x_lab=x_lab, y_lab=eye[y_lab], x_noisy=x_noisy, y_true=y_true, given=eye[given],
                flipped=flipped, classes=[f"c{i}" for i in range(n_classes)])


def test_spreading_recovers_true_labels_and_rejects_flipped_ones(blob_task):
    t = blob_task
    accepted, spread = spread_labels(t["x_lab"], t["y_lab"], t["x_noisy"], t["given"], LabelSpreadingConfig(), t["classes"])
    assert (spread == t["y_true"]).mean() > 0.75  # chance is 0.2
    assert accepted[~t["flipped"]].mean() > 0.75
    assert accepted[t["flipped"]].mean() < 0.25
    # accepted clips are much cleaner than the noisy pool (60 % clean)
    assert (~t["flipped"][accepted]).mean() > 0.9


def test_spreading_in_chunks_agrees_and_ignores_embedding_scale(blob_task):
    t = blob_task
    args = (t["x_lab"], t["y_lab"], t["x_noisy"], t["given"])
    whole, _ = spread_labels(*args, LabelSpreadingConfig(), t["classes"])
    chunked, spread = spread_labels(*args, LabelSpreadingConfig(max_graph=250), t["classes"], seed=1)
    assert (whole == chunked).mean() > 0.9
    assert (spread == t["y_true"]).mean() > 0.7
    # standardised and unit-normalised: the scale of the embedding does not matter
    scaled, _ = spread_labels(t["x_lab"] * 1e3 + 5, t["y_lab"], t["x_noisy"] * 1e3 + 5, t["given"],
                              LabelSpreadingConfig(), t["classes"])
    assert np.array_equal(whole, scaled)


def test_spreading_groups_keep_labels_within_the_group(blob_task):
    t = blob_task
    cfg = LabelSpreadingConfig(groups={"low": ["c0", "c1"]})
    accepted, spread = spread_labels(t["x_lab"], t["y_lab"], t["x_noisy"], t["given"], cfg, t["classes"])
    given_idx = t["given"].argmax(axis=1)
    in_low = given_idx <= 1
    assert set(spread[in_low]) <= {0, 1}
    assert set(spread[~in_low]) <= {2, 3, 4}  # the "rest" group
    # a group only tells its members apart: clean clips are still accepted
    assert accepted[~t["flipped"]].mean() > 0.75


def test_spreading_group_validation_and_unlabelled_clips():
    classes = ["Bark", "Meow", "Cello"]
    groups = resolve_groups({"music": ["Cello"]}, classes)
    assert {k: v.tolist() for k, v in groups.items()} == {"music": [2], "rest": [0, 1]}
    with pytest.raises(ConfigError, match="'Violin'"):
        resolve_groups({"music": ["Cello", "Violin"]}, classes)
    with pytest.raises(ConfigError, match="already in group"):
        resolve_groups({"music": ["Cello"], "pets": ["Bark", "Cello"]}, classes)
    rng = np.random.default_rng(0)
    y_noisy = np.array([[1, 0, 0], [0, 0, 0]])
    accepted, spread = spread_labels(rng.normal(size=(6, 4)), np.eye(3)[[0, 1, 2, 0, 1, 2]], rng.normal(size=(2, 4)),
                                     y_noisy, LabelSpreadingConfig(), classes)
    assert not accepted[1] and spread[1] == -1  # no given label: nothing to agree with


def test_embed_pca_shape():
    x = np.random.default_rng(0).normal(size=(30, 10))
    emb = embed_pca(x, 4, seed=0)
    assert emb.shape == (30, 4) and emb.dtype == np.float32
    assert embed_pca(x, 64, seed=0).shape == (30, 10)
    assert np.var(emb[:, 0]) >= np.var(emb[:, 3])


# ----------------------------------------------------------------------------- report
def test_filter_precision_recall_known_case():
    given = {"a": ("x",), "b": ("y", "z"), "c": ("x",), "d": "x,y", "e": ("z",)}
    truth = {"a": ("x",), "b": ("y",), "c": ("x",), "d": ("y", "x")}  # e has no truth
    out = filter_precision_recall(["a", "b", "e"], given, truth)
    # correct given: a, c, d; accepted and scored: a (correct), b (extra label)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["base_precision"] == pytest.approx(0.75)
    assert out["n_accepted"] == 3 and out["n_accepted_scored"] == 2 and out["n_without_truth"] == 1
    assert out["n_correct_given"] == 3 and out["n_correct_accepted"] == 1
    # labels: accepted pairs a:x ok, b:y ok, b:z wrong -> 2/3; correct pairs overall 5
    assert out["label_precision"] == pytest.approx(2 / 3)
    assert out["label_recall"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="not in the noisy pool"):
        filter_precision_recall(["q"], given, truth)
    assert math.isnan(filter_precision_recall([], given, truth)["precision"])


def test_tsne_plot_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 2, 20)) * 3
    x, y = _blobs(60, centres, rng)
    labels_before = np.where(rng.random(60) < 0.2, -1, y)
    path = tsne_plot(x, labels_before, x[:40], y[:40], ["a", "b", "c"], tmp_path / "sub" / "tsne.png", "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="class indices"):
        tsne_plot(x, y + 5, x, y, ["a", "b", "c"], tmp_path / "bad.png", "bad")


def test_shipped_group_files_cover_their_datasets_and_subsets():
    from raytag.config import ConfigError
    from raytag.pipeline.spreading import load_groups_file, resolve_groups

    esc = load_groups_file("esc50", ["dog", "rain", "siren", "clock_tick", "laughing"])
    assert esc == {"animals": ["dog"], "natural_soundscapes_and_water": ["rain"], "human_non_speech": ["laughing"],
                   "interior_domestic": ["clock_tick"], "exterior_urban": ["siren"]}
    assert set(resolve_groups(esc, ["dog", "rain", "siren", "clock_tick", "laughing"])) == set(esc)
    fat = load_groups_file("fsdkaggle2019", ["Bark", "Accordion", "Zipper_(clothing)"])
    assert fat == {"animal": ["Bark"], "music": ["Accordion"], "sounds_of_things": ["Zipper_(clothing)"]}
    with pytest.raises(ConfigError, match="names none of the dataset"):
        load_groups_file("esc50", ["Bark"])
    with pytest.raises(ConfigError, match="neither a file nor a shipped group set"):
        load_groups_file("audioset_full", ["Bark"])


def test_quantile_bounds_take_a_share_of_clips_whatever_the_calibration():
    from raytag.pipeline.pseudo import quantile_bounds

    rng = np.random.default_rng(0)
    shy = rng.random((1000, 10)) * 0.1  # an under-confident model: top probabilities below 0.1
    lower, upper = quantile_bounds(shy, 0.35, 0.98)
    rows, targets = select_pseudo(shy, lower, upper)
    assert 0.60 < rows.mean() < 0.66  # about 63% = 98% - 35% of the clips
    assert rows.sum() == 0 or targets[rows].max(axis=1).min() == 1.0
    assert select_pseudo(shy, 0.35, 0.98)[0].sum() == 0  # fixed bounds take nothing
    assert quantile_bounds(shy, 0.5, 1.0)[1] == 1.0
    with pytest.raises(ValueError):
        quantile_bounds(shy, 0.7, 0.5)


def test_a_one_class_group_does_not_accept_every_clip_of_its_class(caplog):
    """Ten noisy clips tagged "a" that sit in the "b" cluster: spreading within the group {a}
    alone would reach them with "a" and accept all ten; among all classes they get "b"."""
    rng = np.random.default_rng(0)
    centre = {"a": np.full(6, 3.0), "b": np.full(6, -3.0)}
    x_lab = np.concatenate([centre["a"] + rng.normal(size=(20, 6)), centre["b"] + rng.normal(size=(20, 6))])
    y_lab = np.repeat(np.eye(2), 20, axis=0)
    x_noisy = centre["b"] + rng.normal(size=(10, 6))
    y_noisy = np.tile([1.0, 0.0], (10, 1))
    classes = ["a", "b"]
    plain, _ = spread_labels(x_lab, y_lab, x_noisy, y_noisy, LabelSpreadingConfig(), classes)
    with caplog.at_level("WARNING", logger="raytag.pipeline.spreading"):
        grouped, spread = spread_labels(x_lab, y_lab, x_noisy, y_noisy,
                                        LabelSpreadingConfig(groups={"g1": ["a"], "g2": ["b"]}), classes)
    assert plain.sum() == 0 and grouped.sum() == 0 and set(spread) == {1}
    assert "one class only" in caplog.text and "'g1'" in caplog.text
    # labelled clips of one class in all: spreading accepts none rather than all
    only_a, _ = spread_labels(x_lab[:20], y_lab[:20], x_noisy, y_noisy, LabelSpreadingConfig(), classes)
    assert only_a.sum() == 0


def test_quantile_bounds_give_an_under_confident_model_several_labels_a_clip_by_design():
    """Documented design choice (pseudo.quantile_bounds): the quantile-derived lower bound is
    also the per-class target cut, so a low bound makes every class above it positive."""
    from raytag.pipeline.pseudo import quantile_bounds

    rng = np.random.default_rng(1)
    shy = rng.uniform(0.0, 0.3, size=(500, 8))  # an under-confident model
    lower, upper = quantile_bounds(shy, 0.35, 0.98)
    assert lower < 0.3
    rows, targets = select_pseudo(shy, lower, upper)
    assert targets[rows].sum(axis=1).mean() > 1.3  # several positive labels per taken clip, not one
