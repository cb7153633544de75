"""Multi-label stratified folds: coverage, balance, determinism, clear errors."""
import numpy as np
import pytest

from raytag.config import Config, ConfigError
from raytag.errors import RaytagError
from raytag.training.folds import make_folds


def _labels(n=400, c=8, seed=0):
    rng = np.random.default_rng(seed)
    p = np.linspace(0.05, 0.4, c)  # rare and common classes
    return (rng.random((n, c)) < p).astype(np.float32)


def test_every_clip_in_exactly_one_fold():
    y = _labels()
    folds = make_folds(y, 5, seed=0)
    assert folds.shape == (len(y),) and folds.dtype.kind == "i"
    assert set(np.unique(folds)) == set(range(5))
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 0.1 * len(y) / 5 + 2


def test_folds_balanced_per_class():
    y = _labels()
    folds = make_folds(y, 5, seed=0)
    for c in range(y.shape[1]):
        per_fold = np.array([y[folds == k, c].sum() for k in range(5)])
        # stratified: each fold holds about a fifth of this class's positives
        assert np.abs(per_fold - y[:, c].sum() / 5).max() <= 2, (c, per_fold)


def test_better_balanced_than_random_assignment():
    y = _labels(seed=1)
    rng = np.random.default_rng(0)
    spread = lambda f: sum(np.ptp([y[f == k, c].sum() for k in range(5)]) for c in range(y.shape[1]))
    assert spread(make_folds(y, 5, 0)) < spread(rng.integers(0, 5, len(y)))


def test_deterministic_with_seed():
    y = _labels()
    np.testing.assert_array_equal(make_folds(y, 4, seed=3), make_folds(y, 4, seed=3))
    assert not np.array_equal(make_folds(y, 4, seed=3), make_folds(y, 4, seed=4))


def test_single_class_and_unlabelled_rows():
    y = np.zeros((20, 1))
    y[::3] = 1
    folds = make_folds(y, 2, seed=0)
    assert set(folds) == {0, 1}
    assert abs(y[folds == 0].sum() - y[folds == 1].sum()) <= 1


def test_fewer_clips_than_folds_is_a_clear_error():
    with pytest.raises(RaytagError, match="3 labelled clips cannot be split into 5 folds"):
        make_folds(np.eye(3), 5, seed=0)


def test_groups_stay_whole_and_classes_stay_balanced():
    y = _labels(n=600)
    groups = np.repeat(np.arange(200), 3)  # three takes of each recording
    folds = make_folds(y, 5, seed=0, groups=groups)
    for g in range(200):
        assert len(set(folds[groups == g])) == 1, g
    assert set(folds) == set(range(5))
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 0.1 * len(y) / 5 + 6
    # ungrouped, the same takes land in different folds (that is the leak groups prevent)
    plain = make_folds(y, 5, seed=0)
    assert sum(len(set(plain[groups == g])) > 1 for g in range(200)) > 100


def test_singleton_groups_give_valid_stratified_folds():
    y = _labels()
    folds = make_folds(y, 5, seed=0, groups=[f"clip{i}" for i in range(len(y))])
    for c in range(y.shape[1]):
        per_fold = np.array([y[folds == k, c].sum() for k in range(5)])
        assert np.abs(per_fold - y[:, c].sum() / 5).max() <= 2, (c, per_fold)


def test_fewer_groups_than_folds_is_a_clear_error():
    with pytest.raises(RaytagError, match="form 3 groups .* too few for 5 folds"):
        make_folds(_labels(n=30), 5, seed=0, groups=np.arange(30) % 3)


def test_read_clip_groups(tmp_path, caplog):
    from raytag.training.folds import read_clip_groups

    (tmp_path / "groups.csv").write_text("fname,group,note\na.wav,r1,x\nb.wav,r1,y\nc.wav,r2,z\n")
    # relative to the dataset folder; an unlisted clip is its own group, with a warning
    groups = read_clip_groups("groups.csv", ["a.wav", "b.wav", "c.wav", "d.wav"], root=tmp_path)
    assert groups[:3] == ["r1", "r1", "r2"] and groups[3] not in {"r1", "r2"}
    assert "1 of 4 curated clips are not in" in caplog.text


@pytest.mark.parametrize(
    "text, match",
    [
        ("fname,recording\na.wav,r1\n", "needs the columns fname and group; it lacks group"),
        ("fname,group\nz.wav,r1\n", "lists none of the 2 curated clips"),
        ("fname,group\na.wav,r1\na.wav,r2\n", "lists 1 clip.s. twice"),
    ],
)
def test_bad_clip_groups_file_is_a_clear_error(tmp_path, text, match):
    from raytag.training.folds import read_clip_groups

    (tmp_path / "g.csv").write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_clip_groups(tmp_path / "g.csv", ["a.wav", "b.wav"])
    with pytest.raises(ConfigError, match="no such file"):
        read_clip_groups("missing.csv", ["a.wav"], root=tmp_path)


@pytest.fixture(scope="module")
def demo_dataset(demo_data):
    from raytag.data.layouts import load_dataset

    features = Config().features
    return load_dataset(demo_data, sample_rate=features.sample_rate, features=features)


def _plan(cfg: Config, dataset):
    """build_plan with a stand-in feature store: the plan reads only its clip ids and shape."""
    from types import SimpleNamespace

    from raytag.training.plan import build_plan

    bins = np.zeros((1, 8), np.float32)
    store = SimpleNamespace(clip_ids=list(dataset.clips["clip_id"]), shape=(1, 8), mean=bins, std=bins + 1, path=".")
    return build_plan(cfg, dataset, store)


def test_plan_keeps_each_clip_group_in_one_fold(demo_dataset, tmp_path):
    """`cv.clip_groups` reaches the folds a run trains on (the plan, built on the driver)."""
    cfg = Config.from_dict({"cv": {"n_folds": 3, "clip_groups": str(tmp_path / "groups.csv")}})
    fnames = sorted(demo_dataset.split("curated")["fname"])
    group = {f: f"rec{i // 4}" for i, f in enumerate(fnames)}  # four takes per recording
    (tmp_path / "groups.csv").write_text("fname,group\n" + "".join(f"{f},{g}\n" for f, g in group.items()))
    plan = _plan(cfg, demo_dataset)
    fold_of = dict(zip(plan.curated_ids, plan.curated_fold))
    by_group: dict[str, set] = {}
    for fname in fnames:
        by_group.setdefault(group[fname], set()).add(fold_of[f"curated/{fname}"])
    assert all(len(folds) == 1 for folds in by_group.values())
    assert set(plan.curated_fold) == {0, 1, 2}


def test_refit_is_one_more_model_with_nothing_held_out(demo_dataset):
    plan = _plan(Config.from_dict({"cv": {"n_folds": 3, "refit": True}}), demo_dataset)
    assert plan.folds == [0, 1, 2] and plan.model_folds == [0, 1, 2, 3]
    assert 3 not in set(plan.curated_fold)  # so the refit model trains on every curated clip


NOISY_FOLDS = {"cv": {"n_folds": 3, "noisy_folds": True},
               "pipeline": {"warmup": {"enabled": False}, "finetune": {"noisy": "all"}}}


def test_noisy_folds_hold_each_noisy_clip_out_of_one_fold_model(demo_dataset):
    """cv.noisy_folds: every noisy clip lands in one fold, whose model neither trains on it
    (fine-tune set) nor filters or pseudo-labels it; the refit model trains on all of them."""
    import torch

    from raytag.training.run_state import _Context
    from raytag.training.steps import Step

    cfg = Config.from_dict({**NOISY_FOLDS, "cv": {**NOISY_FOLDS["cv"], "refit": True}})
    plan = _plan(cfg, demo_dataset)
    assert plan.noisy_fold.shape == (len(plan.noisy_ids),) and set(plan.noisy_fold) == {0, 1, 2}
    ctx = _Context(plan, cfg, None, 0, 1, torch.device("cpu"), None, n_steps=1)
    held = {k: ctx.noisy_ids(k, held_out=True) for k in plan.folds}
    assert sorted(sum(held.values(), [])) == sorted(plan.noisy_ids)  # each clip held out exactly once
    for k in plan.folds:
        trained = ctx.training_set(Step(kind="finetune", fold=k, epochs=1))
        assert not set(trained.clip_ids) & set(held[k])
        assert set(ctx.noisy_ids(k)) == set(plan.noisy_ids) - set(held[k])
        assert len(trained) == (plan.curated_fold != k).sum() + len(plan.noisy_ids) - len(held[k])
    refit = ctx.training_set(Step(kind="finetune", fold=plan.refit_fold, epochs=1))
    assert set(plan.noisy_ids) <= set(refit.clip_ids) and ctx.noisy_ids(plan.refit_fold, held_out=True) == []
    # without the switch nothing is held out
    plain = _plan(Config.from_dict({"cv": {"n_folds": 3}}), demo_dataset)
    assert plain.noisy_fold is None
    assert _Context(plain, cfg, None, 0, 1, torch.device("cpu"), None, 1).noisy_ids(0, held_out=True) == []


def test_noisy_folds_keep_clip_groups_whole_and_refuse_a_warmup(demo_dataset, tmp_path):
    fnames = sorted(demo_dataset.split("noisy")["fname"])
    group = {f: f"rec{i // 5}" for i, f in enumerate(fnames)}  # five noisy clips per recording
    (tmp_path / "groups.csv").write_text("fname,group\n" + "".join(f"{f},{g}\n" for f, g in group.items()))
    cfg = Config.from_dict({**NOISY_FOLDS, "cv": {**NOISY_FOLDS["cv"], "clip_groups": str(tmp_path / "groups.csv")}})
    with pytest.raises(ConfigError, match="lists none of the .* curated clips"):
        _plan(cfg, demo_dataset)  # the curated clips still need the file to list them
    curated = sorted(demo_dataset.split("curated")["fname"])
    with (tmp_path / "groups.csv").open("a") as f:
        f.write("".join(f"{name},cur{i}\n" for i, name in enumerate(curated)))
    plan = _plan(cfg, demo_dataset)
    by_group: dict[str, set] = {}
    for cid, fold in zip(plan.noisy_ids, plan.noisy_fold):
        by_group.setdefault(group[cid.split("/", 1)[1]], set()).add(int(fold))
    assert all(len(folds) == 1 for folds in by_group.values())
    # a file of the curated clips alone: the noisy clips are split one by one
    (tmp_path / "cur.csv").write_text("fname,group\n" + "".join(f"{n},cur{i}\n" for i, n in enumerate(curated)))
    alone = _plan(Config.from_dict({**NOISY_FOLDS, "cv": {**NOISY_FOLDS["cv"], "clip_groups": str(tmp_path / "cur.csv")}}),
                  demo_dataset)
    assert set(alone.noisy_fold) == {0, 1, 2}
    with pytest.raises(ConfigError, match="cv.noisy_folds: the warm-up trains on noisy clips"):
        Config.from_dict({"cv": {"noisy_folds": True}, "pipeline": {"warmup": {"enabled": True, "epochs": 2}}})


def test_a_warmup_with_no_noisy_clips_is_refused_when_planned(demo_dataset):
    """A curated-only dataset (no noisy clip usable) with the warm-up on: refused on the driver,
    not as "a training step has no clips" in a worker."""
    from types import SimpleNamespace

    from raytag.training.plan import build_plan

    curated = list(demo_dataset.split("curated")["clip_id"]) + list(demo_dataset.split("test")["clip_id"])
    bins = np.zeros((1, 8), np.float32)
    store = SimpleNamespace(clip_ids=curated, shape=(1, 8), mean=bins, std=bins + 1, path=".")
    cfg = Config.from_dict({"cv": {"n_folds": 3}, "pipeline": {"warmup": {"enabled": True, "epochs": 2}}})
    with pytest.raises(ConfigError, match="pipeline.warmup .*no usable noisy clips"):
        build_plan(cfg, demo_dataset, store)
    off = Config.from_dict({"cv": {"n_folds": 3}, "pipeline": {"warmup": {"enabled": False}}})
    assert build_plan(off, demo_dataset, store).noisy_ids == []


def test_a_filter_after_a_finetune_on_all_noisy_clips_is_warned_of(demo_dataset, caplog):
    """The filter model already fitted the noisy clips' given labels: it accepts nearly all."""
    with caplog.at_level("WARNING", logger="raytag.training.plan"):
        _plan(Config.from_dict({"cv": {"n_folds": 3}, "pipeline": {"finetune": {"noisy": "all"},
                                                                   "filter": {"enabled": True}}}), demo_dataset)
    assert "pipeline.finetune.noisy: all" in caplog.text and "pipeline.filter" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="raytag.training.plan"):
        _plan(Config.from_dict({"cv": {"n_folds": 3}, "pipeline": {"filter": {"enabled": True}}}), demo_dataset)
    assert "finetune.noisy" not in caplog.text


def test_a_noisy_clip_takes_the_fold_of_its_curated_siblings_group(demo_dataset, tmp_path, caplog):
    """cv.clip_groups with groups spanning both splits (FSDKaggle2018: one train.csv): a noisy
    clip of a group goes to its curated siblings' fold, else that fold's model trains on a
    sibling of the clips it predicts. Without cv.noisy_folds the leak is warned of."""
    curated = sorted(demo_dataset.split("curated")["fname"])
    noisy = sorted(demo_dataset.split("noisy")["fname"])
    group = {f: f"rec{i}" for i, f in enumerate(curated)}
    group.update({f: f"rec{i}" for i, f in enumerate(noisy[:10])})  # ten noisy siblings of curated clips
    group.update({f: f"solo{i}" for i, f in enumerate(noisy[10:])})
    (tmp_path / "groups.csv").write_text("fname,group\n" + "".join(f"{f},{g}\n" for f, g in group.items()))
    cfg = Config.from_dict({**NOISY_FOLDS, "cv": {**NOISY_FOLDS["cv"], "clip_groups": str(tmp_path / "groups.csv")}})
    plan = _plan(cfg, demo_dataset)
    fold_of_group = {group[c.split("/", 1)[1]]: f for c, f in zip(plan.curated_ids, plan.curated_fold)}
    for cid, fold in zip(plan.noisy_ids, plan.noisy_fold):
        g = group[cid.split("/", 1)[1]]
        if g in fold_of_group:
            assert fold == fold_of_group[g], cid
    assert set(plan.noisy_fold) == {0, 1, 2}
    off = Config.from_dict({"cv": {"n_folds": 3, "clip_groups": str(tmp_path / "groups.csv")},
                            "pipeline": {"warmup": {"enabled": False}}})
    with caplog.at_level("WARNING", logger="raytag.training.plan"):
        assert _plan(off, demo_dataset).noisy_fold is None
    assert "hold both curated and noisy clips" in caplog.text and "cv.noisy_folds: true" in caplog.text


def _store_without(dataset, lost: list[str]):
    """A stand-in feature store that could not decode the clips `lost` (failed.csv rows)."""
    from types import SimpleNamespace

    import pandas as pd

    bins = np.zeros((1, 8), np.float32)
    clips = dataset.clips.set_index("clip_id")
    failed = pd.DataFrame({"file": [f"train_curated/{clips.loc[c, 'fname']}" for c in lost],
                           "reason": ["digital silence: all 16000 samples are 0"] * len(lost)})
    kept = [c for c in dataset.clips["clip_id"] if c not in set(lost)]
    return SimpleNamespace(clip_ids=kept, shape=(1, 8), mean=bins, std=bins + 1, path="/cache/store", failed=failed)


def test_no_curated_clip_decoded_points_at_failed_csv(demo_dataset):
    """Every curated clip failed in the store: "0 labelled clips cannot be split into 3 folds;
    lower cv.n_folds" could not help; the error now says they failed to decode and where."""
    from raytag.errors import DatasetError
    from raytag.training.plan import build_plan

    curated = list(demo_dataset.split("curated")["clip_id"])
    first = demo_dataset.split("curated")["fname"].iloc[0]
    with pytest.raises(DatasetError, match=rf"no curated clip could be decoded \({len(curated)} failed, e.g. "
                                           rf"train_curated/{first}: digital silence.*/cache/store/failed.csv"):
        build_plan(Config.from_dict({"cv": {"n_folds": 3}}), demo_dataset, _store_without(demo_dataset, curated))


def test_too_few_folds_after_decode_failures_says_how_many_failed(demo_dataset):
    from raytag.training.folds import FoldError
    from raytag.training.plan import build_plan

    curated = list(demo_dataset.split("curated")["clip_id"])
    store = _store_without(demo_dataset, curated[2:])
    with pytest.raises(FoldError, match=rf"2 labelled clips cannot be split into 3 folds.*{len(curated) - 2} "
                                        r"curated clips failed to decode .*/cache/store/failed.csv"):
        build_plan(Config.from_dict({"cv": {"n_folds": 3}}), demo_dataset, store)
