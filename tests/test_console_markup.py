"""The console prints file names, failure reasons and paths as text: a "[...]" in them is
not rich markup (it was: "[live]" vanished, and "[/x]" raised MarkupError)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from raytag.console import predict as console_predict
from raytag.console.tables import print_leaderboard


def test_a_failed_trials_reason_with_brackets_is_printed_as_text(capsys):
    board = pd.DataFrame([
        {"rank": 1, "trial_id": "t1", "status": "ok", "reason": "", "rank_by": "cv_lwlrap", "cv_lwlrap": 0.71,
         "test_lwlrap": 0.69, "epochs_run": 3, "seconds": 12.0, "model.name": "[wide] cnn"},
        {"rank": 2, "trial_id": "t2", "status": "failed", "reason": "cannot write [/tmp/x] (disk full)",
         "rank_by": "cv_lwlrap", "cv_lwlrap": float("nan"), "test_lwlrap": float("nan"), "epochs_run": 0,
         "seconds": 1.0, "model.name": "cnn"},
    ])
    print_leaderboard(board)
    out = capsys.readouterr().out
    assert "trial t2 failed: cannot write [/tmp/x] (disk full)" in out
    assert "[wide] cnn" in out


def test_predict_prints_a_failed_file_named_with_brackets_as_text(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "[live] a[b].wav"
    tagged = SimpleNamespace(
        failures=pd.DataFrame({"file": [str(bad)], "reason": ["cannot decode [/x]"]}),
        files=[bad, tmp_path / "good.wav"],
        probs=pd.DataFrame({"dog": [0.5]}, index=[str(tmp_path / "good.wav")]),
        artifact=SimpleNamespace(members=[1], combiner="arithmetic"),
    )
    monkeypatch.setenv("COLUMNS", "1000")  # one line per message, whatever the tmp path's length
    monkeypatch.setattr(console_predict, "tag_inputs", lambda *a, **k: tagged)
    written = tmp_path / "[out] submission.csv"
    monkeypatch.setattr(console_predict, "save_outputs", lambda *a, **k: (written, None))
    console_predict.predict_command(Path("artifact"), [tmp_path], out=written)
    err = capsys.readouterr().err
    assert f"{bad}: cannot decode [/x]" in err
    assert f"wrote {written}" in err
