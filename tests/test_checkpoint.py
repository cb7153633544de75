"""A checkpoint's train state without pickles (raytag.training.checkpoint) and the run files
a checkpoint lists (RunState): training resumed from one continues exactly as without it, a
pickle planted in a checkpoint is refused and never run, and a run file that is missing,
altered or named outside its folder stops the resume with an error that says so."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from raytag.config import Config, ConfigError
from raytag.errors import CheckpointError
from raytag.models import build_model
from raytag.training.checkpoint import (LEGACY_PICKLE, TRAIN_JSON, TRAIN_TENSORS, capture_rng,
                                        check_legacy_checkpoints, load_train_state, restore_rng,
                                        save_train_state)
from raytag.training.epoch import build_optimizer
from raytag.training.run_state import RUN_FILES_MANIFEST, RunState
from raytag.training.steps import Step


class _WritesMarker:
    """A pickle that, when loaded, writes a file: what an attacker with write access to
    --storage would plant in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pickle code ran"))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_WritesMarker(marker))


def _model_and_optimizer(optimizer: str, scheduler: str, seed: int):
    cfg = Config.from_dict({"model": {"name": "cnn_1d_dropout", "width": 8},
                            "train": {"optimizer": optimizer, "scheduler": scheduler, "lr": 3e-3}})
    torch.manual_seed(seed)
    model = build_model(cfg.model, n_classes=5, in_channels=1, n_bins=16)
    opt, sched = build_optimizer(cfg, model, Step("finetune", 0, epochs=4), steps_per_epoch=3)
    return model, opt, sched


def _train(model, opt, sched, n: int) -> list[float]:
    """n batches drawn from the global RNGs (torch for inputs and dropout, numpy and python
    for the targets), so a resumed run matches only if every RNG state came back."""
    model.train()
    losses = []
    for _ in range(n):
        x = torch.randn(6, 1, 16, 24)
        y = torch.from_numpy((np.random.rand(6, 5) < 0.3).astype(np.float32))
        y[:, random.randrange(5)] = 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer,scheduler", [("adamw", "onecycle"), ("sgd", "cosine")])
def test_training_resumed_from_a_checkpoint_continues_exactly(tmp_path, optimizer, scheduler):
    model, opt, sched = _model_and_optimizer(optimizer, scheduler, seed=0)
    _train(model, opt, sched, 4)
    save_train_state(tmp_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "step": 3, "rng": capture_rng()})
    assert not [p for p in tmp_path.iterdir() if p.name not in (TRAIN_TENSORS, TRAIN_JSON)]
    uninterrupted = _train(model, opt, sched, 5)

    # a fresh process's view: other weights, a new optimizer and scheduler, other RNG states
    fresh, fresh_opt, fresh_sched = _model_and_optimizer(optimizer, scheduler, seed=1)
    random.seed(7)
    np.random.seed(7)
    state = load_train_state(tmp_path)
    fresh.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["optimizer"])
    fresh_sched.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    assert state["step"] == 3
    assert _train(fresh, fresh_opt, fresh_sched, 5) == uninterrupted
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: dropout there draws from the device's generator")
def test_a_resumed_gpu_run_continues_the_devices_random_draws(tmp_path):
    torch.cuda.manual_seed(0)
    torch.rand(3, device="cuda")
    save_train_state(tmp_path, {"rng": capture_rng()})
    uninterrupted = torch.rand(5, device="cuda")
    torch.cuda.manual_seed(0)  # a fresh process reseeds: it would repeat the first draws
    restore_rng(load_train_state(tmp_path)["rng"])
    assert torch.equal(torch.rand(5, device="cuda"), uninterrupted)


def test_a_value_json_cannot_hold_is_refused_instead_of_pickled(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\.scheduler\.anneal: a builtin_function_or_method cannot be stored"):
        save_train_state(tmp_path, {"scheduler": {"anneal": len}})


def test_a_planted_pickle_is_refused_and_never_run(tmp_path):
    """The old format (train_state.pt, loaded with torch.load(weights_only=False)) ran a
    pickle from storage; now a checkpoint folder holding one is refused by its name."""
    marker = tmp_path / "marker"
    ckpt = tmp_path / "checkpoint_000003"
    ckpt.mkdir()
    save_train_state(ckpt, {"model": {"w": torch.ones(2)}, "rng": capture_rng()})
    (ckpt / LEGACY_PICKLE).write_bytes(_evil_pickle(marker))
    with pytest.raises(CheckpointError, match="pickle"):
        load_train_state(ckpt)
    with pytest.raises(CheckpointError, match=f"{LEGACY_PICKLE}.*no longer loads pickles"):
        check_legacy_checkpoints(str(tmp_path))  # the driver's check, before any worker starts
    (ckpt / LEGACY_PICKLE).unlink()
    check_legacy_checkpoints(str(tmp_path))

    # the same pickle in place of the tensors or the JSON is not a safetensors / JSON file
    tensors = (ckpt / TRAIN_TENSORS).read_bytes()
    (ckpt / TRAIN_TENSORS).write_bytes(_evil_pickle(marker))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_train_state(ckpt)
    (ckpt / TRAIN_TENSORS).write_bytes(tensors)
    (ckpt / TRAIN_JSON).write_bytes(_evil_pickle(marker))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_train_state(ckpt)
    assert not marker.exists(), "a pickle from the checkpoint was loaded"


def _run_state_with_files(tmp_path: Path) -> tuple[RunState, Path, Path, dict]:
    storage = tmp_path / "run" / "run_files"
    state = RunState(tmp_path / "work0", str(storage))
    state.save_preds("oof/finetune__fold0", ["curated/a.wav", "curated/b.wav"], np.eye(2, 3))
    state.save_json("filter/fold0.json", {"accepted": ["noisy/c.wav"]})
    state.progress["step"] = 2
    ckpt = tmp_path / "ckpt1"
    ckpt.mkdir()
    first = state.write_checkpoint({"model": {"w": torch.zeros(3)}, "rng": capture_rng()}, ckpt)
    return state, storage, ckpt, first


def test_run_files_are_written_once_and_restored_from_the_list(tmp_path):
    state, storage, ckpt1, first = _run_state_with_files(tmp_path)
    assert first["run_files"] > 0 and sorted(p.name for p in storage.rglob("*") if p.is_file()) == \
        ["finetune__fold0.npz", "fold0.json"]
    assert not (ckpt1 / "outputs").exists()  # the checkpoint lists the run files, it holds none

    # the next checkpoint copies nothing already persisted, only the new file
    state.save_weights("fold0", torch.nn.Linear(2, 2))
    ckpt2 = tmp_path / "ckpt2"
    ckpt2.mkdir()
    second = state.write_checkpoint({"model": {"w": torch.ones(3)}, "rng": capture_rng()}, ckpt2)
    assert second["run_files"] == (state.out / "weights" / "fold0.safetensors").stat().st_size

    # restoring the first checkpoint brings back its files only (not the later weights)
    restored, train_state = RunState.restore(ckpt1, tmp_path / "work1", str(storage))
    assert restored.progress["step"] == 2 and torch.equal(train_state["model"]["w"], torch.zeros(3))
    ids, probs = restored.load_preds("oof/finetune__fold0")
    assert ids == ["curated/a.wav", "curated/b.wav"] and np.array_equal(probs, np.eye(2, 3))
    assert restored.load_json("filter/fold0.json") == {"accepted": ["noisy/c.wav"]}
    assert not (restored.out / "weights").exists()
    assert restored.persist_new_files() == 0  # nothing restored is copied back


def test_a_missing_altered_or_escaping_run_file_stops_the_resume(tmp_path):
    state, storage, ckpt, _ = _run_state_with_files(tmp_path)
    (storage / "filter" / "fold0.json").write_text(json.dumps({"accepted": ["noisy/x.wav"]}))
    with pytest.raises(CheckpointError, match="fold0.json: changed since the checkpoint"):
        RunState.restore(ckpt, tmp_path / "w1", str(storage))
    (storage / "filter" / "fold0.json").unlink()
    with pytest.raises(CheckpointError, match="fold0.json: missing, but the checkpoint"):
        RunState.restore(ckpt, tmp_path / "w2", str(storage))
    manifest = json.loads((ckpt / RUN_FILES_MANIFEST).read_text())
    manifest["files"] = {"../../outside.json": {"bytes": 1, "sha256": "0"}}
    (ckpt / RUN_FILES_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"refused entry '\.\./\.\./outside\.json'"):
        RunState.restore(ckpt, tmp_path / "w3", str(storage))


def test_a_failed_copy_of_a_run_file_that_is_there_is_not_called_missing(tmp_path, monkeypatch):
    """A full local disk (or lost access) while the run files are copied back is the copy's
    failure: the error names both sides, keeps the OSError behind it (a sweep's storage_fault
    reads its errno), and does not advise deleting a run whose folder is whole."""
    from raytag import storage as files
    from raytag.errors import StorageError

    state, storage, ckpt, _ = _run_state_with_files(tmp_path)
    real_copy = files.copy_file

    def disk_full(src, dst):
        if str(src).endswith("fold0.json"):
            raise OSError(28, "No space left on device", str(dst))
        real_copy(src, dst)

    monkeypatch.setattr(files, "copy_file", disk_full)
    with pytest.raises(StorageError) as failed:
        RunState.restore(ckpt, tmp_path / "w1", str(storage))
    assert not isinstance(failed.value, CheckpointError)
    message = str(failed.value)
    assert "delete" not in message and "missing" not in message
    assert f"{storage / 'filter' / 'fold0.json'} to {tmp_path / 'w1' / 'outputs' / 'filter' / 'fold0.json'}" \
        in message and "No space left on device" in message
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == 28
    assert files.storage_fault(failed.value, storage) is not None  # the sweep stops and --resume continues it

    monkeypatch.setattr(files, "copy_file", real_copy)  # space freed: the same run resumes
    restored, _ = RunState.restore(ckpt, tmp_path / "w2", str(storage))
    assert restored.load_json("filter/fold0.json") == {"accepted": ["noisy/c.wav"]}


def test_checkpoint_every_must_be_at_least_one():
    assert Config.from_dict({}).train.checkpoint_every == 1
    assert Config.from_dict({"train": {"checkpoint_every": 3}}).train.checkpoint_every == 3
    with pytest.raises(ConfigError, match="train.checkpoint_every: 0 is below the minimum 1"):
        Config.from_dict({"train": {"checkpoint_every": 0}})
