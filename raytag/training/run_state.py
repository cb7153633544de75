"""The run state of one pipeline run on a worker, and the context every step sees.

`RunState` keeps the run's progress and the files its steps made so far (predictions,
filter decisions, fold weights) in a local folder; each file is persisted once to
`<run_dir>/run_files/` and checkpoints list the ones they rely on (checkpoint.py holds the
train state's format); `_Context` bundles the
plan, the feature store, this worker's rank and device, and the run state, and derives
the data sets each step trains and predicts on.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.errors import CheckpointError, StorageError
from raytag.training.checkpoint import load_train_state, save_train_state
from raytag.training.dataset import LabelledSet
from raytag.training.inference import (
    embed_segments, iter_store_clips, predict_and_embed_segments, predict_segments,
)
from raytag.training.precision import resolve_precision
from raytag.training.steps import Step

STATE_FILE = "state.json"  # in a checkpoint: progress (step, epoch, history, stage rows)
RUN_FILES_MANIFEST = "run_files.json"  # in a checkpoint: the run files it relies on, with their hashes
RUN_FILES = "run_files"  # <run_dir>/run_files/: what the steps made, each file written there once
OUTPUTS = "outputs"  # the local folder of a worker's run files


# ----------------------------------------------------------------------------- distributed helpers
def _gather(obj, world_size: int) -> list:
    if world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model



# ----------------------------------------------------------------------------- the run state
def _share_rank0_buffers(net: torch.nn.Module, world_size: int) -> None:
    """DDP keeps the weights of all ranks equal but not their BatchNorm running statistics:
    each rank updates them with its own batches. Rank 0's are the ones saved as the fold's
    weights, so every rank predicts with those (else the predictions the ensemble job scores
    differ from what the saved model, and `raytag predict`, gives)."""
    if world_size > 1 and torch.distributed.is_initialized():
        for buf in net.buffers():
            torch.distributed.broadcast(buf, src=0)


class RunState:
    """Progress of the run and the files its steps make (predictions, fold weights, filter
    decisions), kept in a local folder. Rank 0 persists each new file once, when the next
    checkpoint is written, to `<run_dir>/run_files/`, and every checkpoint lists the files it
    relies on (`run_files.json`: name, size, SHA-256); nothing is copied again."""

    def __init__(self, work: Path, run_files: str):
        self.work = work
        self.out = work / OUTPUTS
        self.out.mkdir(parents=True, exist_ok=True)
        self.run_files = run_files  # a folder or URI under --storage
        self.progress = {"step": 0, "epoch": 0, "global_step": 0, "stage_rows": [], "history": []}
        self.persisted: dict[str, dict] = {}  # name -> {"bytes", "sha256"} of files in run_files
        self._seen: dict[str, tuple] = {}  # name -> (size, mtime) of the local file last hashed

    @classmethod
    def restore(cls, ckpt_dir: Path, work: Path, run_files: str) -> tuple["RunState", dict]:
        """The run state and the train state (model, optimizer...) of a checkpoint. The
        run files it lists are copied from `run_files` and checked against their hashes;
        files there that it does not list (made after it) are left alone."""
        train_state = load_train_state(ckpt_dir)  # refuses a pickle before anything else is read
        state = cls(work, run_files)
        state.progress = _read_json(ckpt_dir / STATE_FILE)
        listed = _read_json(ckpt_dir / RUN_FILES_MANIFEST).get("files")
        if not isinstance(listed, dict):
            raise CheckpointError(f"{ckpt_dir / RUN_FILES_MANIFEST}: no 'files' mapping")
        where = str(ckpt_dir / RUN_FILES_MANIFEST)
        for name, entry in listed.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise CheckpointError(f"{where}: entry {name!r} has no SHA-256")
            local = Path(files.safe_join(state.out, name, where=where, error=CheckpointError))
            source = files.safe_join(run_files, name, where=where, error=CheckpointError)
            try:
                files.copy_file(source, str(local))
            except OSError as err:  # FileNotFoundError locally; an object store's own error otherwise
                if _absent(source):
                    raise CheckpointError(f"{source}: missing, but the checkpoint {ckpt_dir} relies on it "
                                          f"({err}); the run folder is incomplete (delete it to train again)") from None
                # the file is there: the copy failed (a full or read-only local disk, access, a
                # transient read), which a rerun cures; not a reason to give up the run
                raise StorageError(f"cannot copy the run file {source} to {local}: {err}; the checkpoint "
                                   f"{ckpt_dir} relies on it and the run folder holds it, so rerun once the "
                                   "cause is fixed (disk space, access, the storage's connection)") from err
            if files.sha256_file(str(local)) != entry["sha256"]:
                raise CheckpointError(f"{source}: changed since the checkpoint {ckpt_dir} listed it "
                                      "(SHA-256 differs); delete the run folder to train again")
            state.persisted[name] = dict(entry)
            state._seen[name] = _signature(local)
        return state, train_state

    def persist_new_files(self) -> int:
        """Copy the files made (or changed) since the last call to `run_files`; bytes copied."""
        written = 0
        for path in sorted(p for p in self.out.rglob("*") if p.is_file()):
            name = path.relative_to(self.out).as_posix()
            signature = _signature(path)
            if self._seen.get(name) == signature:
                continue
            digest = files.sha256_file(str(path))
            self._seen[name] = signature
            if self.persisted.get(name, {}).get("sha256") == digest:
                continue
            files.copy_file(str(path), files.join(self.run_files, name))
            self.persisted[name] = {"bytes": signature[0], "sha256": digest}
            written += signature[0]
        return written

    def write_checkpoint(self, train_state: dict, into: Path) -> dict:
        """A checkpoint in `into`: train state (safetensors + JSON), progress, and the list of
        run files, after persisting the new ones. Returns the bytes written, by kind."""
        persisted = self.persist_new_files()
        state_bytes = save_train_state(into, train_state)
        (into / STATE_FILE).write_text(json.dumps(self.progress))
        (into / RUN_FILES_MANIFEST).write_text(json.dumps({"folder": RUN_FILES, "files": self.persisted}))
        return {"run_files": persisted, "train_state": state_bytes,
                "progress": (into / STATE_FILE).stat().st_size + (into / RUN_FILES_MANIFEST).stat().st_size}

    # predictions are saved as npz: ids + probs
    def save_preds(self, name: str, ids: list[str], probs: np.ndarray):
        path = self.out / "preds" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=np.asarray(ids), probs=probs.astype(np.float32))

    def load_preds(self, name: str):
        path = self.out / "preds" / f"{name}.npz"
        if not path.exists():
            return None
        data = np.load(path, allow_pickle=False)
        return list(data["ids"]), data["probs"]

    def save_weights(self, name: str, model: torch.nn.Module):
        """weights/<name>.safetensors: the model's tensors (never a pickle)."""
        (self.out / "weights").mkdir(exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
        save_file(state, self.out / "weights" / f"{name}.safetensors")

    def save_json(self, rel: str, obj):
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def load_json(self, rel: str):
        path = self.out / rel
        return json.loads(path.read_text()) if path.exists() else None



def _absent(path: str) -> bool:
    """True only when `path` is known not to exist (an error asking says nothing)."""
    try:
        return not files.exists(path)
    except (OSError, StorageError):
        return False


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not a checkpoint of this raytag") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


# ----------------------------------------------------------------------------- context
class _Context:
    """Everything a step needs, and the data sets derived from the plan and run state."""

    def __init__(self, plan, cfg, store, rank, world, device, state: RunState, n_steps: int):
        self.plan, self.cfg, self.store, self.n_steps = plan, cfg, store, n_steps
        self.rank, self.world, self.device, self.state = rank, world, device, state
        self.precision = resolve_precision(cfg.train.precision, device)  # "fp32" or "bf16"
        self.curated_index = {cid: i for i, cid in enumerate(plan.curated_ids)}
        self.noisy_index = {cid: i for i, cid in enumerate(plan.noisy_ids)}
        self.report_mark = time.monotonic()  # when the last report was made (its wall_seconds)

    # -- data sets ------------------------------------------------------------------
    def curated(self, fold: int | None, held_out: bool) -> LabelledSet:
        folds = self.plan.curated_fold
        if fold is None:
            mask = np.ones(len(folds), bool) if held_out else np.zeros(len(folds), bool)
        else:
            mask = folds == fold if held_out else folds != fold
        ids = [cid for cid, m in zip(self.plan.curated_ids, mask) if m]
        return LabelledSet(ids, self.plan.curated_y[mask], np.zeros(len(ids), bool))

    def noisy_ids(self, fold: int | None, held_out: bool = False) -> list[str]:
        """The noisy clips fold `fold`'s model may train on (or, `held_out`, must not: the
        ones it predicts out of fold). Without cv.noisy_folds every fold trains on all and
        holds none out; so do the warm-up (fold None) and the refit model."""
        split = self.plan.noisy_fold
        if split is None or fold is None or fold == self.plan.refit_fold:
            return [] if held_out else list(self.plan.noisy_ids)
        return [c for c, f in zip(self.plan.noisy_ids, split) if (f == fold) == held_out]

    def noisy(self, ids: list[str], targets: np.ndarray | None = None, fold: int | None = None) -> LabelledSet:
        """Noisy clips with `targets`, else the targets fold `fold`'s model learns them by: the
        given labels, or with train.noisy_teacher those blended with the teacher's (the
        warm-up, fold None, has no teacher fold: given labels)."""
        if targets is None:
            rows = [self.noisy_index[c] for c in ids]
            by_fold = self.plan.noisy_targets or {}
            source = by_fold[fold] if fold in by_fold else self.plan.noisy_y
            targets = source[rows] if rows else np.zeros((0, self.plan.n_classes), np.float32)
        return LabelledSet(list(ids), targets, np.ones(len(ids), bool))

    def training_set(self, step: Step) -> LabelledSet:
        p = self.cfg.pipeline
        if step.kind == "warmup":
            return self.noisy(self.plan.noisy_subset if p.warmup.use == "subset" else self.plan.noisy_ids)
        base = self.curated(step.fold, held_out=False)
        if step.kind == "finetune":
            extra = {"none": [], "subset": self.plan.noisy_subset, "all": self.plan.noisy_ids}[p.finetune.noisy]
            allowed = set(self.noisy_ids(step.fold))  # cv.noisy_folds: not the fold's held-out ones
            extra = [c for c in extra if c in allowed]
            return base.concat(self.noisy(extra, fold=step.fold)) if extra else base
        # stage 2: curated + accepted noisy (given labels) + this round's pseudo-labelled clips
        decision = self.state.load_json(f"filter/fold{step.fold}.json")
        accepted = decision["accepted"] if decision else []
        data = base.concat(self.noisy(accepted, fold=step.fold)) if accepted else base
        pseudo = self.state.load_preds(f"pseudo/fold{step.fold}_r{step.round}")
        taken = set()
        if pseudo is not None and len(pseudo[0]):
            data = data.concat(self.noisy(pseudo[0], pseudo[1]))
            taken = set(pseudo[0])
        soft = self.state.load_preds(f"soft/fold{step.fold}")
        if soft is not None:  # rejected clips with soft targets, unless pseudo-labelled this round
            keep = [i for i, c in enumerate(soft[0]) if c not in taken]
            if keep:
                data = data.concat(self.noisy([soft[0][i] for i in keep], soft[1][keep]))
        return data

    # -- distributed prediction -------------------------------------------------------
    def predict(self, model, ids: list[str], embed: bool = False) -> np.ndarray:
        """Clip probabilities (or embeddings) of `ids`, the ranks sharing the clips."""
        return self._predict(model, ids, "embed" if embed else "probs")

    def _predict(self, model, ids: list[str], kind: str) -> np.ndarray:
        """kind: "probs", "embed", or "both" ([probs | embeddings], predict_and_embed)."""
        mine = ids[self.rank::self.world]
        inf = self.cfg.inference
        net = _unwrap(model)
        _share_rank0_buffers(net, self.world)
        kwargs = dict(segment_frames=self.cfg.segment_frames(), overlap=inf.overlap,
                      device=self.device, mean=self.plan.norm_mean, std=self.plan.norm_std)
        if kind == "both":
            out = predict_and_embed_segments(net, iter_store_clips(self.store, mine), **kwargs)
        elif kind == "embed":
            out = embed_segments(net, iter_store_clips(self.store, mine), **kwargs)
        else:
            out = predict_segments(net, iter_store_clips(self.store, mine), reduce=inf.reduce,
                                   tta=inf.tta, **kwargs)
        parts = _gather(out if len(mine) else None, self.world)
        width = next((p.shape[1] for p in parts if p is not None), 0)
        result = np.zeros((len(ids), width), np.float32)
        for r, part in enumerate(parts):
            if part is not None:
                result[r::self.world] = part
        return result

    def predict_and_embed(self, model, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) of `ids`, as predict(ids) and predict(ids, embed=True) give
        them; from one forward pass where they are the same segments' means (no TTA, reduce
        "mean": inference.predict_and_embed_segments), else from two."""
        inf = self.cfg.inference
        if inf.tta or inf.reduce != "mean":
            return self.predict(model, ids), self.predict(model, ids, embed=True)
        both = self._predict(model, ids, "both")
        k = self.plan.n_classes
        return both[:, :k], both[:, k:]

