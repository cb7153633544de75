"""Ensembles of finished trials: combiners, fitted weights, the checksummed artifact, pull.

`build_ensemble(experiment_dir, top=5, min_cv=None) -> EnsembleResult` runs the whole job;
`load_artifact(path) -> Artifact` verifies and loads an artifact, whose
`.predict_files(paths) -> (probs, failures)` tags audio files.
"""
from raytag.ensemble.artifact import Artifact, load_artifact, save_artifact, verify_artifact
from raytag.ensemble.combiners import COMBINERS, combine
from raytag.ensemble.job import EnsembleResult, build_ensemble
from raytag.ensemble.pull import pull

__all__ = [
    "COMBINERS", "Artifact", "EnsembleResult", "build_ensemble", "combine", "load_artifact",
    "pull", "save_artifact", "verify_artifact",
]
