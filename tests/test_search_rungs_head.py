"""Fixes from the search-path audit (notes26/audit/search.md, items 7, 8 and 9): a trial
the scheduler stops reaches Optuna with the rung score it was stopped on, the scheduler's
rung_score is in the sweep's search metric, and a head node too small for a trial's
driver is refused instead of leaving the sweep waiting for ever. No Ray cluster, no training."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from raytag.search.space import parse_space
from raytag.search.tuner import build_searcher
from raytag.training.rungs import RUNG_EPOCH, RUNG_SCORE

SPACE = """
name: audit
base:
  cv.n_folds: 2
  pipeline.finetune.epochs: 12
space:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
search: {samples: 3, metric: cv_lwlrap, scheduler: asha, grace_period: 1, reduction_factor: 2}
"""


# -- item 7: the result ASHA stops a trial on reaches Optuna -----------------------------------
def _stopped_trial(reports: list[dict], stop_on: dict):
    """The study's trial of one searcher trial fed `reports` as Tune does (on_trial_result),
    then completed with `stop_on`: the result the scheduler stopped it on, which Tune passes to
    on_trial_complete only."""
    searcher = build_searcher(parse_space(SPACE))
    searcher.suggest("stopped")
    for row in reports:
        searcher.on_trial_result("stopped", row)
    searcher.on_trial_complete("stopped", stop_on)
    (trial,) = searcher._ot_study.trials
    return trial


def test_a_stopped_trial_has_the_score_of_the_rung_it_was_stopped_at():
    from optuna.trial import TrialState

    before = [{RUNG_EPOCH: e, RUNG_SCORE: 0.5 + e / 100, "cv_lwlrap": 0.9} for e in range(1, 10)]
    trial = _stopped_trial(before, {RUNG_EPOCH: 10, RUNG_SCORE: 0.7, "cv_lwlrap": 0.9, "pipeline_done": 0})
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values[10] == pytest.approx(0.7)
    assert trial.value == pytest.approx(0.7)  # what TPE ranks a pruned trial by: its last step


def test_a_trial_stopped_at_the_first_rung_is_not_left_without_a_value():
    """grace_period 1: the first result with a rung score is the one ASHA stops it on."""
    warmup = [{RUNG_EPOCH: 0, RUNG_SCORE: 0.0, "cv_lwlrap": 0.4}] * 3
    trial = _stopped_trial(warmup, {RUNG_EPOCH: 1, RUNG_SCORE: 0.62, "cv_lwlrap": 0.4, "pipeline_done": 0})
    assert trial.intermediate_values == pytest.approx({1: 0.62})


def test_a_stop_result_already_reported_is_not_reported_twice():
    rows = [{RUNG_EPOCH: e, RUNG_SCORE: 0.5 + e / 100} for e in range(1, 4)]
    trial = _stopped_trial(rows, rows[-1])
    assert trial.intermediate_values == pytest.approx({1: 0.51, 2: 0.52, 3: 0.53})


def test_a_stopped_trial_whose_last_result_cannot_be_reported_is_still_pruned():
    """The report of the stop result sat in the tell's try: a result without rung_score (or a
    non-number) skipped the tell, and Optuna kept the trial RUNNING for good."""
    from optuna.trial import TrialState

    rows = [{RUNG_EPOCH: 1, RUNG_SCORE: 0.51}, {RUNG_EPOCH: 2, RUNG_SCORE: 0.52}]
    for stop_on in ({RUNG_EPOCH: 3}, {RUNG_EPOCH: 3, RUNG_SCORE: "n/a"}):
        trial = _stopped_trial(rows, stop_on)
        assert trial.state == TrialState.PRUNED
        assert trial.intermediate_values == pytest.approx({1: 0.51, 2: 0.52})


# -- item 8: rung_score is in the search metric -------------------------------------------------
class _Reports:
    """The loop's worker (worker.RayTrainWorker's report), keeping what it is given."""

    def __init__(self):
        self.rows = []

    def report(self, row, checkpoint_dir=None):
        self.rows.append(row)


def _first_fold_report(plan) -> dict:
    """The report of the first fine-tune epoch of fold 0, as the loop makes it for `plan`."""
    from raytag.config import Config
    from raytag.training.steps import build_steps
    from raytag.training.worker import _report

    steps = build_steps(Config.from_dict({"cv": {"n_folds": 2}, "pipeline": {"warmup": {"enabled": False}}}), [0, 1])
    state = SimpleNamespace(progress={"step": 0, "epoch": 1, "global_step": 1, "history": []})
    ctx = SimpleNamespace(plan=plan, state=state, rank=0, n_steps=len(steps), report_mark=0.0)
    reports = _Reports()
    metrics = {"train_loss": 0.3, "val_lwlrap": 0.61, "cv_lwlrap": 0.61, "val_map3": 0.42, "cv_map3": 0.42}
    _report(reports, ctx, None, None, None, steps, steps[0], metrics, checkpoint=False)
    (row,) = reports.rows
    assert row[RUNG_EPOCH] == 1
    return row


def test_rung_score_is_in_the_plans_rung_metric_on_the_2018_layout():
    row = _first_fold_report(SimpleNamespace(layout="fsd2018", rung_metric="lwlrap"))
    assert row[RUNG_SCORE] == pytest.approx(row["val_lwlrap"])
    # without one (`raytag train`, a sweep by cv_map3): the layout's metric, as before
    assert _first_fold_report(SimpleNamespace(layout="fsd2018", rung_metric=None))[RUNG_SCORE] == pytest.approx(0.42)


def test_a_sweep_by_lwlrap_on_2018_data_has_its_trials_score_rungs_in_lwlrap():
    from raytag.search.tuner import rung_metric_for

    assert rung_metric_for("cv_lwlrap", "fsd2018") == "lwlrap"
    # the layout's own metric, or an unknown layout: the workers' default, nothing passed
    assert rung_metric_for("cv_map3", "fsd2018") is None
    assert rung_metric_for("cv_lwlrap", "fat2019") is None
    assert rung_metric_for("cv_lwlrap", None) is None


def test_a_trial_hands_its_rung_metric_to_its_pipeline_run(tmp_path, monkeypatch):
    from raytag.search import tuner

    calls = []

    def recording_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True, **options):
        calls.append(options)
        return SimpleNamespace(metrics={"cv_lwlrap": 0.6})

    monkeypatch.setattr(tuner, "_fit_forwarding_reports", lambda run_fit, last: run_fit([]))
    space = parse_space(SPACE)
    for rung_metric, given in (("lwlrap", {"rung_metric": "lwlrap"}), (None, {})):
        setup = tuner.TrialSetup(space=space, data=str(tmp_path), trials_dir=str(tmp_path / "trials"),
                                 feature_cache=None, trial_fn=recording_fit, rung_metric=rung_metric)
        tuner._run_pipeline({"train.lr": 1e-3}, setup, "t1", {})
        assert calls.pop() == given


def test_a_pipeline_run_puts_its_rung_metric_on_the_plan_the_workers_get(tmp_path, monkeypatch):
    from raytag.config import Config, ConfigError
    from raytag.training import runner

    handed = []

    class Handed(Exception):
        pass

    def fit_in_process(loop_config, *args, **kwargs):
        handed.append(loop_config["plan"].rung_metric)
        raise Handed

    def prepare_data(cfg, data, feature_cache, progress):
        return None, None, SimpleNamespace(layout=layout, rung_metric=None, feature_cache="")

    monkeypatch.setattr(runner, "prepare_data", prepare_data)
    monkeypatch.setattr(runner, "check_run_settings", lambda run_dir, cfg, plan: cfg)
    monkeypatch.setattr(runner, "ensure_ray", lambda: None)
    monkeypatch.setattr(runner, "runs_in_process", lambda cfg, run_dir: True)
    monkeypatch.setattr(runner, "fit_in_process", fit_in_process)
    cfg = Config.from_dict({"cv": {"n_folds": 2}})
    layout = "fsd2018"
    for rung_metric, on_plan in (("lwlrap", "lwlrap"), (None, "map3")):
        with pytest.raises(Handed):
            runner.fit_pipeline(cfg, tmp_path, str(tmp_path / "runs"), f"r{len(handed)}", rung_metric=rung_metric)
        assert handed.pop() == on_plan
    layout = "fat2019"  # MAP@3 scores one label a clip: the 2019 layout's runs make no such score
    with pytest.raises(ConfigError, match="rung metric 'map3': the fat2019 layout's held-out scores are lwlrap"):
        runner.fit_pipeline(cfg, tmp_path, str(tmp_path / "runs"), "r9", rung_metric="map3")


# -- item 9: a head node without room for a trial's function -----------------------------------
HEAD = "node:__internal_head__"  # Ray's own name, spelled out: raytag's constant must match it


def _ray_nodes(monkeypatch, nodes: list[dict]):
    """A connected Ray whose ray.nodes() is `nodes`, as cluster.cluster_nodes() reads it."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: nodes)


def _cluster(monkeypatch, head_cpu: float, worker_cpu: float = 16.0):
    """A two-node cluster: the head and one worker, and a dead node that no longer counts."""
    _ray_nodes(monkeypatch, [
        {"NodeID": "h", "Alive": True, "Resources": {"CPU": head_cpu, HEAD: 1.0, "node:10.0.0.1": 1.0}},
        {"NodeID": "w", "Alive": True, "Resources": {"CPU": worker_cpu, "GPU": 1.0, "node:10.0.0.2": 1.0}},
        {"NodeID": "x", "Alive": False, "Resources": {"CPU": 64.0, "node:10.0.0.3": 1.0}},
    ])


def _space(resources: str = "{num_workers: 1, cpus_per_worker: 1, trial_cpus: 0.5}"):
    return parse_space(SPACE + f"resources: {resources}\n")


def test_a_head_without_the_cpus_of_one_trial_function_is_refused(monkeypatch):
    from raytag.errors import RaytagError
    from raytag.search.tuner import concurrency

    _cluster(monkeypatch, head_cpu=0.0)  # `ray start --head --num-cpus=0`
    with pytest.raises(RaytagError, match=r"trial_cpus 0.5 CPUs there, but the head node has 0 CPUs"):
        concurrency(_space(), 8)


def test_trials_at_once_are_capped_by_the_head_nodes_cpus(monkeypatch):
    from raytag.search.tuner import concurrency

    _cluster(monkeypatch, head_cpu=2.0)
    n, why = concurrency(_space(), 8)
    assert n == 2 and "head node" in why  # (2 CPUs - 1 for feature builds) / 0.5 a trial function
    assert concurrency(_space(), 2) == (2, "")  # fits: unchanged


def test_the_head_keeps_a_cpu_for_the_ray_tasks_of_the_trials_feature_builds(monkeypatch):
    """A trial builds the features it does not find with Ray tasks of 1 CPU each on its own
    node, the head: trial functions (actors, which keep their CPUs while they wait) filling
    the head would leave those tasks, and so every trial, waiting for ever. The README's
    sizing, 8 x 0.5 on an m5.xlarge's 4 CPUs, did."""
    from raytag.search.tuner import concurrency

    _cluster(monkeypatch, head_cpu=4.0)
    n, why = concurrency(_space(), 8)
    assert n == 6 and "1 is left for the Ray tasks of the trials' feature builds" in why
    _cluster(monkeypatch, head_cpu=1.0)  # no whole CPU beside one trial function: said, not refused
    n, why = concurrency(_space(), 1)
    assert n == 1 and "leave no whole CPU" in why and "raytag prepare" in why and "1.5 CPUs or more" in why


def test_trial_functions_off_the_head_leave_the_limit_to_the_cluster(monkeypatch):
    from raytag.search.tuner import concurrency

    _cluster(monkeypatch, head_cpu=0.0)
    space = _space("{num_workers: 1, cpus_per_worker: 1, trial_cpus: 0.5, trials_on_head: false}")
    assert concurrency(space, 8) == (8, "")


def test_on_one_node_trials_at_once_are_what_its_cpus_hold(monkeypatch):
    from raytag.errors import RaytagError
    from raytag.search.tuner import concurrency

    _ray_nodes(monkeypatch, [{"NodeID": "h", "Alive": True, "Resources": {"CPU": 4.0, HEAD: 1.0}}])
    n, why = concurrency(_space(), 8)
    assert n == 2 and "a trial needs 1.5 CPUs" in why  # 0.5 for the function + 1 worker's CPU
    _ray_nodes(monkeypatch, [{"NodeID": "h", "Alive": True, "Resources": {"CPU": 1.0, HEAD: 1.0}}])
    with pytest.raises(RaytagError, match=r"one trial needs 1.5 CPUs but this Ray node has 1 CPUs"):
        concurrency(_space(), 8)
