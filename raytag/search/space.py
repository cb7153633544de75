"""Search-space YAML -> a validated space that Optuna samples define-by-run.

A space file has four sections (see search_spaces/quick.yaml for a commented example):

    name: quick                       # experiment name by default (else the file's stem)
    base:                             # Config overrides applied to every trial
      cv.n_folds: 2
    space:                            # dotted Config keys -> distributions
      model.name: {choice: [cnn2d, crnn]}
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}
      train.mixup: {alpha: {uniform: [0.0, 1.0], step: 0.1}}   # nesting = dotted keys
    conditional:                      # blocks sampled only when their `when` holds
      - when: {model.name: crnn}      # a value or a list of values (any of)
        space: {model.params.lstm_hidden: {choice: [64, 128]}}
        conditional: [...]            # blocks nest
    search: {samples: 8, metric: auto, mode: max, scheduler: asha, grace_period: 2, ...}
    resources: {num_workers: 1, cpus_per_worker: 0.5, gpus_per_worker: 0, use_gpu: false}

Distributions: `choice: [..]`, `uniform: [low, high]`, `loguniform: [low, high]`,
`randint: [low, high]` (both ends included), each with an optional `step:` (quantized;
not for loguniform), and the shorthands `quniform: [low, high, step]`,
`qrandint: [low, high, step]`.

Conditionals are expressed with Optuna's define-by-run interface (`SearchSpace.define_by_run`
is passed to `OptunaSearch(space=...)`), so a parameter that is inactive in a trial is
simply never sampled and TPE models it only over the trials where it exists.

Every key and every extreme value is checked against `raytag.config.Config` when the file is
loaded, so "train.mixup.alhpa" or a threshold range past 1.0 fails before any compute is spent.
A choice of one in a conditional block fixes a setting for the trials that sample it; the check
applies it as they get it (a block `when: {features.kind: pcen}` setting gain_db to 0).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, get_type_hints

import yaml

from raytag.cluster import HEAD_NODE_RESOURCE
from raytag.config import Config, ConfigError, apply_overrides
from raytag.features.frontends import frontend_shape
from raytag.models import MODELS, ModelConfigError, build_model
from raytag.training.rungs import rung_epochs_total
from raytag.training.steps import build_steps

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "quniform", "qrandint")
SCHEDULERS = ("asha", "fifo")  # what a new sweep may use
# HyperBand was offered once; a sweep stored with it still loads (its --resume and `raytag report`)
STORED_SCHEDULERS = SCHEDULERS + ("hyperband",)
HYPERBAND_REFUSED = (
    "HyperBand does not fit raytag's pipeline: it has no grace_period (its brackets first compare "
    "after as little as 1 first-fold epoch), it pauses every trial at its bracket's milestone until "
    "all of the bracket get there (a trial whose first-fold epochs stop below it keeps the others "
    "paused, holding their slots, for its whole pipeline), and each pause restarts a trial's "
    "pipeline from its last checkpoint; use asha (or fifo) instead"
)
# What the searcher and the leaderboard choose by: the out-of-fold score of a finished
# trial; "auto" is the dataset's own (cv_map3 on FSDKaggle2018, cv_lwlrap on FSDKaggle2019).
METRICS = ("auto", "cv_lwlrap", "cv_map3")
_SECTIONS = ("name", "description", "base", "space", "conditional", "search", "resources")
_SCALARS = (type(None), bool, int, float, str)


class SpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and the bad key."""


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One searched setting: a dotted Config key and its distribution."""

    key: str
    kind: str  # choice | uniform | loguniform | randint
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    values: tuple = ()

    @property
    def _encoded(self) -> bool:
        # Optuna's categorical takes only scalars; lists/dicts go through as JSON text.
        return self.kind == "choice" and not all(isinstance(v, _SCALARS) for v in self.values)

    def suggest(self, trial) -> Any:
        """Sample this parameter from an Optuna trial; returns the Config value."""
        if self.kind == "choice":
            if self._encoded:
                return json.loads(trial.suggest_categorical(self.key, [json.dumps(v) for v in self.values]))
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "randint":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        value = trial.suggest_float(
            self.key, self.low, self.high, log=self.kind == "loguniform", step=self.step
        )
        # Optuna's grid arithmetic gives 0.6000000000000001; the config should read 0.6.
        return float(f"{value:.10g}") if self.step else value

    def extremes(self) -> list:
        """Values that span the range: every choice, or the two ends."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "randint":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def optuna_distribution(self):
        """The Optuna distribution object (used to rebuild a study for importances)."""
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(
                [json.dumps(v) for v in self.values] if self._encoded else list(self.values)
            )
        if self.kind == "randint":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return d.FloatDistribution(self.low, self.high, log=self.kind == "loguniform", step=self.step)

    def choice_for(self, value: Any) -> Any:
        """The choice `value` stands for: the one of the same JSON text, else one equal to it
        ([0, 1.0] for [0, 1], a mapping in another key order): Optuna knows a list or mapping
        choice by its JSON text (see suggest), so a first trial must give the choice's own."""
        text = json.dumps(value, sort_keys=True)
        for c in self.values:
            if json.dumps(c, sort_keys=True) == text:
                return c
        return next(c for c in self.values if c == value)

    def holds(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take."""
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "randint" and int(value) != value:
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:  # on the grid, as Optuna's own samples are
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-6
        return True

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        q = f" step {self.step:g}" if self.step else ""
        return f"{self.kind} [{self.low:g}, {self.high:g}]{q}"


@dataclass(frozen=True)
class Block:
    """Parameters sampled together; `when` ({key: allowed values}) gates the block."""

    when: tuple = ()  # ((key, (allowed, ...)), ...)
    params: tuple = ()  # Param, ...
    children: tuple = ()  # Block, ...

    def active(self, sampled: dict) -> bool:
        return all(key in sampled and sampled[key] in allowed for key, allowed in self.when)


@dataclass
class SearchSettings:
    samples: int = 8
    metric: str = "auto"  # one of METRICS; the sweep resolves "auto" by the dataset's layout
    mode: str = "max"
    scheduler: str = "asha"
    # ASHA counts epochs of the first fold's fine-tune and stage-2 steps (rung_epoch,
    # raytag.training.rungs), so trials are compared at equal progress whatever their warm-up
    grace_period: int = 2  # first-fold epochs before the first cut
    reduction_factor: float = 3.0  # ASHA: keep the best 1/reduction_factor at a rung
    max_t: Optional[int] = None  # the last rung's horizon in first-fold epochs; None: from the space
    max_concurrent_trials: int = 1
    seed: int = 0
    startup_trials: Optional[int] = None  # TPE's random start; None: samples // 3, 2..10
    epoch_budget: Optional[int] = None  # total epochs over all trials; the sweep ends when spent
    # settings the first trials take before TPE samples (Optuna's enqueue_trial): e.g. the
    # recipe you run today, so that the sweep measures it and its ensemble can use it. Each is
    # a mapping of searched keys; a key left out is sampled
    first_trials: Optional[list] = None


@dataclass
class Resources:
    """Per-trial resources. The trial's own function holds `trial_cpus`; its Ray Train
    worker group holds num_workers x (cpus_per_worker, gpus_per_worker if use_gpu). A trial
    that trains in its own process (train.runner) claims no more: on one node the tuner's
    `concurrency` still counts its worker, and a claim would leave its feature build's Ray
    tasks (1 CPU each) no CPU to run on (seen: a 1.25-CPU trial on 2 CPUs waited forever)."""

    num_workers: Optional[int] = None  # None: the base config's train.num_workers
    cpus_per_worker: Optional[float] = None
    gpus_per_worker: Optional[float] = None  # < 1 lets several small trials share a GPU
    use_gpu: Optional[bool] = None
    trial_cpus: float = 0.25  # the trial function itself only waits on its trainer
    # Trial functions (each trial's driver) run on the head node, so that losing a worker
    # node costs only Train workers, which FailureConfig restarts from the last checkpoint;
    # a driver lost with its node would end its trial.
    trials_on_head: bool = True

    def trial_resources(self) -> dict:
        res = {"CPU": self.trial_cpus}
        if self.trials_on_head:
            res[HEAD_NODE_RESOURCE] = 0.001
        return res

    def overrides(self) -> dict:
        return {f"train.{k}": getattr(self, k) for k in _RESOURCE_KEYS if getattr(self, k) is not None}


# Resources' settings that are train.* settings of every trial's Config (they win over base)
_RESOURCE_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker", "use_gpu")


@dataclass
class SearchSpace:
    name: str
    source: str  # the file it came from (for messages)
    text: str  # the YAML text (stored with the experiment, for resume)
    base: dict = field(default_factory=dict)  # dotted key -> value
    root: Block = field(default_factory=Block)
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)

    # -- sampling ------------------------------------------------------------
    def define_by_run(self, trial) -> Optional[dict]:
        """Optuna define-by-run function: samples the active blocks in order.

        Returns the values that differ from what Optuna recorded (JSON-encoded choices
        decoded, quantized floats rounded); Ray merges them into the trial config."""
        sampled: dict = {}
        decoded: dict = {}

        def visit(block: Block):
            if not block.active(sampled):
                return
            for p in block.params:
                sampled[p.key] = p.suggest(trial)
                if p._encoded or p.step:
                    decoded[p.key] = sampled[p.key]
            for child in block.children:
                visit(child)

        visit(self.root)
        return decoded or None

    def first_points(self) -> list[dict]:
        """`search.first_trials` as Optuna's values (a choice of lists or mappings is JSON text
        to Optuna: see Param.suggest), for the searcher's points_to_evaluate."""
        params = {p.key: p for p in self.params()}

        def optuna_value(p: Param, value: Any) -> Any:
            if p.kind != "choice":
                return value
            choice = p.choice_for(value)  # held (checked at load), maybe as another JSON text
            return json.dumps(choice) if p._encoded else choice

        return [{k: optuna_value(params[k], v) for k, v in point.items()}
                for point in self.search.first_trials or []]

    def trial_config(self, sampled: dict) -> Config:
        """base + resources + the sampled values -> the trial's validated Config."""
        overrides = {**self.base, **self.resources.overrides(), **sampled}
        return Config.from_dict(apply_overrides({}, overrides))

    def base_config(self) -> Config:
        return self.trial_config({})

    # -- introspection -------------------------------------------------------
    def params(self) -> list[Param]:
        out: list[Param] = []

        def walk(block: Block):
            out.extend(block.params)
            for child in block.children:
                walk(child)

        walk(self.root)
        return out

    def param_keys(self) -> list[str]:
        return list(dict.fromkeys(p.key for p in self.params()))

    def max_steps(self) -> int:
        """Most epoch reports one trial can make (the scheduler's horizon): every numeric
        setting at its largest value, every enabled-flag on."""
        return estimate_steps(self._top_config())

    def max_rung_epochs(self) -> int:
        """Most first-fold fine-tune + stage-2 epochs one trial can run (the scheduler's
        horizon, in its time unit `rung_epoch`), with settings at their largest."""
        try:
            cfg = self._top_config()
            return max(1, rung_epochs_total(build_steps(cfg, _folds(cfg))))
        except ConfigError:
            return 1

    def _top_config(self) -> Config:
        top: dict = {}
        for p in self.params():
            values = p.extremes()
            numeric = [v for v in values if isinstance(v, (int, float))]
            if len(numeric) == len(values):
                top[p.key] = max(max(numeric), top.get(p.key, -math.inf))
            elif p.key not in top:
                top[p.key] = values[0]
        try:
            return self.trial_config(top)
        except ConfigError:
            return self.base_config()


def _folds(cfg: Config) -> list:
    return list(cfg.cv.folds) if cfg.cv.folds else list(range(cfg.cv.n_folds))


def estimate_steps(cfg: Config) -> int:
    """Reports one pipeline run makes: one per training epoch of every step (the warm-up
    once, then per fold fine-tune, filter, stage-2 rounds), one per filter step."""
    try:
        steps = build_steps(cfg, _folds(cfg))
    except ConfigError:  # a config that trains nothing fails in its trial, with this reason
        return 1
    return max(1, sum(s.epochs if s.trains else 1 for s in steps))


# ----------------------------------------------------------------------------- loading
def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; SpaceError names the file and key."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space not found: {path} (see search_spaces/ for examples)")
    space = parse_space(path.read_text(), source=str(path), default_name=path.stem, combinations=True)
    _check_base_against_resources(space)
    return space


def _refuse_a_run_config(data: dict, source: str) -> None:
    """A run config given as a space (`tune --space configs/default.yaml`): no section that
    holds a space's settings, and only a run config's top-level keys."""
    run_keys = {f.name for f in dataclasses.fields(Config)}
    if set(data) & {"base", "space", "conditional"} or not set(data) <= run_keys:
        return
    raise SpaceError(f"{source}: this is a run config (it has {', '.join(sorted(set(data) - {'name'}))}, a run's "
                     f"settings), not a search space; run it with `raytag train --config {source}`, or give a "
                     "search space (see search_spaces/), whose base: holds such settings")


def is_space_file(path: str | Path) -> bool:
    """Whether the YAML file at `path` is a search space rather than a run config: it has a
    section only a space has (base, space, ...). False for a file that is absent or not
    YAML, whose error Config.from_yaml gives."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and bool(set(data) & (set(_SECTIONS) - {"name"}))


def _check_base_against_resources(space: SearchSpace):
    """A train.* resource setting in `base` that `resources` sets otherwise loses to it in every
    trial, without a word: refuse it in a space file. (Checked on files only: a sweep stored
    before this check stays readable, for its resume and its report.)"""
    for key, value in space.resources.overrides().items():
        if key in space.base and space.base[key] != value:
            name = key[len("train."):]
            raise SpaceError(f"{space.source}: base.{key}: {space.base[key]!r}, but resources.{name}: {value!r} "
                             f"wins in every trial; set it in one place (resources.{name})")


def with_fixed_settings(space: SearchSpace, settings: dict[str, Any]) -> SearchSpace:
    """The space with `settings` (dotted keys, as `raytag tune --set` gives them) fixed for
    every trial: merged into `base`, and into the text the sweep stores, so that a resumed
    sweep keeps them. A key the space searches cannot be fixed: say which to change.

    The four per-trial resource settings (train.num_workers, cpus_per_worker, gpus_per_worker,
    use_gpu) go into the `resources` section instead, which trials take over `base`: the
    command line is the later, more specific word, so `--set train.gpus_per_worker=1` gives
    each trial one GPU whatever the file's `resources:` says (it was silently overridden)."""
    flat = flatten_settings(settings, space.source, "--set")  # a section given whole: key by key
    params = {p.key: p for p in space.params()}
    for key, value in flat.items():
        if key in params:
            raise SpaceError(f"--set {key}: {space.source} searches this key; to fix it, take it out of "
                             "the space's `space` (or `conditional`) section and into `base`")
        over = next((s for s in params if key.startswith(s + ".")), None)
        if over:  # the sampled mapping replaces the whole setting, this key with it
            raise SpaceError(f"--set {key}: {space.source} searches {over} whole ({params[over].describe()}), "
                             f"which replaces {key} in every trial; set {over} in base instead of searching it")
        under = next((s for s in params if s.startswith(key + ".") and _has_path(value, s[len(key) + 1:])), None)
        if under:
            raise SpaceError(f"--set {key}: {space.source} searches {under}, which every trial samples over "
                             f"the value given here; leave {under[len(key) + 1:]} out of it")
    data = yaml.safe_load(space.text) or {}
    resources = {k: v for k, v in (data.get("resources") or {}).items()}
    base = dict(space.base)
    for key, value in flat.items():
        name = key[len("train."):]
        if key.startswith("train.") and name in _RESOURCE_KEYS:
            resources[name] = value
            base.pop(key, None)
        else:
            base[key] = value  # flat dotted keys: a nested base and --set cannot clash
    data["base"] = base
    if resources:
        data["resources"] = resources
    given = " ".join(f"--set {k}={json.dumps(v)}" for k, v in settings.items())
    text = f"# {space.source} with `raytag tune {given}`\n" + yaml.safe_dump(data, sort_keys=False)
    return parse_space(text, source=space.source, default_name=space.name, combinations=True)


def _has_path(value: Any, dotted: str) -> bool:
    """Whether a mapping value names the (dotted) key below it."""
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def with_search_overrides(space: SearchSpace, flags: dict[str, Any]) -> SearchSpace:
    """The space with search settings the command line gives (`raytag tune --samples 8`:
    {"--samples": ("samples", 8)}), checked as the file's own are: Tune reads samples -1 as
    "no limit", and an ASHA over a FIFO file still needs a reachable first rung."""
    given = {flag: (setting, value) for flag, (setting, value) in flags.items() if value is not None}
    if not given:
        return space
    out = dataclasses.replace(space, search=dataclasses.replace(
        space.search, **{setting: value for setting, value in given.values()}))
    try:
        _check_settings(out)
        _check_new_sweep(out)
        _check_rungs(out)
    except SpaceError as err:
        shown = " ".join(f"{flag} {value}" for flag, (_, value) in given.items())
        raise SpaceError(f"{shown}: {err}") from None
    return out


def parse_space(text: str, source: str = "<space>", default_name: str = "sweep", *,
                combinations: bool = False) -> SearchSpace:
    """Read and validate a space's YAML text. `combinations`: the space of a new sweep
    (load_space, --set): also try the settings' extremes together (_check_combinations) and
    refuse what a new sweep may no longer use (_check_new_sweep: hyperband), and check every
    parameter's extreme values against Config; a sweep's stored space is read without them, so
    that its resume and report keep working when Config's bounds grow stricter (a sweep that
    searched train.lr from 0; a resumed trial that samples such a value is refused by its own
    Config, as a failed trial)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: top level must be a mapping with sections {', '.join(_SECTIONS)}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        _refuse_a_run_config(data, source)
        raise SpaceError(f"{source}: unknown section '{unknown[0]}'; sections are {', '.join(_SECTIONS)}")

    base = flatten_settings(data.get("base") or {}, source, "base")
    root = _parse_block(
        {"space": data.get("space") or {}, "conditional": data.get("conditional") or []},
        source, "", known={}, when=(),
    )
    space = SearchSpace(
        name=str(data.get("name") or default_name),
        source=source,
        text=text,
        base=base,
        root=root,
        search=_parse_dataclass(SearchSettings, data.get("search"), source, "search"),
        resources=_parse_dataclass(Resources, data.get("resources"), source, "resources"),
    )
    _check_settings(space)
    if combinations:
        _check_new_sweep(space)
    _check_one_distribution_per_key(space)
    _validate_against_config(space, extremes=combinations)
    if combinations:  # before the rungs: a step list that fails would read there as 1 epoch
        _check_combinations(space)
    _check_rungs(space)
    return space


def _check_new_sweep(space: SearchSpace):
    """What a new sweep may no longer use, though a stored sweep that used it still loads."""
    if space.search.scheduler == "hyperband":
        raise SpaceError(f"{space.source}: search.scheduler: hyperband is no longer offered. {HYPERBAND_REFUSED}")
    try:
        train = space.base_config().train
    except ConfigError:
        return  # named by _validate_against_config
    if train.use_gpu and train.gpus_per_worker <= 0:  # Ray refuses it in every trial
        raise SpaceError(f"{space.source}: resources.gpus_per_worker: {train.gpus_per_worker:g} with use_gpu true, "
                         "which Ray refuses (`use_gpu` is True but `GPU` is set to 0); give each worker a "
                         "GPU share above 0 (e.g. 0.5) or set use_gpu: false")


def _check_one_distribution_per_key(space: SearchSpace):
    """Optuna names a parameter by its key, and a name sampled again must keep its kind
    (and for a choice, its list), so a key searched in two conditional blocks that way
    apart would fail the second time it is sampled, mid-sweep ("does not support dynamic
    value space"): refuse it now, by Optuna's own rule (ranges may differ)."""
    from optuna.distributions import check_distribution_compatibility

    seen: dict[str, Param] = {}
    for p in space.params():
        first = seen.setdefault(p.key, p)
        try:
            check_distribution_compatibility(first.optuna_distribution(), p.optuna_distribution())
        except ValueError as err:
            raise SpaceError(
                f"{space.source}: '{p.key}' is searched in two conditional blocks as {first.describe()} and "
                f"{p.describe()}, which Optuna cannot sample under one name ({err}): give both blocks the same "
                "choices (or kind of range), or set the value in base"
            ) from None


def _check_rungs(space: SearchSpace):
    """A first rung no trial reaches would leave the scheduler idle: say so now."""
    s = space.search
    if s.scheduler == "fifo":
        return
    most = space.max_rung_epochs()
    if s.grace_period > most:
        raise SpaceError(
            f"{space.source}: search.grace_period: {s.grace_period} first-fold epochs, but no trial of "
            f"this space trains more than {most} epochs on its first fold (fine-tune + stage 2), so "
            f"{s.scheduler} would never compare trials; lower it (the warm-up does not count)"
        )


def flatten_settings(node: Any, source: str, where: str, prefix: str = "") -> dict:
    """base: nested mappings or dotted keys -> {dotted: value}."""
    if not isinstance(node, dict):
        raise SpaceError(f"{source}: {where}: expected a mapping of settings, got {node!r}")
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        # A Config section is a mapping; free-form dict settings (model.params,
        # label_spreading.groups) are set whole, so only descend into sections.
        if isinstance(value, dict) and _is_section(dotted):
            out.update(flatten_settings(value, source, where, dotted + "."))
        else:
            out[dotted] = value
    return out


def _is_section(dotted: str) -> bool:
    node: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = get_type_hints(node)[part]
    return dataclasses.is_dataclass(node)


def _parse_block(node: Any, source: str, where: str, known: dict, when: tuple) -> Block:
    if not isinstance(node, dict):
        raise SpaceError(f"{source}: {where or 'conditional'}: expected a mapping with 'when' and 'space'")
    extra = sorted(set(node) - {"when", "space", "conditional"})
    if extra:
        raise SpaceError(f"{source}: {where}: unknown entry '{extra[0]}' (a block has when, space, conditional)")
    params = []
    space_node = node.get("space") or {}
    if not isinstance(space_node, dict):
        raise SpaceError(f"{source}: {where}space: expected a mapping of dotted keys to distributions")
    for key, spec in _flatten_specs(space_node, source, where + "space"):
        label = f"{where}space.{key}"
        if key in known:
            raise SpaceError(f"{source}: {label}: '{key}' is already searched in an enclosing block")
        param = _parse_param(key, spec, source, label)
        params.append(param)
    scope = {**known, **{p.key: p for p in params}}
    children = []
    blocks = node.get("conditional") or []
    if not isinstance(blocks, list):
        raise SpaceError(f"{source}: {where}conditional: expected a list of blocks with 'when' and 'space'")
    for i, child in enumerate(blocks):
        label = f"{where}conditional[{i}]."
        if not isinstance(child, dict) or not isinstance(child.get("when"), dict) or not child["when"]:
            raise SpaceError(f"{source}: {label}when: expected a mapping such as {{model.name: crnn}}")
        cond = []
        for key, allowed in child["when"].items():
            if key not in scope or scope[key].kind != "choice":
                raise SpaceError(
                    f"{source}: {label}when.{key}: not a `choice` searched in this or an enclosing "
                    f"block (searched here: {', '.join(k for k, p in scope.items() if p.kind == 'choice') or 'none'})"
                )
            allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
            bad = [a for a in allowed if a not in scope[key].values]
            if bad:
                raise SpaceError(
                    f"{source}: {label}when.{key}: {bad[0]!r} is not one of its choices {list(scope[key].values)}"
                )
            cond.append((key, allowed))
        children.append(_parse_block(child, source, label, scope, tuple(cond)))
    return Block(when=when, params=tuple(params), children=tuple(children))


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and any(k in DISTRIBUTIONS for k in value)


def _flatten_specs(node: dict, source: str, where: str, prefix: str = ""):
    """space: nested mappings -> (dotted key, distribution spec) pairs."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if _is_spec(value):
            yield dotted, value
        elif isinstance(value, dict) and value:
            yield from _flatten_specs(value, source, where, dotted + ".")
        else:
            raise SpaceError(
                f"{source}: {where}.{dotted}: {value!r} is not a distribution; use one of "
                f"{', '.join(DISTRIBUTIONS)} (fixed values go under base:)"
            )


def _num(value, label, source):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{source}: {label}: expected a number, got {value!r}")
    return float(value)


def _parse_param(key: str, spec: dict, source: str, label: str) -> Param:
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        raise SpaceError(f"{source}: {label}: give exactly one of {', '.join(DISTRIBUTIONS)}")
    kind = kinds[0]
    extra = sorted(set(spec) - {kind, "step"})
    if extra:
        raise SpaceError(f"{source}: {label}: unknown entry '{extra[0]}' (allowed: {kind}, step)")
    arg = spec[kind]
    step = spec.get("step")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpaceError(f"{source}: {label}: choice needs a non-empty list of values")
        if step is not None:
            raise SpaceError(f"{source}: {label}: step is not used with choice")
        if len({json.dumps(v, sort_keys=True) for v in arg}) != len(arg):
            raise SpaceError(f"{source}: {label}: choice lists a value twice")
        return Param(key, "choice", values=tuple(arg))
    if kind in ("quniform", "qrandint"):
        if not isinstance(arg, list) or len(arg) != 3:
            raise SpaceError(f"{source}: {label}: {kind} needs [low, high, step]")
        arg, step, kind = arg[:2], arg[2], kind[1:]
    if not isinstance(arg, list) or len(arg) != 2:
        raise SpaceError(f"{source}: {label}: {kind} needs [low, high]")
    low, high = (_num(v, label, source) for v in arg)
    if not low < high:
        raise SpaceError(f"{source}: {label}: low {low:g} must be below high {high:g}")
    if step is not None:
        step = _num(step, label + ".step", source)
        if step <= 0 or step > high - low:
            raise SpaceError(f"{source}: {label}: step {step:g} must be in (0, high - low]")
    if kind == "loguniform":
        if low <= 0:
            raise SpaceError(f"{source}: {label}: loguniform needs low > 0, got {low:g}")
        if step is not None:
            raise SpaceError(f"{source}: {label}: loguniform cannot be quantized; use choice")
    if kind == "randint":
        if not (low.is_integer() and high.is_integer() and (step is None or step.is_integer())):
            raise SpaceError(f"{source}: {label}: randint needs whole numbers")
    return Param(key, kind, low=low, high=high, step=step)


def _parse_dataclass(cls, node: Any, source: str, where: str):
    if node is None:
        return cls()
    if not isinstance(node, dict):
        raise SpaceError(f"{source}: {where}: expected a mapping, got {node!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise SpaceError(f"{source}: {where}.{unknown[0]}: unknown setting; valid: {', '.join(names)}")
    obj = cls(**node)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if value is None:
            continue
        want = f.type if isinstance(f.type, str) else f.type.__name__
        ok = True
        if "bool" in want:
            ok = isinstance(value, bool)
        elif "int" in want:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "float" in want:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif "str" in want:
            ok = isinstance(value, str)
        if not ok:
            raise SpaceError(f"{source}: {where}.{f.name}: {value!r} is not a valid {want}")
    return obj


def _check_first_trials(space: SearchSpace):
    """Each first trial names searched keys only, with values their distributions hold:
    Optuna would otherwise sample the key anyway, with only a warning."""
    points = space.search.first_trials
    if points is None:
        return
    where = f"{space.source}: search.first_trials"
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise SpaceError(f"{where}: expected a list of mappings (searched key: value), got {points!r}")
    if len(points) > space.search.samples:
        raise SpaceError(f"{where}: {len(points)} first trials but search.samples is {space.search.samples}")
    params = {p.key: p for p in space.params()}
    for i, point in enumerate(points):
        for key, value in point.items():
            p = params.get(key)
            if p is None:
                raise SpaceError(f"{where}[{i}].{key}: not a searched key (searched: {', '.join(params)}); "
                                 "set it in base instead")
            if not p.holds(value):
                raise SpaceError(f"{where}[{i}].{key}: {value!r} is outside its {p.describe()}")


def _check_settings(space: SearchSpace):
    s, r, src = space.search, space.resources, space.source
    if s.samples < 1:
        raise SpaceError(f"{src}: search.samples: must be at least 1, got {s.samples}")
    if s.metric == "val_lwlrap":
        raise SpaceError(f"{src}: search.metric: val_lwlrap is no longer a search metric: the scheduler "
                         "compares the first fold's held-out score by itself (rung_score); use auto, "
                         "cv_lwlrap or cv_map3")
    if s.metric not in METRICS:
        raise SpaceError(f"{src}: search.metric: {s.metric!r} is not one of {', '.join(METRICS)}")
    if s.mode != "max":  # min would make the scheduler and TPE keep the worst trials
        raise SpaceError(f"{src}: search.mode: {s.mode!r}, but every search metric (cv_lwlrap, cv_map3) "
                         "is higher-is-better; set mode: max or leave it out")
    if s.scheduler not in STORED_SCHEDULERS:  # hyperband: only in a stored sweep (_check_new_sweep)
        raise SpaceError(f"{src}: search.scheduler: {s.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if s.grace_period < 1:
        raise SpaceError(f"{src}: search.grace_period: must be at least 1")
    if s.reduction_factor <= 1:
        raise SpaceError(f"{src}: search.reduction_factor: must be above 1")
    if s.max_concurrent_trials < 1:
        raise SpaceError(f"{src}: search.max_concurrent_trials: must be at least 1")
    if s.epoch_budget is not None and s.epoch_budget < 1:
        raise SpaceError(f"{src}: search.epoch_budget: must be at least 1 epoch")
    if s.max_t is not None and s.max_t <= s.grace_period:
        raise SpaceError(f"{src}: search.max_t: must be above grace_period ({s.grace_period})")
    _check_first_trials(space)
    if r.trial_cpus <= 0:
        raise SpaceError(f"{src}: resources.trial_cpus: must be above 0 (Ray refuses a request of 0)")
    for name in ("cpus_per_worker", "gpus_per_worker"):
        value = getattr(r, name)
        if value is not None and value < 0:
            raise SpaceError(f"{src}: resources.{name}: must not be negative")


def _validate_against_config(space: SearchSpace, extremes: bool = True):
    """Build a Config for the base alone and (`extremes`: a new sweep's space) for every
    parameter at each extreme value (with its block's conditions met), so a bad key or value
    fails now, named."""
    src = space.source
    try:
        base = space.base_config()
    except ConfigError as err:
        raise SpaceError(f"{src}: base/resources: {err}") from None
    _check_model_names(space, base)
    _check_model_params(base, f"{src}: base")
    if not extremes:
        return

    def walk(block: Block, conditions: dict, models: list, where: str):
        for key, allowed in block.when:
            conditions = {**conditions, key: allowed[0]}
        models = _models_in_scope(block, models)
        for p in block.params:
            for value in p.extremes():
                try:
                    cfg = _sampled_config(space, {**conditions, p.key: value})
                except ConfigError as err:
                    raise SpaceError(f"{src}: {where}space.{p.key} = {value!r}: {err}") from None
                if p.key == "model.name":  # the base's model.params against each searched model
                    _check_model_params(cfg, f"{src}: {where}space.{p.key} = {value!r}")
                elif p.key.startswith("model.params."):  # against every model a trial here can have
                    for model in models:
                        cfg = _sampled_config(space, {**conditions, "model.name": model, p.key: value})
                        _check_model_params(cfg, f"{src}: {where}space.{p.key} = {value!r}")  # names the model
        for i, child in enumerate(block.children):
            walk(child, conditions, models, f"{where}conditional[{i}].")

    walk(space.root, {}, [base.model.name], "")


def _sampled_config(space: SearchSpace, sampled: dict) -> Config:
    """The Config of a trial that samples `sampled`. Where these values alone fail, a trial
    still gets the values fixed (a choice of one) in the conditional blocks they make active,
    as define_by_run samples them: a block `when: {features.kind: pcen}` that sets
    train.augment.gain_db to 0 makes a base gain_db of 6 fine for pcen. Tried only on a
    failure, so that a fixed value that is itself wrong is named at its own key."""
    try:
        return space.trial_config(sampled)
    except ConfigError:
        fixed = _fixed_choices(space.root, sampled)
        if not fixed:
            raise
    return space.trial_config({**sampled, **fixed})


def _fixed_choices(root: Block, sampled: dict) -> dict:
    """The values that blocks active for `sampled` fix (a choice of one) and `sampled` lacks,
    visited in define_by_run's order, so a fixed value can make a nested block active."""
    values = dict(sampled)
    fixed: dict = {}

    def visit(block: Block):
        if not block.active(values):
            return
        for p in block.params:
            if p.key not in values and p.kind == "choice" and len(p.values) == 1:
                values[p.key] = fixed[p.key] = p.values[0]
        for child in block.children:
            visit(child)

    visit(root)
    return fixed


COMBINATIONS = 200  # extreme-value combinations tried at load (about 1 ms each)


def _check_combinations(space: SearchSpace, budget: int = COMBINATIONS, seed: int = 0):
    """Settings that depend on each other (pseudo-label upper against the lower bound's end,
    fmin/fmax, n_mfcc against n_mels, a step list that trains no fold model) pass the
    one-key-at-a-time check above and fail in the trials that combine them: each such trial
    costs a start, and TPE learns nothing from a FAIL. Try combinations of every parameter's
    extremes (every choice, each end of a range), as the trials' conditional blocks sample
    them: all of them when there are at most `budget`, else a seeded sample of `budget`. A
    combination that fails is cut down to the fewest settings that still fail, and named."""
    combos = list(itertools.islice(_extreme_combinations([space.root], {}), budget + 1))
    if len(combos) > budget:
        rng, seen, combos = random.Random(seed), set(), []
        for _ in range(budget):
            combo = _random_extremes(space.root, rng)
            text = json.dumps(combo, sort_keys=True, default=str)
            if text not in seen:
                seen.add(text)
                combos.append(combo)
    for combo in combos:
        err = _combination_error(space, combo)
        if err is None:
            continue
        needed = dict(combo)
        for key in list(combo):  # drop what the failure does not need (the key back at base)
            trial = {k: v for k, v in needed.items() if k != key}
            if _combination_error(space, trial) == err:
                needed = trial
        shown = ", ".join(f"{k} = {v!r}" for k, v in needed.items())
        raise SpaceError(f"{space.source}: {shown}: a trial can sample these together, which fails: {err}; "
                         "narrow their ranges (or move them into conditional blocks) so that every "
                         "combination holds")


def _combination_error(space: SearchSpace, sampled: dict) -> Optional[str]:
    """What a trial with these sampled values would fail on at its start, or None."""
    try:
        cfg = space.trial_config(sampled)
        frontend_shape(cfg.features)
        build_steps(cfg, _folds(cfg))
    except ConfigError as err:
        return str(err)
    except Exception:  # noqa: BLE001 - not a setting's fault: the trial reports it
        return None
    return None


def _ends(p: Param) -> list:
    """The values a trial can sample at each end of p: a quantized range's high on its grid."""
    if p.kind == "choice" or not p.step:
        return p.extremes()
    high = p.low + math.floor((p.high - p.low) / p.step + 1e-9) * p.step
    if p.kind == "randint":
        return [int(p.low), int(high)]
    return [float(p.low), float(f"{high:.10g}")]


def _extreme_combinations(stack: list, sampled: dict):
    """Every combination of extremes, block by block in define_by_run's order (a block's
    parameters, then its children), a block only where its `when` holds."""
    if not stack:
        yield dict(sampled)
        return
    block, rest = stack[0], stack[1:]
    if not block.active(sampled):
        yield from _extreme_combinations(rest, sampled)
        return
    keys = [p.key for p in block.params]
    for values in itertools.product(*(_ends(p) for p in block.params)):
        yield from _extreme_combinations(list(block.children) + rest, {**sampled, **dict(zip(keys, values))})


def _random_extremes(root: Block, rng: random.Random) -> dict:
    sampled: dict = {}

    def visit(block: Block):
        if not block.active(sampled):
            return
        for p in block.params:
            sampled[p.key] = rng.choice(_ends(p))
        for child in block.children:
            visit(child)

    visit(root)
    return sampled


def _models_in_scope(block: Block, outer: list) -> list:
    """The model.name values a trial that samples this block can have: those searched in it
    (else the enclosing blocks'), narrowed by its `when` on model.name."""
    searched = [v for p in block.params if p.key == "model.name" for v in p.values]
    models = searched or outer
    for key, allowed in block.when:
        if key == "model.name":
            models = [m for m in models if m in allowed] or list(allowed)
    return models


def _check_model_params(cfg: Config, where: str):
    """model.params that the model does not take (a base `hidden` meant for cnn2d reaching a
    crnn trial) fail when a trial builds its model; build one here, on a toy input size, so they
    fail at load time instead. Only the params check is reported: sizes are checked per trial."""
    try:
        build_model(cfg.model, n_classes=2, in_channels=1, n_bins=64)
    except ModelConfigError as err:
        if "model.params" in str(err):
            raise SpaceError(f"{where}: {err}") from None
    except Exception:  # noqa: BLE001 - a size this toy input cannot show; the trial checks it
        pass


def _check_model_names(space: SearchSpace, base: Config):
    # Config types model.name as free text; the registry knows the valid names.
    names = [("base.model.name", base.model.name)]
    names += [(f"space.{p.key}", v) for p in space.params() if p.key == "model.name" for v in p.values]
    for where, name in names:
        if name not in MODELS:
            raise SpaceError(f"{space.source}: {where}: unknown model {name!r}; valid: {', '.join(MODELS)}")


def describe(space: SearchSpace) -> str:
    """A short human summary of the parameters (for the start of a sweep)."""
    lines = []

    def walk(block: Block, depth: int):
        pad = "  " * depth
        if block.when:
            cond = ", ".join(f"{k} in {list(v)}" for k, v in block.when)
            lines.append(f"{pad}when {cond}:")
        for p in block.params:
            lines.append(f"{pad}  {p.key}: {p.describe()}")
        for child in block.children:
            walk(child, depth + 1)

    walk(space.root, 0)
    return "\n".join(lines)
