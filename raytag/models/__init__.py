"""The model zoo: `build_model(cfg.model, n_classes, in_channels, n_bins)`; `MODELS` lists names.

Importing the package registers every family (one module each); the import order
below is the order of `MODELS`.
"""
# isort: off
from raytag.models import cnn2d, crnn, resnet, vgg, cnn1d, rawwave  # noqa: F401  (registers)
# isort: on
from raytag.models.common import Tagger
from raytag.models.registry import MODELS, ModelConfigError, build_model, register

__all__ = ["MODELS", "ModelConfigError", "Tagger", "build_model", "register"]
