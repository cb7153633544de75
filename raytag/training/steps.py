"""The ordered steps of one pipeline run, derived from the config alone.

A run is a flat list of steps so that a checkpoint can say "step i, epoch e" and a
restarted worker group continues exactly there:

    warmup                       (once; noisy clips only, so it is shared by every fold)
    for each fold:
        finetune                 (stage 1, from the warm-up weights, on curated train folds)
        filter                   (score noisy clips, probability rule and/or label spreading)
        stage2 round 0..R-1      (curated + accepted noisy (+ pseudo-labelled) clips)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raytag.config import Config, ConfigError


@dataclass(frozen=True)
class Step:
    kind: str  # "warmup" | "finetune" | "filter" | "stage2"
    fold: Optional[int]  # None for the warm-up
    round: int = 0
    epochs: int = 0
    lr: Optional[float] = None

    @property
    def trains(self) -> bool:
        return self.kind != "filter"

    @property
    def stage_name(self) -> str:
        """Name in reports and prediction files: warmup, finetune, filter, stage2_r0, ..."""
        return f"stage2_r{self.round}" if self.kind == "stage2" else self.kind


def stage2_enabled(cfg: Config) -> bool:
    p = cfg.pipeline
    return p.filter.enabled or p.label_spreading.enabled or p.pseudo.enabled


def build_steps(cfg: Config, folds: list[int]) -> list[Step]:
    p = cfg.pipeline
    steps: list[Step] = []
    if p.warmup.enabled and p.warmup.epochs > 0:
        steps.append(Step("warmup", None, epochs=p.warmup.epochs, lr=p.warmup.lr))
    for fold in folds:
        if p.finetune.enabled and p.finetune.epochs > 0:
            steps.append(Step("finetune", fold, epochs=p.finetune.epochs, lr=p.finetune.lr))
        if stage2_enabled(cfg):
            if p.filter.enabled or p.label_spreading.enabled:
                steps.append(Step("filter", fold))
            rounds = p.pseudo.rounds if p.pseudo.enabled else 1
            for r in range(rounds):
                steps.append(Step("stage2", fold, round=r, epochs=p.pseudo.epochs, lr=p.pseudo.lr))
    _refuse_judging_with_an_untrained_model(cfg, steps)
    if not any(s.trains and s.fold is not None for s in steps):
        raise ConfigError(
            "pipeline trains no fold model: enable pipeline.finetune (epochs > 0) or stage 2 "
            "(pipeline.filter / pipeline.label_spreading / pipeline.pseudo)"
        )
    return steps


def _refuse_judging_with_an_untrained_model(cfg: Config, steps: list[Step]) -> None:
    """A fold's first step must not judge noisy clips: with no warm-up and no stage 1 it would
    do so with a fresh network, whose ~0.5 probabilities accept (or pseudo-label) anything."""
    first = steps[0] if steps else None
    if first is None or first.kind == "warmup":
        return
    if first.kind == "filter":
        raise ConfigError(
            "pipeline.filter / pipeline.label_spreading judge noisy clips with a trained model, but nothing "
            "trains before them: enable pipeline.finetune (epochs > 0) or pipeline.warmup"
        )
    if first.kind == "stage2" and cfg.pipeline.pseudo.enabled:
        # round 0's pseudo labels are chosen before the round trains: every probability is ~0.5
        raise ConfigError(
            "pipeline.pseudo labels noisy clips with a trained model, but nothing trains before stage 2's "
            "first round: enable pipeline.finetune (epochs > 0) or pipeline.warmup (epochs > 0), "
            "or set pipeline.pseudo.enabled: false"
        )


def last_training_step_of_fold(steps: list[Step]) -> dict[int, int]:
    """fold -> index of the step whose model is that fold's final model."""
    out = {}
    for i, step in enumerate(steps):
        if step.fold is not None and step.trains:
            out[step.fold] = i
    return out
