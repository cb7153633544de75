"""`raytag train` on the FSDKaggle2018 layout (one label a clip, scored by MAP@3) shows MAP@3
beside lwlrap: the stage and fold tables, the members' metrics and the artifact's "metric"
(cv_map3, as the sweep and the ensemble job rank 2018 runs); 2019 output stays lwlrap only.
Unit level: the table functions, and the members' outputs on synthetic member folders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from raytag.config import Config
from raytag.console.tables import fold_table, stage_table
from raytag.ensemble.members import MemberRun, artifact_scores, write_member_outputs
from raytag.metrics import map_at_3
from raytag.training.outputs import fold_metrics
from raytag.training.runner import PipelineResult
from test_ensemble import CLASSES, make_trial_outputs, make_truth

METRICS_2019 = {"cv_lwlrap": 0.71, "fold_lwlrap": {"0": 0.70, "1": 0.72}, "test_lwlrap": None}
METRICS_2018 = {**METRICS_2019, "cv_map3": 0.81, "fold_map3": {"0": 0.80, "1": 0.82}}
STAGES_2019 = pd.DataFrame({"stage": ["warmup", "finetune"], "folds": [1, 2], "cv_lwlrap": [0.5, 0.71],
                            "test_lwlrap": [np.nan, np.nan]})


def _text(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def _rows(text: str) -> dict[str, list[str]]:
    """A printed table's body rows, by their first cell: the other cells."""
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in text.splitlines() if line.count("│") > 1]
    return {row[0]: row[1:] for row in cells}


def test_the_fold_table_shows_map3_beside_lwlrap_on_2018_only():
    text = _text(fold_table(METRICS_2018))
    assert "CV lwlrap and MAP@3 by fold" in text and "MAP@3" in text.split("\n", 2)[2]
    rows = _rows(text)
    assert rows["0"] == ["0.7000", "0.8000"] and rows["1"] == ["0.7200", "0.8200"]
    assert rows["overall (OOF)"] == ["0.7100", "0.8100"]
    # a run whose metrics hold no per-fold MAP@3 (an older run's): the overall still shows
    older = _rows(_text(fold_table({k: v for k, v in METRICS_2018.items() if k != "fold_map3"})))
    assert older["0"] == ["0.7000", "-"] and older["overall (OOF)"] == ["0.7100", "0.8100"]
    text19 = _text(fold_table(METRICS_2019))
    assert "CV lwlrap by fold" in text19 and "MAP@3" not in text19
    assert _rows(text19)["overall (OOF)"] == ["0.7100"]


def test_the_stage_table_shows_map3_beside_lwlrap_on_2018_only():
    text = _text(stage_table(STAGES_2019.assign(cv_map3=[0.6, 0.81])))
    assert "lwlrap and MAP@3 by stage" in text and "CV lwlrap" in text and "CV MAP@3" in text
    assert _rows(text)["finetune"][:3] == ["2", "0.710", "0.810"]
    text19 = _text(stage_table(STAGES_2019))
    assert "MAP@3" not in text19 and "CV lwlrap" not in text19 and _rows(text19)["finetune"][:2] == ["2", "0.710"]


def test_the_artifact_of_a_2018_run_records_cv_map3_as_its_metric():
    scores = artifact_scores(METRICS_2018, "the run's out-of-fold predictions")
    assert scores["metric"] == "cv_map3" and scores["cv_map3"] == 0.81 and scores["cv_lwlrap"] == 0.71
    assert artifact_scores(METRICS_2019, "m") == {"metric": "cv_lwlrap", "cv_lwlrap": 0.71, "test_lwlrap": None,
                                                  "cv_method": "m"}


def test_fold_metrics_carry_map3_where_the_layout_scores_it():
    assert fold_metrics({0: {"lwlrap": 0.5, "map3": 0.6}, 1: {"lwlrap": 0.7, "map3": 0.8}}) == {
        "fold_lwlrap": {"0": 0.5, "1": 0.7}, "fold_map3": {"0": 0.6, "1": 0.8}}
    assert fold_metrics({0: {"lwlrap": 0.5}}) == {"fold_lwlrap": {"0": 0.5}}


def _member_runs(root, layout: str, y_oof, y_test) -> list[MemberRun]:
    """Two finished members in the trial-output format, as fit_pipeline leaves them."""
    runs = []
    for i, name in enumerate(("cnn", "wide")):
        out, cv = make_trial_outputs(root / "members", name, y_oof, y_test, signal=1.0 + i, seed=7 + i,
                                     n_folds=2, layout=layout)
        pd.DataFrame({"stage": ["finetune"], "train_loss": [0.1]}).to_csv(f"{out}/history.csv", index=False)
        pd.DataFrame(columns=["file", "reason"]).to_csv(f"{out}/skipped.csv", index=False)
        metrics = {"cv_lwlrap": cv, "test_lwlrap": None}
        if layout == "fsd2018":
            oof = pd.read_parquet(f"{out}/oof.parquet")
            metrics["cv_map3"] = map_at_3(y_oof.argmax(axis=1), oof[CLASSES].to_numpy())
        stages = pd.DataFrame({"stage": ["finetune"], "folds": [2], "cv_lwlrap": [cv]})
        runs.append(MemberRun(name, Config.from_dict({"name": name}),
                              PipelineResult(str(root / "members" / name), out, metrics, stages)))
    return runs


def test_a_2018_members_run_carries_map3_in_its_members_stages_and_folds(tmp_path):
    rng = np.random.default_rng(3)
    one_label = np.eye(len(CLASSES), dtype=np.float32)
    y_oof, y_test = one_label[rng.integers(0, len(CLASSES), 40)], one_label[rng.integers(0, len(CLASSES), 10)]
    runs = _member_runs(tmp_path, "fsd2018", y_oof, y_test)
    (tmp_path / "staging").mkdir()
    metrics, stages, layout, _ = write_member_outputs(Config.from_dict({"name": "pair"}), runs, tmp_path / "staging")
    assert layout == "fsd2018"
    for run in runs:
        assert metrics["members"][run.name]["cv_map3"] == pytest.approx(run.result.metrics["cv_map3"])
    assert set(metrics["fold_map3"]) == set(metrics["fold_lwlrap"]) == {"0", "1"}
    assert all(0 < v <= 1 for v in metrics["fold_map3"].values()) and 0 < metrics["cv_map3"] <= 1
    assert stages["cv_map3"].notna().all() and stages["cv_map3"].iloc[-1] == pytest.approx(metrics["cv_map3"])
    assert list(pd.read_csv(tmp_path / "staging" / "stages.csv").columns[:4]) == ["stage", "folds", "cv_lwlrap",
                                                                                   "cv_map3"]
    assert artifact_scores(metrics, "m")["metric"] == "cv_map3"


def test_a_2019_members_run_keeps_its_lwlrap_only_records(tmp_path):
    runs = _member_runs(tmp_path, "fat2019", make_truth(40, seed=1), make_truth(10, seed=2))
    (tmp_path / "staging").mkdir()
    metrics, stages, _, _ = write_member_outputs(Config.from_dict({"name": "pair"}), runs, tmp_path / "staging")
    assert "cv_map3" not in metrics and "fold_map3" not in metrics and "cv_map3" not in stages.columns
    assert all("cv_map3" not in m for m in metrics["members"].values())
    assert artifact_scores(metrics, "m")["metric"] == "cv_lwlrap"
