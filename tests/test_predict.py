"""`raytag predict`: tagging wav files with an artifact, a corrupt file reported and left
out, the 2019 / 2018 / json outputs, and agreement with a by-hand computation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from raytag.ensemble.artifact import MemberSpec, load_artifact, save_artifact
from raytag.ensemble.job import build_ensemble
from raytag.ensemble.tagging import as_stored, predict_files
from raytag.errors import RaytagError
from raytag.console.predict import predict_command
from raytag.predict import expand_inputs

from test_ensemble import CLASSES, make_experiment, make_trial_outputs, make_truth


def write_audio(folder: Path) -> dict[str, Path]:
    """Four good files (other rates, stereo, short, long) and two bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    t = lambda sr, sec: np.arange(int(sr * sec)) / sr  # noqa: E731
    files = {
        "tone.wav": (0.3 * np.sin(2 * np.pi * 440 * t(8000, 1.3)), 8000),
        "chirp44k.wav": (0.3 * np.sin(2 * np.pi * (200 + 800 * t(44100, 2.0)) * t(44100, 2.0)), 44100),
        "stereo.wav": (np.stack([np.sin(2 * np.pi * 300 * t(16000, 0.7))] * 2, axis=1) * 0.2, 16000),
        "noise_long.flac": (np.random.default_rng(0).normal(0, 0.1, 8000 * 5), 8000),
    }
    paths = {}
    for name, (wave, sr) in files.items():
        sf.write(folder / name, wave.astype(np.float32), sr)
        paths[name] = folder / name
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    paths["corrupt.wav"], paths["empty.wav"] = folder / "corrupt.wav", folder / "empty.wav"
    return paths


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def artifact_2019(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("p19"), signals=(0.9, 0.6), n=60, n_test=20)
    return build_ensemble(exp, top=2).artifact_path


@pytest.fixture(scope="module")
def artifact_2018(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("p18"), signals=(0.9, 0.6), n=60, n_test=20, layout="fsd2018")
    return build_ensemble(exp, top=2).artifact_path


GOOD = ["tone.wav", "chirp44k.wav", "stereo.wav", "noise_long.flac"]


def test_predict_files_reports_bad_audio_and_leaves_it_out(artifact_2019, audio):
    art = load_artifact(artifact_2019)
    order = ["tone.wav", "corrupt.wav", "chirp44k.wav", "empty.wav", "stereo.wav", "noise_long.flac"]
    probs, failures = art.predict_files([audio[n] for n in order])
    assert list(probs.index) == [str(audio[n]) for n in GOOD]
    assert list(probs.columns) == CLASSES
    assert np.isfinite(probs.to_numpy()).all() and ((probs.to_numpy() > 0) & (probs.to_numpy() < 1)).all()
    assert list(failures["file"]) == [str(audio["corrupt.wav"]), str(audio["empty.wav"])]
    assert failures["reason"].str.len().gt(0).all()
    assert not failures["retry"].any()  # damaged or empty: the same on every try
    # different clips get different scores (not a constant fill)
    assert probs.to_numpy().std(axis=0).max() > 1e-4


def test_predict_matches_a_by_hand_computation(artifact_2019, audio):
    """Segment averaging, normalisation, fold averaging and the combiner, done by hand
    (on features rounded as the feature store keeps them)."""
    from raytag.data.audio import load_audio
    from raytag.features.frontends import build_frontend
    from raytag.training.inference import predict_segments
    import torch

    art = load_artifact(artifact_2019)
    path = audio["noise_long.flac"]  # 5 s: several segments
    member_probs = []
    for m in art.members:
        cfg = m.feature_config
        wave = load_audio(path, cfg.sample_rate)
        with torch.no_grad():
            feats = as_stored(build_frontend(cfg)(torch.from_numpy(wave)[None])[0].numpy())
        s = m.settings
        assert feats.shape[-1] > 2 * s["segment_frames"]
        folds = [predict_segments(model, [feats], s["segment_frames"], overlap=s["inference"]["overlap"],
                                  mean=np.asarray(s["norm_mean"]), std=np.asarray(s["norm_std"]))
                 for model in m.models]
        member_probs.append(np.mean(folds, axis=0))
    expected = art.combine(member_probs)
    probs, _ = art.predict_files([path])
    assert np.allclose(probs.to_numpy(), expected, atol=1e-5)


def test_batch_size_does_not_change_scores(artifact_2019, audio):
    art = load_artifact(artifact_2019)
    files = [audio[n] for n in GOOD]
    a, _ = predict_files(art, files, batch_size=3)
    b, _ = predict_files(art, files, batch_size=64)
    assert np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)


def test_compiled_networks_score_as_eager_ones(audio, tmp_path, monkeypatch):
    """`raytag predict --compile`: torch.compile'd fold models give the eager scores (issue 11:
    an export is kept only if it agrees to 1e-3); a compiler that fails falls back to eager.
    One member of 3 fold models of one architecture: compiled once (the FX graph cache)."""
    from raytag import predict as predict_module
    from raytag.cli import app
    from raytag.ensemble.tagging import CompiledModel, compile_models

    path = build_ensemble(make_experiment(tmp_path, signals=(0.9,), n=30, n_test=10), top=1).artifact_path
    files = [audio[n] for n in GOOD]
    eager, _ = predict_files(load_artifact(path), files)
    art = load_artifact(path)
    compiled = compile_models(art)
    probs, _ = predict_files(art, files)
    assert len(compiled) == 3 and all(m.fallback is None for m in compiled)
    assert np.abs(probs.to_numpy() - eager.to_numpy()).max() < 1e-3

    broken = CompiledModel(load_artifact(path).members[0].models[0])
    broken.compiled = lambda x: (_ for _ in ()).throw(RuntimeError("no C++ compiler found"))
    x = torch.zeros(2, 1, 16, 50)  # test_ensemble.FEATURES: 16 mel bins
    assert torch.equal(broken(x), broken.eager(x)) and "no C++ compiler" in broken.fallback

    calls = []  # the flag reaches the artifact the command tags with
    monkeypatch.setattr(predict_module, "compile_models", lambda a: calls.append(a) or [])
    out = tmp_path / "compiled.csv"
    result = CliRunner().invoke(app, ["predict", path, *map(str, files), "--compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0].path == path and out.is_file()


def test_2019_submission_and_failures_report(artifact_2019, audio, tmp_path):
    out = tmp_path / "submission.csv"
    res = predict_command(Path(artifact_2019), [audio["corrupt.wav"].parent], out=out)
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["fname", *CLASSES]
    assert sorted(sub["fname"]) == sorted(GOOD)  # the folder's audio files, bad ones left out
    fails = pd.read_csv(tmp_path / "submission.failures.csv")
    assert sorted(Path(f).name for f in fails["file"]) == ["corrupt.wav", "empty.wav"]
    assert res["tagged"] == 4 and res["failed"] == 2


def test_2018_submission_is_top3_labels(artifact_2018, audio, tmp_path):
    out = tmp_path / "sub2018.csv"
    predict_command(Path(artifact_2018), [audio[n] for n in GOOD], out=out)
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["fname", "label"]
    art = load_artifact(artifact_2018)
    probs, _ = art.predict_files([audio[n] for n in GOOD])
    for row, (_, p) in zip(sub.itertuples(), probs.iterrows()):
        labels = row.label.split(" ")
        assert len(labels) == 3 and labels == list(p.sort_values(ascending=False).index[:3])


def test_json_output_and_cli(artifact_2019, audio, tmp_path):
    from raytag.cli import app

    out = tmp_path / "tags.json"
    result = CliRunner().invoke(app, ["predict", artifact_2019, str(audio["tone.wav"]),
                                      str(audio["corrupt.wav"]), "--format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [Path(f["file"]).name for f in data["files"]] == ["tone.wav"]
    assert set(data["files"][0]["scores"]) == set(CLASSES) and len(data["files"][0]["top"]) == 3
    assert [Path(f["file"]).name for f in data["failures"]] == ["corrupt.wav"]
    bad = CliRunner().invoke(app, ["predict", artifact_2019, str(audio["corrupt.wav"]), "--out",
                                   str(tmp_path / "none.csv")])
    assert bad.exit_code == 2 and "could be read" in bad.output


def test_out_dash_into_a_closed_pipe_ends_quietly(artifact_2019, audio):
    """`raytag predict ... --out - | head -1`: the reader closing the pipe is normal, not
    "error: [Errno 32] Broken pipe" with exit 2. Here the reader is closed before raytag writes."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-c", "from raytag.cli import app; app()", "predict",
                               str(artifact_2019), str(audio["tone.wav"]), "--out", "-"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr  # as a shell reports `seq 1e9 | head`
    assert "error" not in done.stderr.lower() and "Broken pipe" not in done.stderr, done.stderr


def test_a_broken_pipe_other_than_stdout_is_still_an_error(capsys):
    """Only a closed stdout ends quietly; a BrokenPipeError from another pipe or socket is reported."""
    import typer

    from raytag.cli import _run

    def talks_to_a_dead_worker():
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(typer.Exit) as stopped:
        _run(talks_to_a_dead_worker)
    assert stopped.value.exit_code == 2 and "Broken pipe" in capsys.readouterr().err


def test_out_dash_is_stdout_for_both_formats_and_a_json_name_chooses_json(artifact_2019, audio, tmp_path, monkeypatch):
    """`--out -` wrote a CSV file named "-" (a CSV could not go to stdout at all), and
    `--out tags.json` without --format json wrote CSV into it."""
    import io

    from raytag.cli import app

    monkeypatch.chdir(tmp_path)
    tone, corrupt = str(audio["tone.wav"]), str(audio["corrupt.wav"])
    csv = CliRunner().invoke(app, ["predict", artifact_2019, tone, corrupt, "--out", "-"])
    assert csv.exit_code == 0, csv.output
    sub = pd.read_csv(io.StringIO(csv.stdout))
    assert list(sub.columns) == ["fname", *CLASSES] and list(sub["fname"]) == ["tone.wav"]
    assert "corrupt.wav" in csv.stderr and "wrote stdout" in csv.stderr  # no failures file beside stdout
    assert list(tmp_path.iterdir()) == []  # neither "-" nor "-.failures.csv"

    js = CliRunner().invoke(app, ["predict", artifact_2019, tone, "--format", "json", "--out", "-"])
    assert js.exit_code == 0, js.output
    assert [Path(f["file"]).name for f in json.loads(js.stdout)["files"]] == ["tone.wav"]

    named = CliRunner().invoke(app, ["predict", artifact_2019, tone, "--out", "tags.json"])
    assert named.exit_code == 0, named.output
    assert [Path(f["file"]).name for f in json.loads((tmp_path / "tags.json").read_text())["files"]] == ["tone.wav"]
    asked = CliRunner().invoke(app, ["predict", artifact_2019, tone, "--out", "odd.json", "--format", "csv"])
    assert asked.exit_code == 0 and (tmp_path / "odd.json").read_text().startswith("fname,")  # as asked


def test_a_run_or_sweep_folder_is_answered_with_the_artifact_to_give(artifact_2019, audio, tmp_path):
    """`raytag predict <run folder>` called the folder an interrupted artifact and advised
    rebuilding it; it names the artifact inside instead."""
    import shutil

    from raytag.cli import app

    def predict(folder) -> str:
        result = CliRunner().invoke(app, ["predict", str(folder), str(audio["tone.wav"]), "--out",
                                          str(tmp_path / "sub.csv")])
        assert result.exit_code == 2, result.output
        return result.output

    sweep = Path(artifact_2019).parents[1]
    said = predict(sweep)
    assert str(sweep / "ensemble" / "artifact") in said and "interrupted" not in said
    run = tmp_path / "run"
    shutil.copytree(artifact_2019, run / "artifact")
    said = predict(run)
    assert str(run / "artifact") in said and "interrupted" not in said
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "sweep.json").write_text("{}")
    said = predict(tmp_path / "fresh")
    assert "run `raytag ensemble`" in said and str(tmp_path / "fresh" / "ensemble" / "artifact") in said


def test_input_errors(tmp_path):
    with pytest.raises(RaytagError, match="no such file or folder"):
        expand_inputs([tmp_path / "nope.wav"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(RaytagError, match="holds no audio files"):
        expand_inputs([tmp_path / "empty_dir"])


def test_members_with_different_front_ends_and_rates(tmp_path, audio):
    """One member on log-mel at 8 kHz, one on MFCC+deltas at 16 kHz, one on colour mel, one on PCEN,
    one on log-mel and PCEN stacked."""
    y, yt = make_truth(30, 1), make_truth(10, 2)
    specs = []
    variants = [
        ({"kind": "logmel", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16}, "cnn2d"),
        ({"kind": "mfcc", "sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 32,
          "n_mfcc": 13, "deltas": 1}, "cnn2d"),
        ({"kind": "colormel", "sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 16}, "cnn2d"),
        ({"kind": "pcen", "sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 16}, "cnn2d"),
        ({"kind": "logmel_pcen", "sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 16}, "cnn2d"),
    ]
    for i, (feat, model) in enumerate(variants):
        out, _ = make_trial_outputs(tmp_path / "exp", f"m{i}", y, yt, 1.0, i, n_folds=2, features=feat,
                                    model={"name": model, "width": 4, "depth": 1, "params": {"hidden": 8}})
        specs.append(MemberSpec(f"m{i}", out))
    dest = str(tmp_path / "art")
    save_artifact(dest, specs, "geometric", None, CLASSES, "fat2019")
    art = load_artifact(dest)
    probs, failures = art.predict_files([audio[n] for n in GOOD + ["corrupt.wav"]])
    assert probs.shape == (4, len(CLASSES)) and len(failures) == 1


def test_shared_front_ends_and_segments_cut_once_score_as_each_fold_on_its_own(tmp_path, audio):
    """The engine computes a front end once for the members that share it and cuts each
    member's segments once for all its folds; the scores must be those of every fold model
    run on its own member's features (the engine before that rework), within 1e-5."""
    import torch

    from raytag.data.audio import load_audio
    from raytag.features.frontends import build_frontend
    from raytag.training.inference import predict_segments

    y, yt = make_truth(30, 1), make_truth(10, 2)
    shared = {"kind": "logmel", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16}
    variants = [(shared, "cnn2d"), (shared, "crnn"),
                ({**shared, "deltas": 1}, "cnn2d")]
    specs = []
    for i, (feat, model) in enumerate(variants):
        out, _ = make_trial_outputs(tmp_path / "exp", f"m{i}", y, yt, 1.0, i, n_folds=2, features=feat,
                                    model={"name": model, "width": 4, "depth": 1, "params": {}})
        specs.append(MemberSpec(f"m{i}", out))
    dest = str(tmp_path / "art")
    save_artifact(dest, specs, "mean", None, CLASSES, "fat2019")
    art = load_artifact(dest)
    files = [audio[n] for n in GOOD]
    member_probs = []
    for m in art.members:
        cfg, s = m.feature_config, m.settings
        with torch.no_grad():
            feats = [as_stored(build_frontend(cfg)(torch.from_numpy(load_audio(f, cfg.sample_rate))[None])[0].numpy())
                     for f in files]
        folds = [predict_segments(model, feats, s["segment_frames"], overlap=s["inference"]["overlap"],
                                  tta=s["inference"]["tta"], batch_size=3,
                                  mean=np.asarray(s["norm_mean"]), std=np.asarray(s["norm_std"]))
                 for model in m.models]
        member_probs.append(np.mean(folds, axis=0))
    probs, failures = art.predict_files(files, batch_size=5)
    assert failures.empty
    assert np.abs(probs.to_numpy() - art.combine(member_probs)).max() <= 1e-5


def test_predict_scores_the_features_the_store_held_for_scoring(artifact_2019, audio, tmp_path):
    """OOF and test scores (what chose the artifact) come from the float16 feature store;
    `raytag predict` must score a clip from those same numbers, not from float32 ones."""
    import shutil

    from raytag.data.layouts import load_dataset
    from raytag.ensemble.tagging import _MemberRunner
    from raytag.features.store import build_feature_store

    art = load_artifact(artifact_2019)
    cfg = art.members[0].feature_config
    assert all(m.feature_config.cache_key() == cfg.cache_key() for m in art.members)
    data = tmp_path / "data"
    (data / "train_curated").mkdir(parents=True)
    (data / "test").mkdir()
    shutil.copy(audio["tone.wav"], data / "train_curated" / "tone.wav")
    pd.DataFrame({"fname": ["tone.wav"], "labels": [CLASSES[0]]}).to_csv(data / "train_curated.csv", index=False)
    pd.DataFrame(columns=["fname", *CLASSES]).to_csv(data / "sample_submission.csv", index=False)
    dataset = load_dataset(str(data), sample_rate=cfg.sample_rate)
    store = build_feature_store(dataset, cfg, tmp_path / "cache", progress=False, workers=1)
    stored = store.get(store.clip_ids[0])

    runners = [_MemberRunner(m, cfg.cache_key(), 32, "cpu") for m in art.members]
    from_store = art.combine([r.predict([stored]) for r in runners])
    probs, failures = art.predict_files([data / "train_curated" / "tone.wav"])
    assert failures.empty
    assert np.allclose(probs.to_numpy(), from_store, rtol=0, atol=1e-6)


def test_a_folder_leaves_out_macos_metadata_and_collects_opus(tmp_path):
    """A folder unzipped from macOS holds "._clip.wav" AppleDouble files (beside the clips and
    under __MACOSX/), which became "format not recognised" failures; the dataset reader leaves
    hidden files out, and so does predict now. Opus, which libsndfile reads, was not collected."""
    clips = tmp_path / "clips"
    (clips / "__MACOSX" / "clips").mkdir(parents=True)
    (clips / ".hidden").mkdir()
    for rel in ("a.wav", "b.opus", "._a.wav", "__MACOSX/clips/._b.opus", ".hidden/c.wav", "notes.txt"):
        (clips / rel).write_bytes(b"x")
    assert [p.relative_to(clips).as_posix() for p in expand_inputs([clips])] == ["a.wav", "b.opus"]


@pytest.mark.skipif("OPUS" not in sf.available_subtypes("OGG"), reason="this libsndfile has no Opus")
def test_an_opus_file_decodes(tmp_path):
    from raytag.data.audio import load_audio

    sf.write(tmp_path / "a.opus", (0.3 * np.sin(np.arange(48000) / 10)).astype(np.float32), 48000,
             format="OGG", subtype="OPUS")
    assert load_audio(tmp_path / "a.opus", 16000, min_samples=1024).shape == (16000,)


def test_a_file_that_runs_out_of_memory_is_its_failure_not_the_commands(artifact_2019, audio, monkeypatch):
    """A MemoryError decoding one huge file ended `raytag predict` with a traceback, and no
    other file's scores were written; it is that file's failure now, as in the feature store."""
    import raytag.ensemble.tagging as tagging

    real = tagging.load_audio

    def decode(path, *args, **kwargs):
        if Path(path).name == "noise_long.flac":
            raise MemoryError
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tagging, "load_audio", decode)
    files = [audio[n] for n in ("tone.wav", "noise_long.flac", "stereo.wav")]
    probs, failures = load_artifact(artifact_2019).predict_files(files)
    assert list(probs.index) == [str(audio["tone.wav"]), str(audio["stereo.wav"])]
    assert failures.to_dict(orient="records") == [{"file": str(audio["noise_long.flac"]),
                                                   "reason": tagging.OUT_OF_MEMORY, "retry": True}]


def test_a_file_too_long_for_the_free_memory_is_refused_from_its_header(artifact_2019, audio, monkeypatch):
    """Decoding needs about 9 bytes per sample (frames x channels) plus the mono mix and its
    resampled copy: with 400 kB free, the 1.3 s and 0.7 s clips fit, the 5 s and 2 s ones
    (8 kHz, 44.1 kHz) are refused before they are read, as `raytag serve` refuses an upload."""
    import raytag.ensemble.tagging as tagging

    monkeypatch.setattr(tagging, "decode_memory_budget", lambda: 400_000)
    probs, failures = load_artifact(artifact_2019).predict_files([audio[n] for n in GOOD])
    assert list(probs.index) == [str(audio["tone.wav"]), str(audio["stereo.wav"])]
    assert list(failures["file"]) == [str(audio["chirp44k.wav"]), str(audio["noise_long.flac"])]
    assert failures["reason"].str.match(r"too long to decode whole: \d+ samples \(\d+ frames x 1 channels\) need "
                                        r"about 0\.0 GB of memory, more than the 0\.0 GB available; split it into "
                                        r"shorter files").all()
    assert failures["retry"].all()  # refused for memory now: a later run may have it
