"""Bad input a new user gives raytag (issue 12, "Bad input" 1-10): each clip is reported with
file and reason and left out, never turned into zeros, and mistakes in paths or options
get a message, not a traceback."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from raytag.cli import app
from raytag.config import Config, FeatureConfig
from raytag.data import load_dataset
from raytag.data.audio import audio_info, load_audio, min_samples
from raytag.errors import AudioDecodeError, DatasetError, RaytagError
from raytag.console.predict import predict_command
from raytag.data.submission import write_submission_2019
from raytag.scoring import ScoringError, score_files

from test_layouts import make_fat2019, make_fsd2018, write_csv
from test_predict import artifact_2019  # noqa: F401  (module fixture: a small 2019 artifact)
from test_ensemble import FEATURES


def tone(n: int, sr: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)


def bad_clips(folder: Path) -> dict[str, str]:
    """Files a user's folder may hold -> what the reason must say."""
    folder.mkdir(parents=True, exist_ok=True)
    nan = tone(4000)
    nan[100:103] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "silence.wav", np.zeros(4000, np.float32), 16000)
    (folder / "zero_bytes.wav").write_bytes(b"")
    (folder / "junk.mp3").write_bytes(b"\xff\xfb junk, not mp3 " * 40)
    sf.write(folder / "short900.wav", tone(900), 16000)  # under one frame (n_fft 1024)
    return {"nan.wav": "3 of 4000 samples are not finite", "silence.wav": "digital silence",
            "zero_bytes.wav": "empty file (0 bytes)", "junk.mp3": "format not recognised",
            "short900.wav": "too short"}


# ----------------------------------------------------------------------------- 1, 10: reasons
@pytest.mark.parametrize("name", ["nan.wav", "silence.wav", "zero_bytes.wav", "junk.mp3", "short900.wav"])
def test_each_bad_clip_is_refused_with_a_true_reason(tmp_path, name):
    expected = bad_clips(tmp_path)[name]
    with pytest.raises(AudioDecodeError, match=re.escape(expected)) as err:
        load_audio(tmp_path / name, 16000, min_samples=min_samples(FeatureConfig()))
    assert "does not exist" not in err.value.reason and "Format not recognised" not in err.value.reason


def test_header_reasons_for_empty_and_junk_files(tmp_path):
    bad_clips(tmp_path)
    with pytest.raises(AudioDecodeError, match=r"empty file \(0 bytes\)"):
        audio_info(tmp_path / "zero_bytes.wav")
    with pytest.raises(AudioDecodeError, match="format not recognised or file damaged") as err:
        audio_info(tmp_path / "junk.mp3")
    assert "does not exist" not in str(err.value)


def test_feature_store_reports_bad_clips_instead_of_zeroing_them(tmp_path):
    """prepare's decoding step (the Ray task's function, run here in-process)."""
    from raytag.features.store import _compute_shard, _frontend

    reasons = bad_clips(tmp_path / "audio")
    sf.write(tmp_path / "audio" / "good.wav", tone(4000), 16000)
    cfg = FeatureConfig()
    rows = [{"clip_id": f"curated/{n}", "path": str(tmp_path / "audio" / n), "file": f"train_curated/{n}",
             "in_stats": True, "ctime": -1} for n in [*reasons, "good.wav"]]
    (tmp_path / "store").mkdir()
    out = _compute_shard(0, rows, [], "key", str(tmp_path / "store"), _frontend(vars(cfg)))
    failed = dict(out["failed"])
    assert [r[0] for r in out["index"]] == ["curated/good.wav"]
    for name, reason in reasons.items():
        assert reason in failed[f"train_curated/{name}"], failed


def test_data_option_given_a_file(tmp_path):
    from raytag.cluster import materialize_data

    (tmp_path / "train.csv").write_text("fname,label,manually_verified\n")
    with pytest.raises(DatasetError, match="is a file; give the dataset folder"):
        materialize_data(tmp_path / "train.csv")


def _no_ray():
    raise AssertionError("started Ray before checking --data")


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data", ["", "no_such_folder"])
@pytest.mark.parametrize("command", [["train", "--config", str(REPO / "configs" / "default.yaml")],
                                     ["tune", "--space", str(REPO / "search_spaces" / "quick.yaml")]])
def test_train_and_tune_name_a_missing_data_folder_before_ray_or_any_folder(tmp_path, monkeypatch, command, data):
    """`train --data <typo>` started Ray (tens of seconds) and made the run folder before
    saying the folder did not exist; `--data ""` (an unset shell variable) meant the current
    folder for tune. Now both are refused before Ray starts or a folder is made."""
    import raytag.console.train
    import raytag.search.tuner

    monkeypatch.setattr(raytag.console.train, "ensure_ray", _no_ray)
    monkeypatch.setattr(raytag.search.tuner, "ensure_ray", _no_ray)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--data", data, "--storage", str(tmp_path / "st")],
                                env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert ("--data '': empty; give the dataset folder" if not data else
            f"--data {data}: folder not found; give the dataset folder") in text, text
    assert not any(tmp_path.iterdir())


def test_prepare_refuses_an_empty_data_path(tmp_path, monkeypatch):
    """`prepare --data ""` read the current folder and listed the user's own files."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--data", "", "--feature-cache", str(tmp_path / "cache")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "--data '': empty; give the dataset folder" in result.output


# ----------------------------------------------------------------------------- 4: one short-clip rule
def test_prepare_and_predict_share_the_one_frame_rule(tmp_path, artifact_2019):  # noqa: F811
    from raytag.ensemble.artifact import load_artifact
    from raytag.features.store import _compute_shard, _frontend

    features = Config.from_dict({"features": FEATURES}).features  # the artifact's: 8 kHz, n_fft 256
    sr, frame = features.sample_rate, min_samples(features)
    assert frame == features.n_fft == 256
    lengths = {"l10.wav": 10, "l200.wav": 200, "l256.wav": 256, "l400.wav": 400}
    root = make_fat2019(tmp_path / "d")
    for name, n in lengths.items():
        sf.write(root / "train_curated" / name, tone(n, sr), sr)
    rows = pd.read_csv(root / "train_curated.csv")
    rows = pd.concat([rows, pd.DataFrame({"fname": list(lengths), "labels": "Bark"})])
    rows.to_csv(root / "train_curated.csv", index=False)

    ds = load_dataset(root, features=features)  # prepare's reader: header lengths
    kept_reader = {n for n in lengths if f"curated/{n}" in set(ds.clips["clip_id"])}
    files = {n: str(root / "train_curated" / n) for n in lengths}
    store_rows = [{"clip_id": n, "path": p, "file": n, "in_stats": True, "ctime": -1} for n, p in files.items()]
    (tmp_path / "s").mkdir()
    kept_store = {r[0] for r in _compute_shard(0, store_rows, [], "k", str(tmp_path / "s"), _frontend(vars(features)))["index"]}
    probs, failures = load_artifact(artifact_2019).predict_files(list(files.values()))
    kept_predict = {Path(f).name for f in probs.index}
    assert kept_reader == kept_store == kept_predict == {"l256.wav", "l400.wav"}
    assert failures["reason"].str.contains("too short").all()


# ----------------------------------------------------------------------------- 2, 7: predict output
@pytest.mark.parametrize("where", ["folder", "under_a_file", "a_bucket"])
def test_predict_checks_out_before_any_work(tmp_path, artifact_2019, monkeypatch, where):  # noqa: F811
    import raytag.predict as predict

    def no_work(*a, **k):
        raise AssertionError("tagged before checking --out")

    monkeypatch.setattr(predict, "predict_files", no_work)
    sf.write(tmp_path / "a.wav", tone(8000, 8000), 8000)
    if where == "folder":
        out, match = tmp_path / "outdir", "is a folder"
        out.mkdir()
    elif where == "a_bucket":  # typer hands over Path("s3://...") as "s3:/...": never a local folder "s3:"
        out, match = Path("s3://bucket/sub.csv"), "s3://bucket/sub.csv: predictions are written to a local file"
    else:
        (tmp_path / "plain").write_text("x")
        out, match = tmp_path / "plain" / "sub.csv", "is a file, not a folder"
    with pytest.raises(RaytagError, match=match):
        predict_command(Path(artifact_2019), [tmp_path / "a.wav"], out=out)
    assert not Path("s3:").exists()


def test_json_tags_go_into_a_new_folder_as_csv_ones_do(tmp_path):
    """check_out_path accepts --out in a folder that does not exist yet: every writer makes it."""
    from raytag.predict import check_out_path, write_output

    probs = pd.DataFrame([[0.1, 0.9]], index=pd.Index(["a.wav"], name="file"), columns=["Bark", "Meow"])
    none_failed = pd.DataFrame(columns=["file", "reason"])
    for fmt, out in (("json", tmp_path / "new" / "tags.json"), ("csv", tmp_path / "other" / "sub.csv")):
        check_out_path(out, fmt)
        assert write_output(probs, none_failed, "fat2019", fmt, out) == out and out.is_file()


def test_predict_tags_a_file_once_and_writes_names(tmp_path, artifact_2019):  # noqa: F811
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(folder / name, tone(8000, 8000), 8000)
    out = tmp_path / "sub.csv"
    predict_command(Path(artifact_2019), [folder / "a.wav", folder / "a.wav", folder, Path(str(folder) + "/./b.wav")],
                    out=out)
    table = pd.read_csv(out)
    assert list(table["fname"]) == ["a.wav", "b.wav"]
    # and `raytag score` takes it
    write_csv(tmp_path / "truth.csv", ["fname", "labels"], [("a.wav", "Bark"), ("b.wav", "Meow")])
    classes = [c for c in table.columns if c != "fname"]
    pd.DataFrame(columns=["fname"] + classes).to_csv(tmp_path / "sample_submission.csv", index=False)
    assert 0 <= score_files(tmp_path / "truth.csv", out)["lwlrap"] <= 1


# ----------------------------------------------------------------------------- 3, 5: class columns
def test_repeated_class_column_in_sample_submission(tmp_path):
    root = make_fat2019(tmp_path / "d")
    (root / "sample_submission.csv").write_text("fname,Bark,Applause,Bark,Chirp\nt1.wav,0,0,0,0\nt2.wav,0,0,0,0\n")
    with pytest.raises(DatasetError, match=r"repeated class column\(s\) Bark"):
        load_dataset(root)


def test_an_unnamed_class_column_in_sample_submission_is_refused(tmp_path):
    """A spreadsheet's trailing comma must not become a class ("Unnamed: 3") of the model."""
    root = make_fat2019(tmp_path / "d")
    (root / "sample_submission.csv").write_text("fname,Bark,Applause,\nt1.wav,0,0,\nt2.wav,0,0,\n")
    with pytest.raises(DatasetError, match=r"header field\(s\) 4 have no name \(a trailing comma\?\)"):
        load_dataset(root)
    from raytag.data.truth import TruthError, read_truth

    write_csv(tmp_path / "truth.csv", ["fname", "labels"], [("a.wav", "dog")])
    (tmp_path / "sample_submission.csv").write_text("fname,dog,cat,\n")
    with pytest.raises(TruthError, match="have no name"):
        read_truth(tmp_path / "truth.csv")


def test_repeated_column_in_a_submission_or_sample_submission_is_refused(tmp_path):
    write_csv(tmp_path / "truth.csv", ["fname", "labels"], [("a.wav", "dog"), ("b.wav", "cat")])
    (tmp_path / "s.csv").write_text("fname,dog,cat,dog\na.wav,0.9,0.1,0.2\nb.wav,0.1,0.8,0.3\n")
    with pytest.raises(ScoringError, match="more than once.*dog"):
        score_files(tmp_path / "truth.csv", tmp_path / "s.csv")
    (tmp_path / "sample_submission.csv").write_text("fname,dog,cat,dog\n")
    write_submission_2019(["a.wav", "b.wav"], ["dog", "cat"], [[0.9, 0.1], [0.1, 0.8]], tmp_path / "ok.csv")
    with pytest.raises(ScoringError, match="sample_submission.csv: class columns appear more than once: dog"):
        score_files(tmp_path / "truth.csv", tmp_path / "ok.csv")


def test_score_refuses_unknown_columns_without_a_class_list(tmp_path):
    write_csv(tmp_path / "truth.csv", ["fname", "labels"], [("a.wav", "dog"), ("b.wav", "cat")])
    write_submission_2019(["a.wav", "b.wav"], ["dog", "cat", "dgo", "bird"], np.full((2, 4), 0.5), tmp_path / "s.csv")
    with pytest.raises(ScoringError, match="no clip of .*truth.csv is labelled with: dgo, bird"):
        score_files(tmp_path / "truth.csv", tmp_path / "s.csv")


# ----------------------------------------------------------------------------- 8: messages, not tracebacks
def test_make_demo_data_negative_scale(tmp_path):
    result = CliRunner().invoke(app, ["make-demo-data", str(tmp_path / "demo"), "--scale", "-1"])
    assert result.exit_code == 2 and "--scale -1.0: must be a positive number" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_prepare_cache_is_a_file(tmp_path):
    root = make_fat2019(tmp_path / "d")
    (tmp_path / "cache").write_text("not a folder")
    result = CliRunner().invoke(app, ["prepare", "--data", str(root), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert "--feature-cache" in result.output and "not a folder" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("option", ["--cache", "--feature-cache"])
def test_prepare_refuses_a_uri_for_the_feature_cache(tmp_path, monkeypatch, option):
    """Features are read from a local disk on each node: an s3:// cache is refused, not
    made into a local folder "s3:" (typer's Path made s3://b/f into s3:/b/f)."""
    root = make_fat2019(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--data", str(root), option, "s3://bucket/features"])
    assert result.exit_code == 2, result.output
    assert "s3://bucket/features" in result.output and "local folder" in result.output
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize("command", [["train", "--config", "configs/default.yaml"],
                                     ["tune", "--space", "search_spaces/quick.yaml"], ["distill", "quick"]])
def test_train_tune_and_distill_refuse_a_uri_for_the_feature_cache(tmp_path, command):
    result = CliRunner().invoke(app, [*command, "--storage", str(tmp_path), "--data", str(tmp_path),
                                      "--feature-cache", "gs://bucket/f"])
    assert result.exit_code == 2, result.output
    assert "gs://bucket/f" in result.output and "local folder" in result.output


# ----------------------------------------------------------------------------- 9: 2018 vocabulary
def test_fsd2018_classes_come_from_usable_rows_only(tmp_path):
    root = make_fsd2018(tmp_path / "d")
    rows = pd.read_csv(root / "train.csv", dtype=str)
    extra = pd.DataFrame({"fname": ["gone.wav", "e.wav"], "label": ["Barkk", "Violinn"],
                          "manually_verified": ["1", "2"]})  # file missing; bad verified flag
    pd.concat([rows, extra]).to_csv(root / "train.csv", index=False)
    ds = load_dataset(root)
    assert ds.classes == ["Bark", "Violin"]
    assert set(ds.skipped["file"]) >= {"audio_train/gone.wav", "audio_train/e.wav"}


# ----------------------------------------------------------------------------- 6 + the whole of prepare
@pytest.mark.ray
def test_prepare_reports_every_bad_clip_and_prints_the_skipped_path_whole(ray_session, tmp_path):
    root = make_fat2019(tmp_path / "d")
    reasons = bad_clips(root / "train_noisy")
    rows = pd.read_csv(root / "train_noisy.csv")
    pd.concat([rows, pd.DataFrame({"fname": list(reasons), "labels": "Chirp"})]).to_csv(
        root / "train_noisy.csv", index=False)
    cache = tmp_path / ("a-rather-long-folder-name-for-the-feature-cache-" * 2) / "features"
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["prepare", "--data", str(root), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("skipped clips (file, reason): "))
    path = Path(line.split(": ", 1)[1])
    assert path.is_file() and path.name == "skipped.csv" and "…" not in line
    skipped = pd.read_csv(path).set_index("file")["reason"]
    for name, reason in reasons.items():  # every bad clip: file and a true reason; none lost
        assert reason in skipped[f"train_noisy/{name}"], skipped
    assert len(skipped) == len(reasons)  # nothing else left out
    assert json.loads((path.parent / "meta.json").read_text())["n_clips"] == 8  # every good clip kept


@pytest.mark.ray
def test_prepare_fills_the_cache_train_and_tune_read(ray_session, tmp_path):
    """Without --cache, `raytag prepare` builds where a run looks ($RAYTAG_CACHE or
    ~/.cache/raytag/features), so a later `raytag train` reuses the features."""
    root = make_fat2019(tmp_path / "d")
    cache = tmp_path / "node-cache"
    result = CliRunner(env={"COLUMNS": "200", "RAYTAG_CACHE": str(cache)}).invoke(app, ["prepare", "--data", str(root)])
    assert result.exit_code == 0, result.output
    assert list(cache.glob("*/*/meta.json")), list(cache.rglob("*"))  # <cache>/<feature key>/<dataset>/
