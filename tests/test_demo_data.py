"""raytag.data.demo: layout, label statistics, determinism, reuse, and that it is learnable."""
import hashlib
import json

import librosa
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import stft
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import label_ranking_average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from raytag.data import demo, labels_to_matrix, load_audio, load_dataset
from raytag.data.demo import CLASSES, make_demo_dataset
from raytag.errors import DatasetError, RaytagError

TINY = 0.1  # 2 curated, 4 noisy, 1 test clip per class: fast


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_is_fat2019_and_loads_clean(demo_data):
    ds = load_dataset(demo_data)
    assert ds.layout == "fat2019"
    assert ds.classes == CLASSES and len(CLASSES) >= 12
    assert ds.skipped.empty
    counts = ds.clips["split"].value_counts()
    assert counts["curated"] == 5 * len(CLASSES)  # scale 0.25
    assert counts["noisy"] == 10 * len(CLASSES)
    assert ds.clips["duration"].between(0.5, 6.0).all()
    info = sf.info(ds.clips["path"].iloc[0])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    # the truth files of the real benchmark are there, for every noisy and test clip
    assert len(ds.truth_for("test")) == counts["test"]
    assert len(ds.truth_for("noisy")) == counts["noisy"]


def test_label_statistics_at_full_scale():
    """Checked on the plan (no audio written): mixtures, wrong noisy labels, counts."""
    plan = demo._plan(seed=0, scale=1.0)
    by_split = {s: [p for p in plan if p[0] == s] for s in ("curated", "noisy", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {
        "curated": 20 * len(CLASSES), "noisy": 40 * len(CLASSES), "test": 10 * len(CLASSES)}
    mixed = np.mean([len(true) == 2 for _, true, _, _ in plan])
    assert 0.11 < mixed < 0.19
    for split in ("curated", "test"):
        assert all(true == given for _, true, given, _ in by_split[split])
    noisy = by_split["noisy"]
    wrong = [given != true for _, true, given, _ in noisy]
    assert 0.42 < np.mean(wrong) < 0.58
    for _, true, given, _ in noisy:  # one label replaced by another class, never dropped
        assert len(given) == len(true) and len(set(given) - set(true)) <= 1
        assert set(given) <= set(CLASSES)


def test_every_event_is_audible_at_the_shortest_event_length():
    """An event shorter than one pulse period (knock: 0.4-1 s, events from 0.3 s) once got
    no pulse at all: a clip labelled knock held only background noise."""
    n = int(0.3 * demo.SAMPLE_RATE)  # _event_into's shortest event
    for name, generate in demo.GENERATORS.items():
        for seed in range(5):
            for i in range(20):
                event = generate(np.random.default_rng([seed, i]), n)
                assert np.sqrt(np.mean(event ** 2)) > 0.005, (name, seed, i)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo_dataset(tmp_path / "a", seed=3, scale=TINY)
    b = make_demo_dataset(tmp_path / "b", seed=3, scale=TINY)
    c = make_demo_dataset(tmp_path / "c", seed=4, scale=TINY)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_existing_set_is_reused_and_a_changed_one_rewritten(tmp_path, monkeypatch):
    root = make_demo_dataset(tmp_path / "d", seed=1, scale=TINY)
    before = digest(root)
    marker = json.loads((root / "demo.json").read_text())
    assert marker["complete"] and marker["seed"] == 1 and marker["scale"] == TINY

    def no_writes(*args, **kwargs):
        raise AssertionError("reused set was rewritten")

    monkeypatch.setattr(demo.sf, "write", no_writes)
    assert make_demo_dataset(root, seed=1, scale=TINY) == root
    monkeypatch.undo()
    assert digest(root) == before

    # a missing clip makes the set incomplete: it is made again, identical
    victim = next((root / "train_noisy").iterdir())
    victim.unlink()
    make_demo_dataset(root, seed=1, scale=TINY)
    assert victim.is_file() and digest(root) == before

    # another seed replaces the old set completely (no stale clips left behind)
    make_demo_dataset(root, seed=2, scale=TINY)
    ds = load_dataset(root)
    assert ds.skipped.empty
    assert json.loads((root / "demo.json").read_text())["seed"] == 2


def test_interrupted_write_is_redone(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=0, scale=TINY)
    marker = json.loads((root / "demo.json").read_text())
    (root / "demo.json").write_text(json.dumps({**marker, "complete": False}))
    make_demo_dataset(root, seed=0, scale=TINY)
    assert json.loads((root / "demo.json").read_text())["complete"]


def test_a_negative_seed_is_refused_before_the_old_set_is_cleared(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=0, scale=TINY)
    before = digest(root)
    with pytest.raises(RaytagError, match="--seed -1: must be 0 or more"):
        make_demo_dataset(root, seed=-1, scale=TINY)
    assert digest(root) == before


def test_refuses_to_overwrite_a_foreign_dataset(tmp_path):
    (tmp_path / "train_curated.csv").write_text("fname,labels\nmine.wav,Bark\n")
    with pytest.raises(DatasetError, match="not made by make_demo_dataset"):
        make_demo_dataset(tmp_path, seed=0, scale=TINY)
    assert (tmp_path / "train_curated.csv").read_text().startswith("fname,labels\nmine.wav")


def test_learnable_but_not_trivial(demo_data):
    """A linear model on log-mel mean/std of the curated clips beats chance on test by far."""
    ds = load_dataset(demo_data)

    # scipy STFT + librosa's mel filters: librosa.feature's first call costs seconds (JIT)
    mel_fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40)

    def features(paths):
        rows = []
        for p in paths:
            _, _, spec = stft(load_audio(p, 16000), nperseg=512, noverlap=256)
            db = 10 * np.log10(mel_fb @ np.abs(spec) ** 2 + 1e-10)
            rows.append(np.r_[db.mean(axis=1), db.std(axis=1)])
        return np.array(rows)

    cur = ds.split("curated")
    single = cur[cur["labels"].map(len) == 1]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    clf.fit(features(single["path"]), [lab[0] for lab in single["labels"]])
    truth = ds.truth_for("test")
    probs = clf.predict_proba(features(ds.split("test")["path"]))
    probs = probs[:, [list(clf.classes_).index(c) for c in ds.classes]]
    y = labels_to_matrix(truth["labels"], ds.classes)
    top1 = y[np.arange(len(y)), probs.argmax(axis=1)].mean()
    lrap = label_ranking_average_precision_score(y, probs)
    chance = label_ranking_average_precision_score(y, np.random.default_rng(0).random(probs.shape))
    print(f"demo learnability (scale 0.25): top-1 {top1:.2f}, LRAP {lrap:.2f}, chance LRAP {chance:.2f}")
    assert top1 > 3 / len(ds.classes)
    assert lrap > chance + 0.25


@pytest.mark.parametrize("where, message", [
    ("afile", r"afile is a file; give a folder"),
    ("afile/sub", r"cannot write the demo dataset to .*afile/sub \(Not a directory\); give a folder you can write to"),
])
def test_a_path_that_cannot_be_the_folder_is_a_message_not_a_traceback(tmp_path, where, message):
    """FileExistsError / NotADirectoryError reached the command line as tracebacks."""
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(RaytagError, match=message):
        make_demo_dataset(tmp_path / where, seed=0, scale=TINY)
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("out, message", [
    ("", "OUT '': empty; give the folder to write the demo dataset to"),
    ("s3://bucket/x", "OUT s3://bucket/x: a URI, but the demo dataset is written to a local folder"),
])
def test_an_empty_path_or_a_bucket_uri_is_refused_before_writing(tmp_path, monkeypatch, out, message):
    """`make-demo-data ""` filled the current folder with clips and CSVs, and
    `make-demo-data s3://bucket/x` a local folder ./s3:/bucket/x, both reported as written."""
    from typer.testing import CliRunner

    from raytag.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["make-demo-data", out, "--scale", str(TINY)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not any(tmp_path.iterdir())
