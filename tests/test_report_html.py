"""`raytag report NAME --html`: one self-contained page from what a sweep saved, checked
as text and in a headless browser (sorting, embedded images, no outside requests)."""
from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raytag import storage
from raytag.ensemble.job import build_ensemble
from raytag.report_html import write_report_html

from test_ensemble import CLASSES, make_experiment


def _png(text: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.set_title(text)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder as `raytag tune` + `raytag ensemble` leave it."""
    exp = make_experiment(tmp_path_factory.mktemp("report"), signals=(0.9, 0.6, 0.3), n=60, n_test=20)
    board = storage.read_csv(storage.join(exp, "leaderboard.csv"))
    board["status"] = "ok"
    board["train.lr"] = [1e-3, 3e-3, 2e-4]
    storage.write_csv(board, storage.join(exp, "leaderboard.csv"))
    storage.write_bytes(storage.join(exp, "search.png"), _png("search"))
    storage.write_csv(pd.DataFrame({"setting": ["train.lr", "model.name"], "importance": [0.7, 0.3]}),
                      storage.join(exp, "importance.csv"))
    best = board.sort_values("cv_lwlrap", ascending=False)["outputs_dir"].iloc[0]
    storage.write_csv(pd.DataFrame({"stage": ["warmup", "finetune", "stage2"], "cv_lwlrap": [0.5, 0.7, 0.8],
                                    "clips": [100, 80, 140], "filter_precision": [np.nan, np.nan, 0.91],
                                    "filter_recall": [np.nan, np.nan, 0.77]}),
                      storage.join(best, "stages.csv"))
    storage.write_bytes(storage.join(best, "tsne_filter.png"), _png("tsne"))
    build_ensemble(exp, top=3)
    return exp


def test_report_has_every_part_and_is_self_contained(sweep):
    path = write_report_html(sweep)
    assert path == storage.join(sweep, "report.html")
    page = storage.read_text(path)
    for part in ("Leaderboard", "Importance of each setting", "Stages of the best", "filter_precision",
                 "Per-class lwlrap", "ensemble (", "Single models and ensembles".lower()[:6], "t-SNE"):
        assert part.lower() in page.lower(), part
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # search, comparison, t-SNE
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loaded from elsewhere
    for cls in CLASSES:
        assert f"<td>{cls}</td>" in page
    assert "Not available" in page  # the other best trials have no stages.csv: said, not hidden


def test_report_says_what_is_missing_without_an_ensemble(tmp_path):
    exp = make_experiment(tmp_path, signals=(0.9,), n=40, n_test=10)
    page = storage.read_text(write_report_html(exp))
    assert "no ensemble yet" in page and "search.png is missing" in page


def test_cli_report_html(sweep, monkeypatch):
    from raytag import cli
    import raytag.console.sweep as console_sweep

    # the leaderboard printout needs a Tune state; here only the --html part is under test
    monkeypatch.setattr(console_sweep, "report_command", lambda experiment, storage: None)
    root, name = sweep.rsplit("/", 1)
    result = CliRunner().invoke(cli.app, ["report", name, "--storage", root, "--html"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output


def test_report_in_a_headless_browser(sweep):
    from browser_util import headless_chromium
    from selenium.webdriver.common.by import By

    path = write_report_html(sweep)
    driver = headless_chromium()
    try:
        driver.get("file://" + path)
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 3
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        table = driver.find_element(By.ID, "leaderboard-table")
        headers = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
        col = headers.index("cv_lwlrap")

        def column():
            return [float(tr.find_elements(By.TAG_NAME, "td")[col].text)
                    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        table.find_elements(By.TAG_NAME, "th")[col].click()
        assert column() == sorted(column())
        table.find_elements(By.TAG_NAME, "th")[col].click()
        assert column() == sorted(column(), reverse=True)
    finally:
        driver.quit()


def test_per_class_section_with_members_of_other_experiments(tmp_path):
    """`raytag ensemble A --with B`: members named B/<trial> are found in B, so the page
    keeps its per-class table with the ensemble's column."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.1))
    other = make_experiment(tmp_path, signals=(1.2, 0.2), name="families")
    assert "families/trial_0" in build_ensemble(exp, top=3, also=[other]).members
    page = storage.read_text(write_report_html(exp))
    section = page[page.index('id="per-class"'):page.index('id="ensemble"')]
    assert "could not be computed" not in section
    assert "ensemble (" in section and "best trial (" in section
    for cls in CLASSES:
        assert f"<td>{cls}</td>" in section


def test_per_class_keeps_the_best_trial_when_the_ensemble_column_fails(tmp_path):
    exp = make_experiment(tmp_path, signals=(0.9, 0.1))
    build_ensemble(exp, top=2)
    summary_path = storage.join(exp, "ensemble", "ensemble_summary.json")
    summary = storage.read_text(summary_path).replace('"trial_0"', '"gone/trial_0"')
    storage.write_text(summary_path, summary)
    page = storage.read_text(write_report_html(exp))
    section = page[page.index('id="per-class"'):page.index('id="ensemble"')]
    assert "ensemble member gone/trial_0: its outputs are not found" in section
    assert "best trial (" in section and f"<td>{CLASSES[0]}</td>" in section


def test_best_trials_follow_the_leaderboard_s_metric(tmp_path):
    """On FSDKaggle2018 data the leaderboard ranks by cv_map3: so do the page's best trials."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.6, 0.3))
    board = storage.read_csv(storage.join(exp, "leaderboard.csv"))
    board["rank_by"], board["cv_map3"] = "cv_map3", [0.2, 0.3, 0.7]  # trial_2 first by MAP@3
    storage.write_csv(board, storage.join(exp, "leaderboard.csv"))
    page = storage.read_text(write_report_html(exp))
    stages = page[page.index('id="stages"'):page.index('id="per-class"')]
    assert "best 3 trial(s) by cv_map3" in stages
    assert re.findall(r"<h3>(\w+) \(cv_map3 ([0-9.]+)\)</h3>", stages) == [
        ("trial_2", "0.7000"), ("trial_1", "0.3000"), ("trial_0", "0.2000")]
    assert "best trial (trial_2)" in page


def test_report_shows_no_uri_options_or_credentials(tmp_path):
    from raytag.report_html import shown_path

    exp = make_experiment(tmp_path, signals=(0.9,), n=40, n_test=10)
    page = storage.read_text(write_report_html(f"file://{exp}?secret_key=abc"))
    assert "<title>raytag sweep exp</title>" in page and "<h1>raytag sweep exp</h1>" in page
    assert f"file://{exp};" in page  # the meta line names where the sweep is
    assert "search.png is missing" in page and "secret_key" not in page
    assert shown_path("s3://AKIA:pw@bucket/runs/exp?region=r&secret=s") == "s3://bucket/runs/exp"
    assert shown_path("/local/runs/exp") == "/local/runs/exp"


def test_a_with_experiment_is_looked_for_beside_a_uri_sweep_with_its_options(monkeypatch):
    """--with's fallback (the name beside this sweep) keeps the sweep URI's options, also
    one whose value holds "/"."""
    from raytag.report_html import _find_experiment

    monkeypatch.setattr(storage, "exists", lambda path: False)  # given as it was: not found there
    options = "?endpoint_override=http://m:9000"
    assert _find_experiment(f"s3://b/runs/sweep{options}", "old/other") == f"s3://b/runs/other{options}"
