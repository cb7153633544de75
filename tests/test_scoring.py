"""`raytag score` and the submission/truth readers and writers."""
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raytag.cli import app
from raytag.data.submission import write_submission_2018, write_submission_2019
from raytag.metrics import lwlrap, map_at_3
from raytag.data.truth import read_truth
from raytag.console.score import score_command
from raytag.scoring import (
    ScoringError,
    map_at_3_from_lists,
    read_submission,
    score_files,
)

CLASSES = ["Bark", "Rain", "Chirp", "Siren"]
TRUTH = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]])
SCORES = np.array([[0.9, 0.8, 0.1, 0.3], [0.2, 0.1, 0.7, 0.4], [0.6, 0.5, 0.4, 0.9]])


def write_truth_2019(path, fnames, y, classes=CLASSES):
    labels = [",".join(c for c, on in zip(classes, row) if on) for row in y]
    pd.DataFrame({"fname": fnames, "labels": labels}).to_csv(path, index=False)
    return path


@pytest.fixture
def files_2019(tmp_path):
    fnames = ["a.wav", "b.wav", "c.wav"]
    truth = write_truth_2019(tmp_path / "truth.csv", fnames, TRUTH)
    sub = write_submission_2019(fnames, CLASSES, SCORES, tmp_path / "sub.csv")
    return truth, sub


def write_sample_submission(folder, classes=CLASSES):
    """The class list beside the truth (Siren has no positive in TRUTH, so only this names it)."""
    pd.DataFrame(columns=["fname"] + list(classes)).to_csv(folder / "sample_submission.csv", index=False)


def test_worked_example_through_files(files_2019, capsys):
    truth, sub = files_2019
    write_sample_submission(truth.parent)
    result = score_command(truth=truth, submission=sub, per_class=True)
    assert result["lwlrap"] == pytest.approx(0.611111, abs=1e-6)
    out = capsys.readouterr().out
    assert "lwlrap: 0.611111" in out and "Bark" in out and "per-class" in out
    assert np.sum(result["per_class"] * result["weights"]) == pytest.approx(result["lwlrap"])


def test_rows_are_matched_by_fname_not_order(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.4).astype(int)
    y[y.sum(1) == 0, 0] = 1
    s = rng.random((40, 4))
    fnames = [f"{i:03d}.wav" for i in range(40)]
    write_truth_2019(tmp_path / "t.csv", fnames, y)
    perm = rng.permutation(40)
    write_submission_2019([fnames[i] for i in perm], CLASSES[::-1], s[perm][:, ::-1], tmp_path / "s.csv")
    assert score_files(tmp_path / "t.csv", tmp_path / "s.csv")["lwlrap"] == pytest.approx(lwlrap(y, s), abs=1e-6)


def test_cli_score(files_2019):
    truth, sub = files_2019
    write_sample_submission(truth.parent)
    res = CliRunner().invoke(app, ["score", "--truth", str(truth), "--submission", str(sub)])
    assert res.exit_code == 0, res.output
    assert "0.611111" in res.output


def test_missing_files_are_clear(tmp_path, files_2019):
    truth, sub = files_2019
    with pytest.raises(ScoringError, match="truth file not found"):
        score_files(tmp_path / "nope.csv", sub)
    with pytest.raises(ScoringError, match="submission file not found"):
        score_files(truth, tmp_path / "nope.csv")
    res = CliRunner().invoke(app, ["score", "--truth", str(tmp_path / "nope.csv"), "--submission", str(sub)])
    assert res.exit_code == 2 and "not found" in res.output


def test_clips_missing_from_submission_are_listed(tmp_path):
    fnames = [f"{i}.wav" for i in range(10)]
    write_truth_2019(tmp_path / "t.csv", fnames, np.eye(4)[np.arange(10) % 4])
    write_submission_2019(fnames[:3], CLASSES, np.ones((3, 4)), tmp_path / "s.csv")
    with pytest.raises(ScoringError, match=r"7 of the 10 clips .* 3.wav, 4.wav, 5.wav, 6.wav, 7.wav \.\.\. and 2 more"):
        score_files(tmp_path / "t.csv", tmp_path / "s.csv")


def test_unknown_and_missing_class_columns(tmp_path, files_2019):
    truth, _ = files_2019
    write_submission_2019(["a.wav", "b.wav", "c.wav"], ["Bark", "Rain", "Chirpp", "Siren"], SCORES, tmp_path / "s.csv")
    with pytest.raises(ScoringError, match="no score column .*Chirp"):
        score_files(truth, tmp_path / "s.csv")
    # with a sample_submission beside the truth, an extra column is named as unknown
    pd.DataFrame(columns=["fname"] + CLASSES).to_csv(tmp_path / "sample_submission.csv", index=False)
    write_submission_2019(["a.wav", "b.wav", "c.wav"], CLASSES + ["Meow"], np.hstack([SCORES, np.zeros((3, 1))]),
                          tmp_path / "s2.csv")
    with pytest.raises(ScoringError, match="not in .*sample_submission.csv: Meow"):
        score_files(truth, tmp_path / "s2.csv")
    # and a class of the sample submission left out: fewer competitors would raise lwlrap
    pd.DataFrame(columns=["fname"] + CLASSES + ["Meow"]).to_csv(tmp_path / "sample_submission.csv", index=False)
    write_submission_2019(["a.wav", "b.wav", "c.wav"], CLASSES, SCORES, tmp_path / "s3.csv")
    with pytest.raises(ScoringError, match="no score column for Meow of .*sample_submission.csv"):
        score_files(truth, tmp_path / "s3.csv")


@pytest.mark.parametrize("value, kind", [("abc", "non-numeric"), ("", "empty or NaN"), ("nan", "empty or NaN"),
                                         ("inf", "infinite")])
def test_bad_scores_are_refused(files_2019, tmp_path, value, kind):
    truth, sub = files_2019
    df = pd.read_csv(sub, dtype=str, keep_default_na=False)
    df.loc[1, "Rain"] = value
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ScoringError, match=f"column 'Rain' has 1 {kind} scores: b.wav"):
        read_submission(tmp_path / "bad.csv")


def test_malformed_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ScoringError, match="empty"):
        read_truth(tmp_path / "empty.csv")
    (tmp_path / "nofname.csv").write_text("name,labels\na,Bark\n")
    with pytest.raises(ScoringError, match="no 'fname' column"):
        read_truth(tmp_path / "nofname.csv")
    (tmp_path / "dup.csv").write_text("fname,Bark\na,1\na,2\n")
    with pytest.raises(ScoringError, match="more than once.*a"):
        read_submission(tmp_path / "dup.csv")
    (tmp_path / "nolabels.csv").write_text("fname,tags\na,Bark\n")
    with pytest.raises(ScoringError, match="'labels' column"):
        read_truth(tmp_path / "nolabels.csv")


def test_layout_mismatch(tmp_path, files_2019):
    truth, _ = files_2019
    pd.DataFrame({"fname": ["a.wav"], "label": ["Bark"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ScoringError, match="2019 .* but the submission"):
        score_files(truth, tmp_path / "s.csv")


def test_2018_map_at_3(tmp_path, capsys):
    classes = ["Bark", "Rain", "Chirp", "Siren", "Meow"]
    truth = pd.DataFrame({
        "fname": ["a", "b", "c", "d", "e"],
        "label": ["Bark", "Rain", "Chirp", "Siren", "None"],  # "None" is a label, not a missing value
        "usage": ["Public", "Private", "Public", "Public", "Ignored"],
    })
    truth.to_csv(tmp_path / "t.csv", index=False)
    scores = np.array([
        [0.9, 0.1, 0.2, 0.0, 0.0],  # Bark first -> 1
        [0.9, 0.8, 0.2, 0.0, 0.0],  # Rain second -> 1/2
        [0.9, 0.8, 0.7, 0.0, 0.0],  # Chirp third -> 1/3
        [0.9, 0.8, 0.7, 0.1, 0.0],  # Siren fourth -> 0
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ])
    write_submission_2018(list("abcde"), classes, scores, tmp_path / "s.csv")
    assert pd.read_csv(tmp_path / "s.csv")["label"][0] == "Bark Chirp Rain"
    result = score_command(truth=tmp_path / "t.csv", submission=tmp_path / "s.csv", per_class=False)
    expected = (1 + 1 / 2 + 1 / 3 + 0) / 4
    assert result["map@3"] == pytest.approx(expected)
    assert map_at_3(np.arange(4), scores[:4]) == pytest.approx(expected)
    assert "MAP@3: 0.458333" in capsys.readouterr().out


def test_2018_submission_checks(tmp_path):
    pd.DataFrame({"fname": ["a"], "label": ["Bark"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"fname": ["a"], "label": ["Bark Rain Chirp Siren"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ScoringError, match="at most 3"):
        read_submission(tmp_path / "s.csv")
    pd.DataFrame({"fname": ["a"], "label": ["Bork"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ScoringError, match="labels that no clip .*Bork"):
        score_files(tmp_path / "t.csv", tmp_path / "s.csv")
    pd.DataFrame({"fname": ["a"], "label": ["Bark"], "usage": ["Ignored"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"fname": ["a"], "label": ["Bark"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ScoringError, match="no clip to score"):
        score_files(tmp_path / "t.csv", tmp_path / "s.csv")


def test_a_2018_submission_with_comma_separated_labels_is_told_to_use_spaces(tmp_path):
    """The advice was to quote the labels (a.wav,"Bark,Meow"), which reads as the one label
    'Bark,Meow,Rain' in a 2018 submission: scored wrong, or refused as an unknown label."""
    (tmp_path / "s.csv").write_text("fname,label\na.wav,Bark,Meow,Rain\nb.wav,Rain\n")
    with pytest.raises(ScoringError, match=r"s.csv: line 2: 4 fields but the header has 2; a 2018 file separates "
                                           r"labels with spaces, not commas \(a submission lists up to 3: "
                                           r"a.wav,Bark Meow Rain"):
        read_submission(tmp_path / "s.csv")


def test_map_from_lists_matches_metric_on_random_data():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(12)]
    scores = rng.random((200, 12))
    true_idx = rng.integers(0, 12, 200)
    lists = [tuple(classes[j] for j in np.argsort(-row)[:3]) for row in scores]
    got = map_at_3_from_lists([classes[i] for i in true_idx], lists)
    assert got == pytest.approx(map_at_3(true_idx, scores))


def test_writers_round_trip_and_refuse_nan(tmp_path):
    rng = np.random.default_rng(1)
    s = rng.random((5, 4)).astype(np.float32)
    path = write_submission_2019([f"{i}.wav" for i in range(5)], CLASSES, s, tmp_path / "out" / "sub.csv")
    back = read_submission(path)
    assert back.classes == CLASSES and back.fnames[0] == "0.wav"
    np.testing.assert_allclose(back.scores, s, rtol=1e-6)
    s[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        write_submission_2019([f"{i}.wav" for i in range(5)], CLASSES, s, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="match"):
        write_submission_2018(["a"], CLASSES, np.zeros((2, 4)), tmp_path / "y.csv")


def test_a_2018_submission_with_extra_columns_is_named_as_such(tmp_path):
    """fname,label,usage was read as a 2019 score table and refused for 'non-numeric scores'."""
    pd.DataFrame({"fname": ["a", "b"], "label": ["Bark Rain", "Rain"], "usage": ["Public", "Private"]}).to_csv(
        tmp_path / "s.csv", index=False)
    with pytest.raises(ScoringError, match="a 2018 submission has exactly the columns fname,label; found extra: usage"):
        read_submission(tmp_path / "s.csv")
    # a 2019 class called "label" is a score column like any other
    pd.DataFrame({"fname": ["a"], "label": ["0.3"], "Rain": ["0.7"]}).to_csv(tmp_path / "s19.csv", index=False)
    assert read_submission(tmp_path / "s19.csv").classes == ["label", "Rain"]


def test_a_written_submission_scores_as_the_scores_in_memory(tmp_path):
    """float32 scores near 1 differ in the 8th digit: written with 7, the true class's
    0.99999994 and another's 0.99999988 became a tie and the file scored lower."""
    scores = np.array([[0.99999994, 0.99999988, 0.5], [0.2, 0.99999976, 0.99999982]], dtype=np.float32)
    truth = np.array([[1, 0, 0], [0, 1, 0]])
    classes = CLASSES[:3]
    write_truth_2019(tmp_path / "t.csv", ["a", "b"], truth, classes)
    write_sample_submission(tmp_path, classes)
    write_submission_2019(["a", "b"], classes, scores, tmp_path / "s.csv")
    in_memory = lwlrap(truth, scores.astype(np.float64))
    assert in_memory == pytest.approx(0.75)
    assert score_files(tmp_path / "t.csv", tmp_path / "s.csv")["lwlrap"] == pytest.approx(in_memory)


def test_rows_the_2018_truth_ignores_are_reported_as_ignored(tmp_path, capsys):
    """A truth row with usage "Ignored" was reported as a submission row 'not in the truth'."""
    pd.DataFrame({"fname": ["a", "b", "e"], "label": ["Bark", "Rain", "Chirp"],
                  "usage": ["Public", "Private", "Ignored"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"fname": ["a", "b", "e", "z"], "label": ["Bark", "Rain Bark", "Chirp", "Bark"]}).to_csv(
        tmp_path / "s.csv", index=False)
    result = score_command(truth=tmp_path / "t.csv", submission=tmp_path / "s.csv")
    assert result["map@3"] == pytest.approx(1.0) and result["n_clips"] == 2
    assert (result["ignored"], result["extra"]) == (["e"], ["z"])
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "1 submission rows are truth clips with usage 'Ignored', not scored (as on Kaggle): e" in err
    assert "1 submission rows are not in the truth and were not scored: z" in err
