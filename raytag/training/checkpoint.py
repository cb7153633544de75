"""A run's training state in a checkpoint, without a pickle.

Checkpoints live under `--storage`, which may be a bucket other people can write to, and
every resuming worker loads them: a pickle there (`torch.load(weights_only=False)`) would
run whatever code its author put in it. So a checkpoint holds only data formats:

    train_state.safetensors   every tensor: model weights, optimizer state, torch RNG state
    train_state.json          everything else: optimizer scalars and param groups (lr,
                              betas...), scheduler state, python / numpy RNG states, step

The JSON keeps what plain JSON cannot say with small tags: a tuple (`{"__tuple__": [...]}`),
a dict with non-text keys (`{"__items__": [[k, v], ...]}`, e.g. the optimizer's per-parameter
state keyed by index), a numpy array (`{"__ndarray__": [...], "dtype": ...}`) and a tensor
(`{"__tensor__": key}`, the key in the safetensors file). Any other object is refused when
saving, naming where it sits, instead of being pickled.

A checkpoint of raytag before this format (`train_state.pt`, a pickle) is refused, never read.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.errors import CheckpointError

TRAIN_TENSORS = "train_state.safetensors"
TRAIN_JSON = "train_state.json"
LEGACY_PICKLE = "train_state.pt"  # raytag's old pickled train state: refused, never loaded
FORMAT = 1

_TENSOR, _TUPLE, _ITEMS, _NDARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
_TAGS = {_TENSOR, _TUPLE, _ITEMS, _NDARRAY}


# ----------------------------------------------------------------------------- encoding
def _encode(obj, path: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {_TENSOR: path}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError(f"{path}: an array of Python objects cannot be stored without a pickle")
        return {_NDARRAY: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not _TAGS & set(obj):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, f"{path}.key{i}", tensors), _encode(v, f"{path}.{k}", tensors)]
                         for i, (k, v) in enumerate(obj.items())]}
    raise CheckpointError(
        f"{path}: a {type(obj).__name__} cannot be stored in a checkpoint without a pickle; "
        "only tensors, arrays, numbers, text, lists, tuples and dicts can"
    )


def _decode(obj, tensors: dict, where: str):
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj:
        key = obj[_TENSOR]
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor {key!r} is missing from {TRAIN_TENSORS}")
        return tensors[key]
    if _TUPLE in obj:
        return tuple(_decode(v, tensors, where) for v in obj[_TUPLE])
    if _ITEMS in obj:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj[_ITEMS]}
    if _NDARRAY in obj:
        return np.asarray(obj[_NDARRAY], dtype=np.dtype(obj["dtype"]))
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict:
    """The global RNG states a resumed run must continue from. Rank 0's only: dropout, which
    draws from torch's (on a GPU from the device's own generator), has them reseeded for
    each rank at every training epoch (epoch.dropout_seed), so no rank relies on them there."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))


# ----------------------------------------------------------------------------- save / load
def save_train_state(into: Path, state: dict) -> int:
    """Write `state` (model, optimizer, scheduler, rng, step...) as safetensors + JSON into
    the folder `into`; returns the bytes written."""
    tensors: dict = {}
    doc = {"format": FORMAT, "state": _encode(state, "state", tensors)}
    into = Path(into)
    save_file(tensors, into / TRAIN_TENSORS)
    (into / TRAIN_JSON).write_text(json.dumps(doc))
    return (into / TRAIN_TENSORS).stat().st_size + (into / TRAIN_JSON).stat().st_size


def _legacy_error(where: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: holds {LEGACY_PICKLE}, a pickled train state of an older raytag; raytag no "
        "longer loads pickles from storage (loading one runs any code its writer put in it). "
        "Train under a new --name, or delete this run's folder to start it again"
    )


def check_legacy_checkpoints(run_dir: str) -> None:
    """On the driver, before a run resumes: CheckpointError if a checkpoint of `run_dir`
    (a folder or URI) holds a pickled train state. Only names are looked at."""
    for entry in files.list_dir(run_dir):
        if entry.startswith("checkpoint_") and files.exists(files.join(run_dir, entry, LEGACY_PICKLE)):
            raise _legacy_error(files.join(run_dir, entry))


def check_format(ckpt_dir: Path) -> None:
    """CheckpointError unless `ckpt_dir` holds a train state in this format. A folder with a
    pickled train state (older raytag) is refused by its name: its bytes are never opened."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / LEGACY_PICKLE).exists():
        raise _legacy_error(str(ckpt_dir))
    if (ckpt_dir / TRAIN_JSON).is_file() and (ckpt_dir / TRAIN_TENSORS).is_file():
        return
    raise CheckpointError(f"{ckpt_dir}: no {TRAIN_JSON} + {TRAIN_TENSORS}; not a raytag checkpoint")


def load_train_state(ckpt_dir: Path) -> dict:
    """The state `save_train_state` wrote, from safetensors + JSON only (never a pickle)."""
    ckpt_dir = Path(ckpt_dir)
    check_format(ckpt_dir)
    try:
        doc = json.loads((ckpt_dir / TRAIN_JSON).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{ckpt_dir / TRAIN_JSON}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt_dir / TRAIN_JSON}: not a train state of format {FORMAT}")
    try:
        tensors = load_file(ckpt_dir / TRAIN_TENSORS)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{ckpt_dir / TRAIN_TENSORS}: not a safetensors file ({err})") from None
    try:
        return _decode(doc["state"], tensors, str(ckpt_dir / TRAIN_JSON))
    except (KeyError, TypeError, ValueError) as err:  # a hand-edited or damaged file
        raise CheckpointError(f"{ckpt_dir / TRAIN_JSON}: cannot be read back ({err!r})") from None
