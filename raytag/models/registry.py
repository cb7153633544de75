"""Models by name: `@register("name")` on a builder, `build_model(cfg, ...)` to make one.

A builder is `fn(cfg: ModelConfig, n_classes, in_channels, n_bins) -> Tagger`. One
builder can serve several names (resnet18/resnet34) by registering a small closure.
`MODELS` lists the registered names in registration order; search spaces and the CLI
read it to say what is valid.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.errors import RaytagError
from raytag.features.frontends import frontend_shape

Builder = Callable[[ModelConfig, int, int, int], nn.Module]

MODELS: list[str] = []
_BUILDERS: dict[str, Builder] = {}


class ModelConfigError(RaytagError):
    """A model name, size or family setting cannot be used; the message names it."""


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `build_model` find `fn` under `name` (names are unique)."""

    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} registered twice")
        _BUILDERS[name] = fn
        MODELS.append(name)
        return fn

    return wrap


def build_model(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> nn.Module:
    """The model `cfg.name` for inputs [B, in_channels, n_bins, T] and `n_classes` outputs."""
    builder = _BUILDERS.get(cfg.name)
    if builder is None:
        raise ModelConfigError(
            f"model.name: unknown model {cfg.name!r}; valid names: {', '.join(MODELS)}"
        )
    _check_sizes(cfg, n_classes, in_channels, n_bins)
    return channels_last(builder(cfg, n_classes, in_channels, n_bins))


def check_run_models(cfg) -> None:
    """Build, on its front end's shape, the model each member of a run (or the run's one
    family) will train: a model setting that cannot be used (an unknown name or family
    setting, a depth the family lacks) is refused before features are built and before an
    earlier member trains for minutes or hours."""
    for name, member in cfg.member_configs() or [(None, cfg)]:
        try:
            build_model(member.model, 2, *frontend_shape(member.features))
        except ModelConfigError as err:
            raise ModelConfigError(f"member {name}: {err}" if name else str(err)) from None


def channels_last(model: nn.Module) -> nn.Module:
    """A model with 2-D convolutions keeps its 4-D weights channels-last (NHWC).

    oneDNN (CPU) and cuDNN (GPU) run NHWC convolutions faster, and a convolution whose weight
    is channels-last returns a channels-last output for a plain input too, so the whole
    stack switches with no change to the data. On 2 cores a vgg_small w16 training step
    took 0.75x the NCHW time in float32 and its inference pass 0.69x
    (results/benchmarks/train_step.json). Only the layout changes: the same numbers to
    float rounding. Its state dict holds channels-last tensors: safetensors stores only
    contiguous ones, so every saver here calls `.contiguous()` first (and so must yours)."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def _check_sizes(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> None:
    if n_classes < 1:
        raise ModelConfigError(f"a model needs at least one class, got n_classes={n_classes}")
    if in_channels < 1 or n_bins < 1:
        raise ModelConfigError(
            f"input shape must have channels >= 1 and bins >= 1, got ({in_channels}, {n_bins})"
        )
    if cfg.width < 1:
        raise ModelConfigError(f"model.width: must be >= 1, got {cfg.width}")
    if cfg.depth < 1:
        raise ModelConfigError(f"model.depth: must be >= 1, got {cfg.depth}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ModelConfigError(f"model.dropout: must be in [0, 1), got {cfg.dropout}")


def family_params(cfg: ModelConfig, defaults: dict, may_be_zero: tuple[str, ...] = (),
                  switches: tuple[str, ...] = ()) -> dict:
    """`cfg.params` merged over a family's defaults; unknown keys and wrong types are errors.

    A typo in `model.params` would otherwise be silently ignored and a search would
    spend compute on a setting that never reached the model. `switches` are int settings
    that take 0 or 1 only (YAML and --set give 0/1, which a bool type would refuse).
    """
    unknown = sorted(set(cfg.params) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise ModelConfigError(
            f"model.params.{unknown[0]}: not a setting of model {cfg.name!r}; valid keys: {valid}"
        )
    out = dict(defaults)
    for key, value in cfg.params.items():
        want = type(defaults[key])
        if want is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ModelConfigError(
                f"model.params.{key}: expected {want.__name__}, got {value!r} (model {cfg.name!r})"
            )
        low_ok = value >= 0 if key in may_be_zero else value > 0
        if want in (int, float) and not low_ok:
            bound = ">= 0" if key in may_be_zero else "> 0"
            raise ModelConfigError(f"model.params.{key}: must be {bound}, got {value!r}")
        if key in switches and value not in (0, 1):
            raise ModelConfigError(f"model.params.{key}: 0 or 1, got {value!r} (model {cfg.name!r})")
        out[key] = value
    return out
