"""raytag.data.truth: the one reader of truth files, strict (scoring, ensemble) and
lenient (a dataset's optional truth files), and the alignment to clip ids."""
import logging

import numpy as np
import pytest

from raytag.data.truth import LAYOUT_2018, LAYOUT_2019, read_truth, truth_matrix
from raytag.errors import TruthError

CLASSES = ["Bark", "Rain", "Chirp"]


def test_lenient_drops_bad_rows_with_a_warning(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text('fname,labels\na.wav,"Bark,Rain"\nb.wav,\nc.wav,Meow\na.wav,Chirp\nd.wav, Chirp \n')
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        truth = read_truth(path, strict=False, classes=CLASSES)
    assert truth.layout == LAYOUT_2019
    assert truth.fnames == ["a.wav", "d.wav"]  # b: no label, c: unknown label, a again: repeat
    assert truth.labels == [("Bark", "Rain"), ("Chirp",)]
    assert "2 rows with no or unknown labels ignored" in caplog.text
    assert "1 rows repeat an fname and are ignored" in caplog.text
    assert "with other labels than the first: a.wav" in caplog.text


def test_lenient_ignores_a_missing_or_unusable_file(tmp_path, caplog):
    assert read_truth(tmp_path / "none.csv", strict=False, classes=CLASSES) is None
    (tmp_path / "cols.csv").write_text("name,tags\na,Bark\n")
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        assert read_truth(tmp_path / "cols.csv", strict=False, classes=CLASSES) is None
    assert "needs columns fname and labels" in caplog.text
    with pytest.raises(TruthError, match="truth file not found"):
        read_truth(tmp_path / "none.csv")  # strict


def test_2018_form_leaves_out_unscored_rows_in_both_modes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("fname,label,usage\na,Bark,Public\nb,Rain,Ignored\nc,Chirp,Private\n")
    for strict in (True, False):
        truth = read_truth(path, strict=strict, classes=CLASSES)
        assert truth.layout == LAYOUT_2018 and truth.fnames == ["a", "c"]
        assert truth.labels == [("Bark",), ("Chirp",)]
    path.write_text("fname,label\na,Bark Rain\nb,Rain\n")
    with pytest.raises(TruthError, match="exactly one label.*: a$"):
        read_truth(path)
    assert read_truth(path, strict=False, classes=CLASSES).fnames == ["b"]


def test_strict_reads_a_trials_clip_id_truth_and_refuses_repeats(tmp_path):
    path = tmp_path / "oof_truth.csv"
    path.write_text('clip_id,labels\ncurated/a.wav,"Rain,Bark"\ncurated/b.wav,\n')
    table = read_truth(path).table()
    assert list(table["clip_id"]) == ["curated/a.wav", "curated/b.wav"]
    assert list(table["fname"]) == ["a.wav", "b.wav"]
    assert table["labels"].tolist() == [("Rain", "Bark"), ()]
    path.write_text("clip_id,labels\ncurated/a.wav,Rain\ncurated/a.wav,Bark\n")
    with pytest.raises(TruthError, match="clip_id appears more than once"):
        read_truth(path)


def test_truth_matrix_aligns_by_clip_id_else_by_file_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('fname,labels\nx.wav,Chirp\ny.wav,"Bark,Rain"\n')
    by_name = read_truth(path).table()
    y = truth_matrix(by_name, ["test/y.wav", "test/x.wav"], CLASSES)
    assert np.array_equal(y, [[1, 1, 0], [0, 0, 1]])
    with pytest.raises(TruthError, match="no truth for clip test/z.wav"):
        truth_matrix(by_name, ["test/z.wav"], CLASSES)


def test_2018_labels_joined_by_a_comma_are_several_labels_not_a_class(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text('fname,label\na,Bark\nb,"Bark,Rain"\n')
    with pytest.raises(TruthError, match="exactly one label.*: b$"):
        read_truth(path)
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        truth = read_truth(path, strict=False)
    assert truth.fnames == ["a"] and "1 rows with no or unknown labels ignored" in caplog.text


def test_lenient_repeats_with_the_same_labels_are_dropped_with_a_plain_warning(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text('fname,labels\na.wav,"Bark,Rain"\na.wav,"Rain,Bark"\n')
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        truth = read_truth(path, strict=False, classes=CLASSES)
    assert truth.fnames == ["a.wav"] and truth.labels == [("Bark", "Rain")]
    assert "1 rows repeat an fname" in caplog.text and "other labels" not in caplog.text


def test_unquoted_labels_are_refused_strict_and_dropped_lenient(tmp_path, caplog):
    """`a.wav,Bark,Rain` (more fields than the header): pandas took the first column as the
    index, so strict said "fname appears more than once: Bark" and lenient kept one bogus
    row ('Bark',): ('Rain',). Strict now names the line and how to quote; lenient drops it."""
    path = tmp_path / "t.csv"
    path.write_text("fname,labels\na.wav,Bark,Rain\nb.wav,Bark\nc.wav,Chirp\nd.wav,Rain,Chirp\n")
    with pytest.raises(TruthError, match=r't.csv: line 2: 3 fields but the header has 2; quote a field that '
                                         r'holds several labels: a.wav,"Bark,Meow" \(and 1 more such rows, on lines 5\)'):
        read_truth(path)
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        truth = read_truth(path, strict=False, classes=CLASSES)
    assert truth.fnames == ["b.wav", "c.wav"] and truth.labels == [("Bark",), ("Chirp",)]
    assert "2 rows with more fields than the header ignored; line 2: 3 fields" in caplog.text


def test_r_row_names_are_left_out_in_both_modes(tmp_path, caplog):
    """R's write.table (a row name before each row, none in the header) loaded before
    8928786, which refused it strict and dropped every row lenient, as unquoted labels."""
    path = tmp_path / "t.csv"
    path.write_text('"fname","labels"\n"1","a.wav","Bark,Rain"\n"2","b.wav","Chirp"\n')
    for strict in (True, False):
        with caplog.at_level(logging.WARNING, logger="raytag.data"):
            truth = read_truth(path, strict=strict, classes=CLASSES)
        assert truth.fnames == ["a.wav", "b.wav"] and truth.labels == [("Bark", "Rain"), ("Chirp",)]
    assert "first a row number (R's write.table row names): read without it" in caplog.text


def test_a_truth_file_in_another_encoding_says_save_it_as_utf8(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_bytes("fname,labels\ncaf\xe9.wav,Bark\n".encode("latin-1"))
    with pytest.raises(TruthError, match="not UTF-8 text .*; save the file as UTF-8"):
        read_truth(path)
    with caplog.at_level(logging.WARNING, logger="raytag.data"):
        assert read_truth(path, strict=False) is None
    assert "save the file as UTF-8" in caplog.text


def test_a_folder_given_as_the_truth_file_is_named_a_folder_not_missing(tmp_path):
    """`raytag score --truth .` said "truth file not found: ." of a folder that exists."""
    from typer.testing import CliRunner

    from raytag.cli import app

    (tmp_path / "sub.csv").write_text("fname,Bark,Rain,Chirp\na.wav,0.1,0.2,0.3\n")
    result = CliRunner().invoke(app, ["score", "--truth", str(tmp_path), "--submission", str(tmp_path / "sub.csv")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "is a folder; give the truth CSV file itself" in result.output and "not found" not in result.output
    with pytest.raises(TruthError, match="truth file not found"):  # a missing file still says so
        read_truth(tmp_path / "none.csv")
