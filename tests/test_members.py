"""`raytag train` with `members`: two model families trained on the same folds, combined clip
by clip into the run's outputs and an artifact that predicts what the run scored."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytag.config import Config, ConfigError
from raytag.metrics import lwlrap
from raytag.training.runner import fit_pipeline

MEMBERS = {
    "name": "pair",
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 16}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 1},
    "cv": {"n_folds": 2},
    "inference": {"overlap": 0.0},
    "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 1}, "filter": {"enabled": False},
                 "pseudo": {"enabled": False}},
    "members": [{"name": "cnn", "set": {}},
                {"name": "wide", "set": {"model.width": 12, "model.params.hidden": 0}}],
    "combine": "geometric",
}


def _geometric(stack):
    return np.exp(np.mean(np.log(np.clip(np.asarray(stack, np.float64), 1e-6, 1.0)), axis=0))


def _labels(truth_csv: Path, ids, classes):
    labels = pd.read_csv(truth_csv, keep_default_na=False).set_index("clip_id")["labels"]
    return np.array([[c in str(labels[i]).split(",") for c in classes] for i in ids], np.float32)


@pytest.fixture(scope="module")
def pair_run(ray_session, demo_data, tmp_path_factory):
    from raytag.ensemble.members import fit_members

    out = tmp_path_factory.mktemp("members")
    return fit_members(Config.from_dict(MEMBERS), demo_data, str(out / "results"), "pair",
                       feature_cache=str(out / "cache"), progress=False), out


@pytest.mark.ray
def test_members_train_on_the_same_folds_and_combine_clip_by_clip(pair_run):
    result, _ = pair_run
    run = Path(result.run_dir)
    member_out = {m: run / "members" / m / "outputs" for m in ("cnn", "wide")}
    oofs = {m: pd.read_parquet(o / "oof.parquet").set_index("clip_id").sort_index() for m, o in member_out.items()}
    classes = [c for c in oofs["cnn"].columns if c not in ("fold", "run", "stage")]
    assert (oofs["cnn"]["fold"] == oofs["wide"]["fold"]).all()  # one fold per clip for both
    assert not np.allclose(oofs["cnn"][classes], oofs["wide"][classes])  # two different models
    combined = pd.read_parquet(run / "outputs" / "oof.parquet").set_index("clip_id").sort_index()
    expected = _geometric([oofs[m][classes].to_numpy() for m in oofs])
    np.testing.assert_allclose(combined[classes].to_numpy(), expected, atol=1e-6)
    y = _labels(run / "outputs" / "oof_truth.csv", combined.index, classes)
    assert result.metrics["cv_lwlrap"] == pytest.approx(lwlrap(y, expected), abs=1e-6)
    assert set(result.metrics["fold_lwlrap"]) == {"0", "1"}
    assert set(result.metrics["members"]) == {"cnn", "wide"}
    for m, o in member_out.items():  # each member's own scores, as its own run wrote them
        assert result.metrics["members"][m]["cv_lwlrap"] == json.loads((o / "metrics.json").read_text())["cv_lwlrap"]
    # test: each member's fold models averaged, then combined (what the artifact does)
    tests = [pd.read_parquet(o / "test.parquet").groupby("clip_id")[classes].mean().sort_index()
             for o in member_out.values()]
    test = pd.read_parquet(run / "outputs" / "test.parquet").set_index("clip_id").sort_index()
    np.testing.assert_allclose(test[classes].to_numpy(), _geometric([t.to_numpy() for t in tests]), atol=1e-6)
    submission = pd.read_csv(run / "outputs" / "submission.csv")
    assert len(submission) == len(test) and list(submission.columns[1:]) == classes
    stages = pd.read_csv(run / "outputs" / "stages.csv")
    assert len(stages) == 3 and stages["stage"].iloc[-1].startswith("geometric mean")


@pytest.mark.ray
def test_the_members_artifact_predicts_what_the_run_scored(pair_run, demo_data):
    from raytag.ensemble.artifact import load_artifact

    result, _ = pair_run
    art = load_artifact(result.metrics["artifact"])
    assert art.combiner == "geometric" and [m.name for m in art.members] == ["cnn", "wide"]
    assert all(len(m.models) == 2 for m in art.members)  # both folds of each member
    test = pd.read_parquet(Path(result.outputs_dir) / "test.parquet").set_index("clip_id").sort_index()
    ids = list(test.index[:8])
    probs, failures = art.predict_files([Path(demo_data) / "test" / c.split("/", 1)[1] for c in ids])
    assert failures.empty
    # float32 features from the audio against the float16 store the workers read (test_training.py)
    np.testing.assert_allclose(probs.to_numpy(), test.loc[ids, art.classes].to_numpy(), atol=1e-4)


def test_members_are_checked_when_the_config_loads():
    base = {k: v for k, v in MEMBERS.items() if k not in ("members",)}
    cases = {
        "used twice": [{"name": "a"}, {"name": "a"}],
        "cannot differ between members": [{"name": "a"}, {"name": "b", "set": {"cv.n_folds": 3}}],
        "unknown setting": [{"name": "a"}, {"name": "b", "set": {"train.lrr": 1}}],
        "folder name": [{"name": "a/b"}, {"name": "c"}],
        "two or more": [{"name": "a"}],
    }
    for message, members in cases.items():
        with pytest.raises(ConfigError, match=message):
            Config.from_dict({**base, "members": members})


def test_a_pipeline_run_refuses_members(tmp_path):
    """A sweep trial (fit_pipeline) trains one family: members there would be silently ignored."""
    with pytest.raises(ConfigError, match="one model family"):
        fit_pipeline(Config.from_dict(MEMBERS), tmp_path, str(tmp_path / "results"), "x")


def test_the_default_config_trains_two_model_families_on_two_front_ends():
    cfg = Config.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    members = {name: (c.model.name, c.features.kind) for name, c in cfg.member_configs()}
    assert members == {"resnet18": ("resnet18", "logmel"), "vgg_small": ("vgg_small", "logmel"),
                       "vgg_pcen": ("vgg_small", "pcen")} and cfg.combine == "geometric"


def _flat(cfg: Config) -> dict:
    from raytag.search.space import flatten_settings  # Config sections -> dotted keys, as a space's `base`

    return flatten_settings(cfg.to_dict(), "config", "")


def test_the_taught_config_is_the_defaults_vgg_members_taught_by_it_for_60_epochs():
    """configs/taught.yaml's comment quotes the two taught runs measured: each member must be the
    default's member of that name, with the default's run as teacher and 60 epochs, and nothing else."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    default = dict(Config.from_yaml(configs / "default.yaml").member_configs())
    taught = dict(Config.from_yaml(configs / "taught.yaml").member_configs())
    assert list(taught) == ["vgg_small", "vgg_pcen"]
    off_stages = ("pipeline.warmup.", "pipeline.filter.", "pipeline.pseudo.", "pipeline.label_spreading.")
    for name, cfg in taught.items():
        want, got = _flat(default[name]), _flat(cfg)
        changed = {k for k in want.keys() | got.keys() if want.get(k) != got.get(k)
                   and not (k.startswith(off_stages) and not k.endswith(".enabled"))}
        assert changed == {"name", "train.noisy_teacher.artifact", "pipeline.finetune.epochs"}, name
        assert (got["train.noisy_teacher.artifact"], got["pipeline.finetune.epochs"]) == ("results/default/artifact", 60)
        assert not any(got[k] for k in got if k.startswith(off_stages) and k.endswith(".enabled"))


def test_members_whose_front_ends_keep_other_clips_are_refused_before_any_trains(monkeypatch, tmp_path):
    """A longer frame (n_fft) drops short clips: the members' folds would differ, found before
    only after every member trained. Clips are read from headers (faked here), once per rule."""
    from types import SimpleNamespace

    from raytag.ensemble import members
    from raytag.errors import RaytagError

    def fake_dataset(root, sample_rate, features):
        kept = [c for c, seconds in (("curated/a.wav", 1.0), ("curated/short.wav", 0.1))
                if seconds * sample_rate >= features.n_fft]
        return SimpleNamespace(split=lambda name: pd.DataFrame({"clip_id": kept}))

    trained, loads = [], []
    monkeypatch.setattr(members, "materialize_data", lambda data, progress=False: data)
    monkeypatch.setattr(members, "load_dataset", lambda *a, **k: loads.append(1) or fake_dataset(*a, **k))
    monkeypatch.setattr(members, "fit_pipeline", lambda cfg, *a, **k: trained.append(cfg.model.name))
    cfg = Config.from_dict({"members": [{"name": "small", "set": {"features.n_fft": 1024}},
                                        {"name": "wide", "set": {"features.n_fft": 4096}}]})
    with pytest.raises(RaytagError, match=r"member wide: its features.n_fft 4096 .* drops 1 curated clip.*curated/short.wav"):
        members.fit_members(cfg, "unused", str(tmp_path), "run", progress=False)
    assert trained == [] and len(loads) == 2
    loads.clear()
    same = Config.from_dict({"members": [{"name": "a"}, {"name": "b", "set": {"model.width": 16}}]})
    members._check_members_keep_the_same_clips(same.member_configs(), "unused")
    assert loads == []  # one rule: nothing read


def test_members_that_kept_other_test_clips_are_combined_on_the_clips_they_share(tmp_path):
    """A test clip one member's front end (or store) could not use is missing from that
    member's test.parquet: combining crashed with a KeyError after every member had trained,
    and again on every rerun. Now the shared clips are combined and the others listed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytag.ensemble.members import write_member_outputs
    from test_ensemble import make_truth
    from test_train_map3 import _member_runs

    runs = _member_runs(tmp_path, "fat2019", make_truth(40, seed=1), make_truth(10, seed=2))
    wide_test = Path(runs[1].result.outputs_dir) / "test.parquet"
    table = pq.read_table(wide_test)
    kept = table.to_pandas().query("clip_id != 'test/t0003.wav'")
    pq.write_table(pa.Table.from_pandas(kept, preserve_index=False).replace_schema_metadata(table.schema.metadata),
                   wide_test)
    for attempt in ("first", "rerun"):  # a rerun resumes the finished members and combines again
        staging = tmp_path / attempt
        staging.mkdir()
        metrics, _, _, _ = write_member_outputs(Config.from_dict({"name": "pair"}), runs, staging)
        test = pd.read_parquet(staging / "test.parquet")
        assert len(test) == 9 and "test/t0003.wav" not in set(test["clip_id"])
        assert len(pd.read_csv(staging / "submission.csv")) == 9
        assert isinstance(metrics["test_lwlrap"], float) and metrics["test_clips_left_out"] == 1
        skipped = pd.read_csv(staging / "skipped.csv")
        assert list(skipped["file"]) == ["test/t0003.wav"] and "member(s) wide" in skipped["reason"].iloc[0]
        assert metrics["n_skipped"] == 1


def test_members_without_test_clips_write_no_test_predictions(tmp_path):
    from raytag.ensemble.members import write_member_outputs
    from test_ensemble import make_truth
    from test_train_map3 import _member_runs

    runs = _member_runs(tmp_path, "fat2019", make_truth(40, seed=1), make_truth(0, seed=2))
    (tmp_path / "staging").mkdir()
    metrics, _, _, _ = write_member_outputs(Config.from_dict({"name": "pair"}), runs, tmp_path / "staging")
    assert metrics["test_lwlrap"] is None and metrics["test_clips_left_out"] == 0
    assert not (tmp_path / "staging" / "test.parquet").exists()
