"""What a trial starts: the Ray Train pieces raytag leaves out of its worker group's start-up
(checked against the pinned Ray, whose private hook the runner overrides)."""
from __future__ import annotations

from raytag.session import CONTROLLER_POLL, PREEMPTION_WATCHER, local_init_kwargs
from raytag.training.runner import _trainer_class


def _loop(config):  # never run: the trainers below are only built
    pass


def test_a_trainer_without_ray_datasets_leaves_out_the_ray_data_callback():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    trainer_cls = _trainer_class(TorchTrainer)
    plain = trainer_cls(_loop, scaling_config=ScalingConfig(num_workers=1))
    kinds = [type(c) for c in plain._create_default_callbacks()]
    assert DatasetsCallback not in kinds and kinds  # the other callbacks stay
    stock = [type(c) for c in TorchTrainer(_loop, scaling_config=ScalingConfig(num_workers=1))._create_default_callbacks()]
    assert DatasetsCallback in stock and [k for k in stock if k is not DatasetsCallback] == kinds


def test_a_trainer_given_ray_datasets_keeps_the_ray_data_callback():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    # a dataset factory (never called here, so no Ray session starts)
    trainer = _trainer_class(TorchTrainer)(_loop, scaling_config=ScalingConfig(num_workers=1),
                                           datasets={"train": lambda: None})
    assert DatasetsCallback in [type(c) for c in trainer._create_default_callbacks()]


def test_a_local_session_switches_off_the_preemption_watcher_unless_asked(monkeypatch):
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    assert local_init_kwargs()["runtime_env"]["env_vars"][PREEMPTION_WATCHER] == "0"
    monkeypatch.setenv(PREEMPTION_WATCHER, "1")
    assert local_init_kwargs()["runtime_env"]["env_vars"][PREEMPTION_WATCHER] == "1"


def test_a_local_session_polls_its_train_workers_every_half_second_unless_asked(monkeypatch):
    """Ray Train's default 2 s poll would hold every epoch shorter than 2 s in its report."""
    monkeypatch.delenv(CONTROLLER_POLL, raising=False)
    assert local_init_kwargs()["runtime_env"]["env_vars"][CONTROLLER_POLL] == "0.5"
    monkeypatch.setenv(CONTROLLER_POLL, "3")
    assert local_init_kwargs()["runtime_env"]["env_vars"][CONTROLLER_POLL] == "3"


def test_a_worker_and_the_controller_unpickle_a_run_without_the_heavy_libraries():
    """Ray Train's controller and each worker import what a run's train function and loop
    config need, serially, before the first epoch: sklearn (through iterstrat), librosa and
    scipy's signal and stats code cost 0.4-1 s each there and none is used by a worker.
    Checked in a fresh interpreter, since this test process has imported them all."""
    import subprocess
    import sys

    heavy = ("sklearn", "iterstrat", "librosa", "scipy.signal", "scipy.stats", "scipy.fft")
    code = ("import sys, raytag.training.worker, raytag.training.plan, raytag.training.runner; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
