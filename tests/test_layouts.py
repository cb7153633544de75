"""raytag.data.layouts and raytag.data.labels: both Kaggle layouts, every bad input
(left out, named in `skipped`, the good clips kept) and the whole-dataset errors."""
import csv
import logging
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from raytag.data import labels_to_matrix, load_dataset, matrix_to_labels, parse_label_field
from raytag.errors import DatasetError


# ----------------------------------------------------------------------------- builders
def write_audio(path, seconds=0.5, sr=16000, channels=1, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(path, x, sr, **kwargs)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


CLASSES_2019 = ["Bark", "Applause", "Chirp"]  # deliberately not sorted: the column order rules


def make_fat2019(root, submission=True):
    write_audio(root / "train_curated" / "c1.wav")
    write_audio(root / "train_curated" / "c2.wav", seconds=1.5, sr=44100, channels=2)
    write_audio(root / "train_curated" / "c3.flac", seconds=0.7, format="FLAC")
    write_audio(root / "train_curated" / "c4.ogg", seconds=1.0, sr=22050, format="OGG", subtype="VORBIS")
    write_csv(root / "train_curated.csv", ["fname", "labels"],
              [("c1.wav", "Bark"), ("c2.wav", "Bark,Applause"), ("c3.flac", "Chirp"), ("c4.ogg", "Applause")])
    write_audio(root / "train_noisy" / "n1.wav")
    write_audio(root / "train_noisy" / "n2.wav", seconds=2.0)
    write_csv(root / "train_noisy.csv", ["fname", "labels"], [("n1.wav", "Chirp"), ("n2.wav", "Bark,Chirp")])
    write_audio(root / "test" / "t1.wav")
    write_audio(root / "test" / "t2.wav")
    if submission:
        write_csv(root / "sample_submission.csv", ["fname"] + CLASSES_2019,
                  [("t1.wav", 0, 0, 0), ("t2.wav", 0, 0, 0)])
    return root


def make_fsd2018(root):
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        write_audio(root / "audio_train" / name)
    write_csv(root / "train.csv", ["fname", "label", "manually_verified"],
              [("a.wav", "Violin", 1), ("b.wav", "Bark", 0), ("c.wav", "Bark", 1), ("d.wav", "Violin", 0)])
    write_audio(root / "audio_test" / "x.wav")
    write_csv(root / "sample_submission.csv", ["fname", "label"], [("x.wav", "Bark Violin")])
    return root


def skipped_reason(ds, file):
    rows = ds.skipped[ds.skipped["file"] == file]
    assert len(rows) == 1, f"{file} not skipped exactly once:\n{ds.skipped}"
    return rows["reason"].iloc[0]


# ----------------------------------------------------------------------------- good data
def test_fat2019_layout(tmp_path):
    root = make_fat2019(tmp_path / "d")
    write_csv(root / "test_labels.csv", ["fname", "labels"], [("t1.wav", "Bark"), ("t2.wav", "Chirp,Bark")])
    write_csv(root / "train_noisy_truth.csv", ["fname", "labels"], [("n1.wav", "Bark"), ("n2.wav", "Bark,Chirp")])
    ds = load_dataset(root, sample_rate=16000)
    assert ds.layout == "fat2019"
    assert ds.classes == CLASSES_2019
    assert ds.skipped.empty and list(ds.skipped.columns) == ["file", "reason"]
    assert list(ds.clips.columns) == ["clip_id", "fname", "path", "labels", "split", "duration"]
    assert ds.clips["clip_id"].is_unique
    assert ds.clips["split"].value_counts().to_dict() == {"curated": 4, "noisy": 2, "test": 2}
    c2 = ds.clips.set_index("clip_id").loc["curated/c2.wav"]
    assert c2["labels"] == ("Bark", "Applause")
    assert c2["duration"] == pytest.approx(1.5)
    assert os.path.isabs(c2["path"]) and os.path.isfile(c2["path"])
    assert all(lab == () for lab in ds.split("test")["labels"])
    y = ds.label_matrix("curated")
    assert y.dtype == np.float32 and y.shape == (4, 3)
    np.testing.assert_array_equal(y[1], [1, 1, 0])  # c2: Bark, Applause in column order
    assert ds.label_matrix().shape == (8, 3)
    # truth files: reporting only, aligned to the split's clips
    truth = ds.truth_for("test")
    assert list(truth["clip_id"]) == ["test/t1.wav", "test/t2.wav"]
    assert truth["labels"].iloc[1] == ("Chirp", "Bark")
    assert ds.truth_for("noisy")["labels"].iloc[0] == ("Bark",)
    assert ds.truth_for("curated")["labels"].iloc[0] == ("Bark",)
    # decoding through the dataset uses its sample rate (stereo 44.1 kHz -> mono 16 kHz)
    wave = ds.audio("curated/c2.wav")
    assert wave.ndim == 1 and abs(len(wave) - 24000) <= 1


def test_truth_files_are_optional(tmp_path):
    ds = load_dataset(make_fat2019(tmp_path / "d"))
    assert ds.test_truth is None and ds.noisy_truth is None
    assert ds.truth_for("test") is None


def test_fsd2018_layout(tmp_path):
    ds = load_dataset(make_fsd2018(tmp_path / "d"))
    assert ds.layout == "fsd2018"
    assert ds.classes == ["Bark", "Violin"]
    by_id = ds.clips.set_index("clip_id")
    assert by_id.loc["curated/a.wav", "labels"] == ("Violin",)
    assert by_id.loc["noisy/b.wav", "labels"] == ("Bark",)
    assert set(ds.split("curated")["fname"]) == {"a.wav", "c.wav"}
    assert set(ds.split("noisy")["fname"]) == {"b.wav", "d.wav"}
    assert list(ds.split("test")["fname"]) == ["x.wav"]
    assert ds.skipped.empty


def test_fsd2018_bad_manually_verified(tmp_path):
    root = make_fsd2018(tmp_path / "d")
    table = pd.read_csv(root / "train.csv", dtype=str)
    table.loc[3, "manually_verified"] = "yes"
    table.to_csv(root / "train.csv", index=False)
    ds = load_dataset(root)
    assert "manually_verified must be 0 or 1" in skipped_reason(ds, "audio_train/d.wav")
    assert len(ds.clips) == 4


def test_fsd2018_row_with_several_labels_is_skipped(tmp_path):
    """2018 clips have one label each (MAP@3 scores one): a row "Bark,Meow" is left out with
    its reason, not trained on as a clip with two labels."""
    root = make_fsd2018(tmp_path / "d")
    table = pd.read_csv(root / "train.csv", dtype=str)
    table.loc[1, "label"] = "Bark,Meow"
    table.to_csv(root / "train.csv", index=False)
    ds = load_dataset(root)
    assert skipped_reason(ds, "audio_train/b.wav") == (
        "train.csv line 3: FSDKaggle2018 clips have exactly one label; this row has 2 (Bark,Meow)")
    assert "noisy/b.wav" not in set(ds.clips["clip_id"])
    assert all(len(labels) == 1 for labels in ds.clips["labels"] if labels)
    assert ds.classes == ["Bark", "Violin"]  # Meow was on the skipped row only
    assert len(ds.skipped) == 1 and len(ds.clips) == 4  # the other clips kept; b.wav not "unlisted"


def test_symlinked_audio_folder_is_allowed(tmp_path):
    """Data kept on another disk and linked in is a normal set-up, not an escape."""
    elsewhere = make_fat2019(tmp_path / "big_disk")
    root = tmp_path / "d"
    root.mkdir()
    for name in ("train_curated", "train_noisy", "test"):
        (root / name).symlink_to(elsewhere / name, target_is_directory=True)
    for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv"):
        (root / name).write_bytes((elsewhere / name).read_bytes())
    ds = load_dataset(root)
    assert ds.skipped.empty and len(ds.clips) == 8


def test_missing_sample_submission_vocab_from_curated(tmp_path, caplog):
    root = make_fat2019(tmp_path / "d", submission=False)
    write_csv(root / "train_noisy.csv", ["fname", "labels"], [("n1.wav", "Chirp"), ("n2.wav", "Meow")])
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        ds = load_dataset(root)
    assert ds.classes == ["Applause", "Bark", "Chirp"]
    assert "sample_submission.csv missing" in caplog.text
    assert "'Meow' is not a class" in skipped_reason(ds, "train_noisy/n2.wav")
    assert "not listed in sample_submission.csv" in skipped_reason(ds, "test/t1.wav")
    assert ds.split("test").empty


# ----------------------------------------------------------------------------- bad clips
def test_every_bad_clip_is_skipped_with_its_reason(tmp_path, caplog):
    root = make_fat2019(tmp_path / "d")
    outside = tmp_path / "outside.wav"
    write_audio(outside)
    write_audio(root / "x.wav")  # inside root but outside train_curated/: still ".." is refused
    (root / "train_curated" / "link.wav").symlink_to(outside)
    (root / "train_curated" / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 4)
    write_audio(root / "train_curated" / "empty.wav", seconds=0)
    write_audio(root / "train_curated" / "short.wav", seconds=0.01)
    write_audio(root / "train_curated" / "unlisted.wav")
    write_audio(root / "train_curated" / "nolabel.wav")
    write_audio(root / "test" / "stray.wav")
    write_csv(root / "train_curated.csv", ["fname", "labels"], [
        ("c1.wav", "Bark"),
        ("c2.wav", "Bark,Applause"),
        ("c3.flac", "Chirp"),
        ("c4.ogg", "Applause"),
        ("gone.wav", "Bark"),
        ("c3.flac", "Bark"),  # duplicate: first kept
        ("../x.wav", "Bark"),
        (str(outside), "Bark"),
        ("link.wav", "Bark"),
        ("garbage.wav", "Bark"),
        ("empty.wav", "Bark"),
        ("short.wav", "Bark"),
        ("nolabel.wav", ""),
        ("c1.wav ", "Chirp"),  # same fname after trimming spaces: duplicate
    ])
    write_csv(root / "train_noisy.csv", ["fname", "labels"], [("n1.wav", "Chirp"), ("n2.wav", "Bark,Woof")])
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        ds = load_dataset(root)

    assert set(ds.split("curated")["fname"]) == {"c1.wav", "c2.wav", "c3.flac", "c4.ogg"}
    assert ds.split("curated").set_index("fname").loc["c3.flac", "labels"] == ("Chirp",)
    assert list(ds.split("noisy")["fname"]) == ["n1.wav"]
    assert len(ds.split("test")) == 2

    assert "file not found" in skipped_reason(ds, "train_curated/gone.wav")
    assert "train_curated.csv line 6" in skipped_reason(ds, "train_curated/gone.wav")
    assert "duplicate fname (line 4 is kept)" in skipped_reason(ds, "train_curated/c3.flac")
    assert "duplicate fname (line 2 is kept)" in skipped_reason(ds, "train_curated/c1.wav")
    assert "escapes the data folder" in skipped_reason(ds, "train_curated/../x.wav")
    assert "absolute path" in skipped_reason(ds, str(outside))
    assert "resolves outside the data folder" in skipped_reason(ds, "train_curated/link.wav")
    assert "unreadable audio header" in skipped_reason(ds, "train_curated/garbage.wav")
    assert "empty audio file" in skipped_reason(ds, "train_curated/empty.wav")
    assert "too short: 0.010 s" in skipped_reason(ds, "train_curated/short.wav")
    assert "no labels" in skipped_reason(ds, "train_curated/nolabel.wav")
    assert skipped_reason(ds, "train_curated/unlisted.wav") == "not listed in train_curated.csv"
    assert skipped_reason(ds, "test/stray.wav") == "not listed in sample_submission.csv"
    assert "label 'Woof' is not a class" in skipped_reason(ds, "train_noisy/n2.wav")
    assert len(ds.skipped) == 13

    # one warning per skipped clip, plus a summary
    lines = [r.getMessage() for r in caplog.records if r.name == "raytag.data"]
    assert sum(m.startswith("skipped ") for m in lines) == 13
    assert any("13 clips skipped" in m for m in lines)

    out = ds.write_skipped(tmp_path)
    assert out == tmp_path / "skipped.csv"
    back = pd.read_csv(out)
    assert list(back.columns) == ["file", "reason"] and len(back) == 13


def test_a_rejected_row_does_not_shadow_a_good_row_of_the_same_fname(tmp_path):
    """`c1.wav,Brak` then `c1.wav,Bark`: the misspelt row is skipped, the good one kept
    (both were dropped, the second as a "duplicate" of a row that was not kept)."""
    root = make_fat2019(tmp_path / "d")
    write_csv(root / "train_curated.csv", ["fname", "labels"], [
        ("c1.wav", "Brak"), ("c1.wav", "Bark"), ("c1.wav", "Chirp"),
        ("c2.wav", "Bark,\nApplause"), ("c3.flac", "Chirp"), ("c4.ogg", "Applause"), ("c4.ogg", "Bark"),
    ])
    ds = load_dataset(root)
    curated = ds.split("curated").set_index("fname")
    assert curated.loc["c1.wav", "labels"] == ("Bark",)
    reasons = ds.skipped[ds.skipped["file"] == "train_curated/c1.wav"]["reason"].tolist()
    assert reasons == ["train_curated.csv line 2: label 'Brak' is not a class (classes: sample_submission.csv columns)",
                       "train_curated.csv line 4: duplicate fname (line 3 is kept) with other labels: "
                       "Chirp here, Bark there; correct the row that is wrong"]
    # c2's quoted labels span two lines: later rows are named by the line they are on
    assert curated.loc["c2.wav", "labels"] == ("Bark", "Applause")
    assert skipped_reason(ds, "train_curated/c4.ogg") == ("train_curated.csv line 9: duplicate fname (line 8 is kept) "
                                                          "with other labels: Bark here, Applause there; "
                                                          "correct the row that is wrong")


def test_a_duplicate_fname_with_the_same_labels_is_only_a_duplicate(tmp_path):
    root = make_fat2019(tmp_path / "d")
    write_csv(root / "train_curated.csv", ["fname", "labels"], [
        ("c1.wav", "Bark"), ("c2.wav", "Bark,Applause"), ("c2.wav", "Applause,Bark"),
        ("c3.flac", "Chirp"), ("c4.ogg", "Applause"),
    ])
    ds = load_dataset(root)
    assert skipped_reason(ds, "train_curated/c2.wav") == "train_curated.csv line 4: duplicate fname (line 3 is kept)"


def test_a_row_with_more_fields_than_the_header_is_skipped_and_named(tmp_path):
    """`n1.wav,Chirp,Bark` (labels unquoted): pandas took the first column as the index and
    shifted every row, so each was dropped for a wrong reason ("train_noisy/Chirp: file not
    found", the files "not listed"). The row is now skipped with how to write it; the others are read."""
    root = make_fat2019(tmp_path / "d")
    (root / "train_noisy.csv").write_text("fname,labels\nn1.wav,Chirp,Bark\nn2.wav,Bark\n")
    ds = load_dataset(root)
    assert skipped_reason(ds, "train_noisy/n1.wav") == (
        'train_noisy.csv line 2: 3 fields but the header has 2; quote a field that holds several labels: '
        'a.wav,"Bark,Meow"')
    assert list(ds.split("noisy")["fname"]) == ["n2.wav"]
    assert ds.split("noisy")["labels"].tolist() == [("Bark",)]
    assert len(ds.skipped) == 1  # n1.wav is not also "not listed"


def test_over_long_rows_later_in_the_file_and_a_trailing_comma(tmp_path):
    """Later in the file pandas stopped with "Expected 2 fields in line 4, saw 3" (the whole
    dataset refused, with no word of quoting); rows after a quoted field spanning lines keep
    their own line numbers."""
    root = make_fat2019(tmp_path / "d")
    (root / "train_curated.csv").write_text(
        'fname,labels\nc1.wav,Bark\nc2.wav,"Bark,\nApplause"\nc3.flac,Chirp,\nc4.ogg,Applause,Bark\n')
    ds = load_dataset(root)
    assert set(ds.split("curated")["fname"]) == {"c1.wav", "c2.wav"}
    assert skipped_reason(ds, "train_curated/c3.flac") == (
        "train_curated.csv line 5: 3 fields but the header has 2 (a trailing comma?); remove the empty field")
    assert skipped_reason(ds, "train_curated/c4.ogg").startswith(
        "train_curated.csv line 6: 3 fields but the header has 2; quote a field")



def write_r_table(path, header, rows):
    """What R's write.table(df, file, sep = ",") writes: every field quoted, and a row name
    ("1", "2", ...) before each row that the header has no field for."""
    quoted = lambda fields: ",".join(f'"{f}"' for f in fields)
    lines = [quoted(header)] + [quoted([str(i), *row]) for i, row in enumerate(rows, start=1)]
    path.write_text("\n".join(lines) + "\n")


def test_r_row_names_on_every_row_are_left_out_as_pandas_left_them(tmp_path, caplog):
    """R's write.table writes a row name before every row: pandas read them as its index and the
    file loaded; 8928786 skipped every row as unquoted labels, naming "train_curated/1" as the
    file, and the dataset stopped with "no usable curated clips"."""
    root = make_fat2019(tmp_path / "d")
    write_r_table(root / "train_curated.csv", ["fname", "labels"],
                  [("c1.wav", "Bark"), ("c2.wav", "Bark,Applause"), ("c3.flac", "Chirp"), ("c4.ogg", "Applause")])
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        ds = load_dataset(root)
    curated = ds.split("curated")
    assert list(curated["fname"]) == ["c1.wav", "c2.wav", "c3.flac", "c4.ogg"]
    assert curated["labels"].tolist() == [("Bark",), ("Bark", "Applause"), ("Chirp",), ("Applause",)]
    assert ds.skipped.empty
    assert "train_curated.csv: every row has one field more than the header, first a row number" in caplog.text


def test_every_row_one_field_longer_without_row_numbers_names_both_causes(tmp_path):
    """Every row one field longer, its first field a file name: unquoted labels on every row, or
    row names R was given. Neither can be told apart, so the reason names both."""
    root = make_fat2019(tmp_path / "d")
    (root / "train_noisy.csv").write_text("fname,labels\nn1.wav,Chirp,Bark\nn2.wav,Bark,Chirp\n")
    ds = load_dataset(root)
    assert skipped_reason(ds, "train_noisy/n1.wav") == (
        "train_noisy.csv line 2: 3 fields but the header has 2, like every row of the file: a row-name column? "
        "Write it without row names (R: write.csv(df, row.names = FALSE)); "
        'else quote a field that holds several labels: a.wav,"Bark,Meow"')


def test_an_over_long_row_of_scores_or_2018_labels_gets_advice_for_its_form(tmp_path):
    """The label-quoting hint was given for every file: a sample_submission.csv row holds
    scores, and a 2018 file separates its labels with spaces."""
    root = make_fat2019(tmp_path / "d")
    (root / "sample_submission.csv").write_text("fname,Bark,Applause,Chirp\nt1.wav,0,0,0,0\nt2.wav,0,0,0\n")
    assert skipped_reason(load_dataset(root), "test/t1.wav") == (
        "sample_submission.csv line 2: 5 fields but the header has 4; "
        "check the row for a stray comma: one value for each column of the header")
    root = make_fsd2018(tmp_path / "e")
    (root / "train.csv").write_text("fname,label,manually_verified\na.wav,Violin,Bark,1\nb.wav,Bark,0\n"
                                    "c.wav,Bark,1\nd.wav,Violin,0\n")
    assert "a 2018 file separates labels with spaces, not commas" in skipped_reason(load_dataset(root), "audio_train/a.wav")


@pytest.mark.parametrize("rate", [44100, 22050])
def test_header_check_and_decoder_agree_on_the_shortest_resampled_clip(tmp_path, rate):
    """At 44.1 kHz a 2822-frame clip resamples to 1024 samples at 16 kHz: one n_fft frame,
    usable. The header check compared seconds (0.06399 < 0.064) and left it out."""
    from raytag.config import FeatureConfig
    from raytag.data.audio import load_audio, min_samples
    from raytag.errors import AudioDecodeError

    features = FeatureConfig(sample_rate=16000, n_fft=1024)
    limit = min_samples(features) * rate // 16000  # frames near one frame's length once resampled
    root = tmp_path / "d"
    lengths = range(limit - 4, limit + 5)
    (root / "train_curated").mkdir(parents=True)
    for n in lengths:
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
        sf.write(root / "train_curated" / f"c{n}.wav", tone, rate)
    write_csv(root / "train_curated.csv", ["fname", "labels"], [(f"c{n}.wav", "Bark") for n in lengths])
    write_csv(root / "sample_submission.csv", ["fname", "Bark"], [])
    kept = set(load_dataset(root, features=features).split("curated")["fname"])
    for n in lengths:
        path = root / "train_curated" / f"c{n}.wav"
        assert sf.info(path).frames == n
        try:
            load_audio(path, 16000, min_samples=min_samples(features))
            decodes = True
        except AudioDecodeError:
            decodes = False
        assert (f"c{n}.wav" in kept) == decodes, f"{n} frames at {rate} Hz: header and decoder disagree"
    assert f"c{limit - 4}.wav" not in kept and f"c{limit + 4}.wav" in kept


def test_min_seconds_is_an_argument(tmp_path):
    root = make_fat2019(tmp_path / "d")
    ds = load_dataset(root, min_seconds=0.6)  # c1, n1, t1, t2 are 0.5 s
    assert set(ds.split("curated")["fname"]) == {"c2.wav", "c3.flac", "c4.ogg"}
    assert "need at least 0.6 s" in skipped_reason(ds, "train_curated/c1.wav")


# ----------------------------------------------------------------------------- whole-dataset errors
def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "f.csv").write_text("x")
    with pytest.raises(DatasetError, match="pass the dataset folder"):
        load_dataset(tmp_path / "f.csv")


def test_unknown_layout_names_expected_files(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    text = str(err.value)
    for name in ("train_curated.csv", "train.csv", "sample_submission.csv", "readme.txt"):
        assert name in text


def test_csv_missing_columns(tmp_path):
    root = make_fat2019(tmp_path / "d")
    write_csv(root / "train_curated.csv", ["fname", "tags"], [("c1.wav", "Bark")])
    with pytest.raises(DatasetError, match=r"train_curated.csv: missing column\(s\) labels; found fname, tags"):
        load_dataset(root)
    root18 = make_fsd2018(tmp_path / "e")
    write_csv(root18 / "train.csv", ["fname", "label"], [("a.wav", "Bark")])
    with pytest.raises(DatasetError, match="manually_verified"):
        load_dataset(root18)


def test_no_usable_curated_clips(tmp_path):
    root = make_fat2019(tmp_path / "d")
    write_csv(root / "train_curated.csv", ["fname", "labels"], [("gone.wav", "Bark"), ("c1.wav", "Nope")])
    with pytest.raises(DatasetError, match="no usable curated clips.*file not found"):
        load_dataset(root)


def test_a_missing_test_folder_means_no_test_clips(tmp_path, caplog):
    """The test audio is only predicted: without test/ the run trains and reports no test
    scores, the classes still those of sample_submission.csv (moving the file away, as the
    error advised, changed the class list and its order)."""
    root = make_fat2019(tmp_path / "d")
    for p in (root / "test").iterdir():
        p.unlink()
    (root / "test").rmdir()
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        ds = load_dataset(root)
    assert ds.classes == CLASSES_2019
    assert ds.split("test").empty and len(ds.split("curated")) == 4
    assert "sample_submission.csv lists 2 test clips but test/ is missing: no test clips" in caplog.text
    root18 = make_fsd2018(tmp_path / "e")
    for p in (root18 / "audio_test").iterdir():
        p.unlink()
    (root18 / "audio_test").rmdir()
    assert load_dataset(root18).split("test").empty


def test_missing_audio_folder(tmp_path):
    root = make_fat2019(tmp_path / "d")
    for p in (root / "train_noisy").iterdir():
        p.unlink()
    (root / "train_noisy").rmdir()
    with pytest.raises(DatasetError, match="train_noisy.csv lists 2 clips but the audio folder train_noisy/ is missing"):
        load_dataset(root)


# ----------------------------------------------------------------------------- labels
def test_parse_label_field():
    assert parse_label_field("Bark,Walk_and_footsteps") == ("Bark", "Walk_and_footsteps")
    assert parse_label_field(" a , b,,a ") == ("a", "b")
    assert parse_label_field("") == () and parse_label_field(None) == () and parse_label_field(float("nan")) == ()


def test_labels_matrix_round_trip():
    classes = ["x", "y", "z"]
    y = labels_to_matrix([("z",), ("x", "y"), ()], classes)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 1, 0], [0, 0, 0]])
    assert matrix_to_labels(y, classes) == [("z",), ("x", "y"), ()]
    assert matrix_to_labels(np.array([[0.2, 0.7, 0.5]]), classes, threshold=0.6) == [("y",)]
    with pytest.raises(ValueError, match="'w'"):
        labels_to_matrix([("w",)], classes)
    with pytest.raises(ValueError, match="3 classes"):
        matrix_to_labels(np.zeros((1, 2)), classes)


def test_unreadable_csv(tmp_path):
    root = make_fat2019(tmp_path / "d")
    (root / "train_noisy.csv").write_text('fname,labels\n"n1.wav,Chirp\n')  # quote never closed
    with pytest.raises(DatasetError, match="train_noisy.csv: not a readable CSV file"):
        load_dataset(root)


def test_a_csv_in_another_encoding_is_refused_with_what_to_do(tmp_path):
    root = make_fat2019(tmp_path / "d")
    (root / "train_noisy.csv").write_bytes("fname,labels\nn1.wav,Chirp\nn2.wav,Bark\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="train_noisy.csv: not UTF-8 text .*; save the file as UTF-8"):
        load_dataset(root)
