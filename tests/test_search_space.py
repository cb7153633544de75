"""Search-space YAML: parsing, validation errors that name the bad key, conditional
sampling through Optuna's define-by-run interface, and the shipped spaces."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from raytag.config import Config, ConfigError
from raytag.search.space import SpaceError, estimate_steps, load_space, parse_space, with_fixed_settings

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """
name: t
base:
  cv.n_folds: 2
  pipeline: {warmup: {epochs: 1}}
space:
  model.name: {choice: [cnn2d, crnn]}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  train.mixup:
    alpha: {uniform: [0.0, 1.0], step: 0.1}
  model.width: {qrandint: [16, 64, 16]}
  cv.folds: {choice: [[0], [0, 1]]}
conditional:
  - when: {model.name: crnn}
    space:
      model.params.lstm_hidden: {choice: [32, 64]}
      train.loss.name: {choice: [bce, lsoft]}
    conditional:
      - when: {train.loss.name: lsoft}
        space:
          train.loss.lsoft_beta: {uniform: [0.5, 0.9]}
search: {samples: 4, scheduler: fifo}
resources: {num_workers: 1, cpus_per_worker: 0.5}
"""


def sample(space, n=40, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        extra = space.define_by_run(trial) or {}
        out.append({**trial.params, **extra})
        study.tell(trial, 0.0)
    return out


def test_parse_flattens_nested_keys_and_applies_base_and_resources():
    space = parse_space(GOOD, source="t.yaml")
    assert space.param_keys() == [
        "model.name", "train.lr", "train.mixup.alpha", "model.width", "cv.folds",
        "model.params.lstm_hidden", "train.loss.name", "train.loss.lsoft_beta",
    ]
    cfg = space.base_config()
    assert cfg.cv.n_folds == 2 and cfg.pipeline.warmup.epochs == 1
    assert cfg.train.num_workers == 1 and cfg.train.cpus_per_worker == 0.5
    assert space.search.samples == 4 and space.search.scheduler == "fifo"


def test_fixed_settings_join_the_base_and_the_stored_text_and_a_searched_key_is_refused():
    space = parse_space(GOOD, source="t.yaml")
    fixed = with_fixed_settings(space, {"pipeline.warmup.epochs": 3, "cv.clip_groups": "groups.csv"})
    cfg = fixed.base_config()
    assert cfg.pipeline.warmup.epochs == 3 and cfg.cv.clip_groups == "groups.csv"  # over the nested base
    assert cfg.cv.n_folds == 2 and fixed.param_keys() == space.param_keys()
    again = parse_space(fixed.text, source="stored")  # what a resumed sweep reads back
    assert again.base == fixed.base and again.search == space.search and again.resources == space.resources
    assert fixed.text.startswith("# t.yaml with `raytag tune --set pipeline.warmup.epochs=3")
    for searched in ("train.lr", "model.params.lstm_hidden"):  # in the space, or a conditional block
        with pytest.raises(SpaceError, match=f"--set {searched}: t.yaml searches this key"):
            with_fixed_settings(space, {searched: 1})
    with pytest.raises(ConfigError, match="unknown setting"):
        with_fixed_settings(space, {"train.nope": 1})


def test_conditionals_sample_only_when_their_condition_holds():
    space = parse_space(GOOD)
    samples = sample(space)
    crnn = [s for s in samples if s["model.name"] == "crnn"]
    cnn = [s for s in samples if s["model.name"] == "cnn2d"]
    assert crnn and cnn
    assert all("model.params.lstm_hidden" in s and "train.loss.name" in s for s in crnn)
    assert not any("model.params.lstm_hidden" in s or "train.loss.name" in s for s in cnn)
    # nested conditional: beta only for crnn with lsoft
    for s in samples:
        assert ("train.loss.lsoft_beta" in s) == (s.get("train.loss.name") == "lsoft")
    assert any("train.loss.lsoft_beta" in s for s in samples)


def test_distributions_respect_ranges_steps_and_decode_list_choices():
    space = parse_space(GOOD)
    for s in sample(space):
        assert 1e-4 <= s["train.lr"] <= 1e-2
        assert s["model.width"] in (16, 32, 48, 64)
        assert round(s["train.mixup.alpha"] * 10) == pytest.approx(s["train.mixup.alpha"] * 10)
        assert s["train.mixup.alpha"] == float(f"{s['train.mixup.alpha']:.3g}")  # no 0.6000000001
        assert s["cv.folds"] in ([0], [0, 1])  # lists go through Optuna as JSON, come back as lists
        cfg = space.trial_config(s)
        assert isinstance(cfg, Config) and cfg.train.lr == s["train.lr"]
        assert cfg.cv.folds == s["cv.folds"]


def test_tpe_sampling_is_seeded():
    space = parse_space(GOOD)

    def run(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
        out = []
        for i in range(6):
            t = study.ask()
            space.define_by_run(t)
            study.tell(t, float(i % 3))
            out.append(t.params)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_first_trials_take_the_given_settings_then_tpe_samples():
    from raytag.search.tuner import build_searcher

    text = GOOD.replace("search: {samples: 4, scheduler: fifo}", """search:
  samples: 4
  scheduler: fifo
  metric: cv_lwlrap
  first_trials:
    - {model.name: crnn, train.lr: 0.003, train.mixup.alpha: 0.4, cv.folds: [0, 1], train.loss.name: lsoft}
    - {model.name: cnn2d}""")
    space = parse_space(text)
    searcher = build_searcher(space)
    first, second, third = (searcher.suggest(f"t{i}") for i in range(3))
    assert {k: first[k] for k in ("model.name", "train.lr", "train.mixup.alpha", "cv.folds", "train.loss.name")} == {
        "model.name": "crnn", "train.lr": 0.003, "train.mixup.alpha": 0.4, "cv.folds": [0, 1], "train.loss.name": "lsoft"}
    assert "train.loss.lsoft_beta" in first  # a key the point leaves out is sampled
    assert second["model.name"] == "cnn2d" and "train.loss.name" not in second
    assert space.trial_config(first).model.name == "crnn"
    assert third["train.lr"] not in (first["train.lr"], second["train.lr"])  # then TPE samples


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"space": {"train.mixup.alhpa": {"uniform": [0, 1]}}}, "train.mixup.alhpa"),
        ({"space": {"pipeline.filter.threshold": {"uniform": [0.3, 1.2]}}}, "pipeline.filter.threshold"),
        ({"space": {"train.lr": {"loguniform": [0.0, 1.0]}}}, "train.lr: loguniform needs low > 0"),
        ({"space": {"train.lr": {"uniform": [0.1, 0.01]}}}, "train.lr: low 0.1 must be below high 0.01"),
        ({"space": {"train.lr": {"normal": [0, 1]}}}, "space.train.lr"),
        ({"space": {"train.lr": 0.001}}, "fixed values go under base"),
        ({"space": {"model.name": {"choice": ["cnn2d", "resnet99"]}}}, "resnet99"),
        ({"space": {"train.batch_size": {"choice": [16, "big"]}}}, "train.batch_size"),
        ({"space": {"model.width": {"randint": [16.5, 64]}}}, "randint needs whole numbers"),
        ({"base": {"train.optimiser": "adamw"}}, "train.optimiser"),
        ({"base": {"inference.tta": -1}}, "inference.tta: -1 is below the minimum 0"),
        ({"base": {"inference.segment_seconds": -2.0}}, "inference.segment_seconds: -2.0 is below the minimum"),
        # a null section became the built-in defaults, switching the warm-up on in every trial
        ({"base": {"pipeline.warmup": None}}, "pipeline.warmup: empty (null); to switch it off write "
                                              "pipeline.warmup.enabled: false"),
        ({"search": {"scheduler": "pbt"}}, "search.scheduler"),
        ({"search": {"sampels": 3}}, "search.sampels"),
        ({"resources": {"gpus": 1}}, "resources.gpus"),
        ({"resources": {"trial_cpus": 0}}, "resources.trial_cpus"),
        # DDP ranks on a shared GPU: NCCL would fail at start-up ("Duplicate GPU detected")
        ({"resources": {"num_workers": 2, "gpus_per_worker": 0.5, "use_gpu": True}}, "train.gpus_per_worker"),
        ({"serch": {}}, "unknown section 'serch'"),
        ({"search": {"first_trials": [{"train.lr": 0.001}]}}, "first_trials[0].train.lr: not a searched key"),
        ({"search": {"first_trials": [{"model.name": "vgg"}]}}, "'vgg' is outside its choice"),
        ({"search": {"first_trials": {"model.name": "crnn"}}}, "expected a list of mappings"),
        ({"search": {"samples": 1, "first_trials": [{"model.name": "crnn"}, {"model.name": "cnn2d"}]}},
         "2 first trials but search.samples is 1"),
        ({"conditional": [{"when": {"model.width": 16}, "space": {"train.lr": {"uniform": [0.1, 0.2]}}}]},
         "when.model.width"),
        ({"conditional": [{"when": {"model.name": "vgg"}, "space": {"train.lr": {"uniform": [0.1, 0.2]}}}]},
         "'vgg' is not one of its choices"),
        ({"conditional": [{"when": {"model.name": "crnn"},
                           "space": {"model.name": {"choice": ["crnn"]}}}]}, "already searched"),
        ({"conditional": [{"when": {"model.name": "crnn"},
                           "space": {"train.mixup.prob": {"uniform": [0.5, 2.0]}}}]}, "train.mixup.prob"),
        # Optuna: one distribution per name, else "dynamic value space" when the second is sampled
        ({"conditional": [{"when": {"model.name": "cnn2d"}, "space": {"model.width": {"choice": [16]}}},
                          {"when": {"model.name": "crnn"}, "space": {"model.width": {"choice": [32]}}}]},
         "'model.width' is searched in two conditional blocks as choice [16] and choice [32]"),
    ],
)
def test_bad_spaces_fail_with_the_key_named(patch, needle):
    import yaml

    data = {"space": {"model.name": {"choice": ["cnn2d", "crnn"]}}}
    for section, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    with pytest.raises(SpaceError) as err:
        parse_space(yaml.safe_dump(data), source="bad.yaml", combinations=True)  # a new sweep's (load_space)
    assert "bad.yaml" in str(err.value) and needle in str(err.value)




def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {model.name: {choice: [a, b]\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)


@pytest.mark.parametrize("name", ["demo", "quick", "families", "more_families", "facevalue", "fat2019", "fat2019_ddp",
                                  "fsd2018"])
def test_shipped_spaces_load_and_every_sample_is_a_valid_config(name):
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.name == name
    for s in sample(space, n=25, seed=1):
        space.trial_config(s)
    assert space.max_steps() >= estimate_steps(space.base_config())


def _flat(cfg: Config) -> dict:
    from raytag.search.space import flatten_settings  # the dotted keys a space's `base` uses

    return flatten_settings(cfg.to_dict(), "config", "")


def test_built_in_defaults_are_the_default_recipe():
    """A config that leaves the training recipe out (a GPU space, a user's three-line YAML,
    the distilled student) gets configs/default.yaml's recipe, not raytag 0.1's slower one;
    only the model, the worker layout and the pipeline's stages may differ, and the default's
    two members (one model family has its best front end built in: 96 mels for resnet18)."""
    built_in = _flat(Config.from_dict({}))
    default = _flat(Config.from_yaml(REPO / "configs" / "default.yaml"))
    layout = {"name", "model.name", "model.width", "model.params", "train.num_workers", "train.cpus_per_worker",
              "train.torch_threads", "members", "combine", "features.n_mels"}
    differ = sorted(k for k in default if built_in.get(k) != default[k]
                    and k not in layout and not k.startswith("pipeline."))
    assert not differ, {k: (built_in.get(k), default[k]) for k in differ}


@pytest.mark.parametrize("name", ["quick", "families"])
def test_quick_yaml_trials_train_the_default_recipe(name):
    """Issue 10 item 6: a quick.yaml trial is configs/default.yaml's run but for what the space
    searches, the folds it trains and its model (quick.yaml: vgg_small, families.yaml:
    resnet18: the default's two members), so the two cannot drift apart unnoticed. The mel bins
    go with the model: 96 were chosen on the default's resnet18 alone; quick.yaml keeps the
    default's 64."""
    model_keys = {"model.name", "model.width", "model.params", "features.n_mels"}
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    default = _flat(Config.from_yaml(REPO / "configs" / "default.yaml"))
    allowed = set(space.param_keys()) | {"name", "cv.folds", "members", "combine"} | model_keys
    resources = {"train.num_workers", "train.cpus_per_worker", "train.gpus_per_worker", "train.use_gpu"}
    for s in sample(space, n=10, seed=3):
        trial = _flat(space.trial_config(s))
        # settings of a stage that is off in both do nothing; resources come from the space's own section
        off = {k.rsplit(".", 1)[0] for k in default if k.endswith(".enabled")
               and default[k] is False and trial.get(k) is False}
        differ = sorted(k for k in default if trial.get(k) != default[k] and k not in allowed
                        and k not in resources and k.rsplit(".", 1)[0] not in off
                        and not any(k.startswith(stage + ".") for stage in off))
        assert not differ, {k: (trial.get(k), default[k]) for k in differ}
        assert trial["cv.folds"] == [0, 1]
    # its first trial is the default's member of its family itself, searched keys included
    first = _flat(space.trial_config(space.search.first_trials[0]))
    member = {m.model.name: _flat(m) for _, m in Config.from_yaml(REPO / "configs" / "default.yaml").member_configs()}
    assert {k: first[k] for k in space.param_keys()} == {k: member[first["model.name"]][k] for k in space.param_keys()}


def test_fat2019_searches_what_the_issue_lists():
    keys = set(load_space(REPO / "search_spaces" / "fat2019.yaml").param_keys())
    for key in ["model.name", "features.n_mels", "train.mixup.alpha", "train.mixup.prob",
                "train.specaugment.time_masks", "train.lr", "pipeline.warmup.epochs",
                "pipeline.finetune.epochs", "pipeline.filter.rule", "pipeline.filter.threshold",
                "pipeline.pseudo.lower.start", "pipeline.pseudo.lower.end",
                "pipeline.pseudo.lower.shape", "pipeline.pseudo.upper", "pipeline.pseudo.rounds"]:
        assert key in keys, key


def test_fat2019_ddp_trials_span_two_whole_gpus_with_ddp():
    space = load_space(REPO / "search_spaces" / "fat2019_ddp.yaml")
    assert space.resources.num_workers >= 2 and space.resources.gpus_per_worker >= 1
    for s in sample(space, n=10, seed=2):
        train = space.trial_config(s).train
        assert train.use_gpu and train.num_workers >= 2 and train.num_workers * train.gpus_per_worker >= 2
        assert train.ddp_backend in ("auto", "nccl")  # NCCL between whole GPUs


def test_several_ranks_may_share_a_gpu_only_over_gloo():
    shared = {"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5}
    assert Config.from_dict({"train": {**shared, "ddp_backend": "gloo"}}).train.ddp_backend == "gloo"
    with pytest.raises(ConfigError, match="ddp_backend: gloo"):
        Config.from_dict({"train": shared})
    # one worker, or CPUs only: nothing to refuse
    Config.from_dict({"train": {**shared, "num_workers": 1}})
    Config.from_dict({"train": {**shared, "use_gpu": False}})


def test_estimate_steps_counts_every_report_of_a_run():
    # warm-up once (shared by the folds); per fold: fine-tune epochs, a filter report,
    # stage-2 rounds x epochs
    cfg = Config.from_dict({"cv": {"n_folds": 3}, "pipeline": {
        "warmup": {"epochs": 2}, "finetune": {"epochs": 3},
        "pseudo": {"enabled": True, "rounds": 2, "epochs": 1}}})
    assert estimate_steps(cfg) == 2 + 3 * (3 + 1 + 2)
    cfg = cfg.with_overrides({"pipeline.pseudo.enabled": False, "pipeline.filter.enabled": False,
                              "cv.folds": [0]})
    assert estimate_steps(cfg) == 2 + 3


def test_a_base_model_setting_one_searched_model_lacks_fails_at_load(tmp_path):
    """model.params are checked per searched model when the space loads, not when a trial
    builds its model minutes later (a cnn2d `hidden` in base reaching crnn trials)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model.params.hidden: 0}\nspace: {model.name: {choice: [cnn2d, crnn]}}\n")
    with pytest.raises(SpaceError, match=r"space.model.name = 'crnn': model.params.hidden: not a setting of model 'crnn'"):
        load_space(bad)
    good = tmp_path / "good.yaml"
    good.write_text("space: {model.name: {choice: [cnn2d, crnn]}}\n"
                    "conditional:\n  - when: {model.name: cnn2d}\n    space: {model.params.hidden: {choice: [0]}}\n")
    load_space(good)
    typo = tmp_path / "typo.yaml"  # a family setting searched under its family's condition, misspelt
    typo.write_text("space: {model.name: {choice: [cnn2d, crnn]}}\n"
                    "conditional:\n  - when: {model.name: crnn}\n    space: {model.params.rnn_hidden: {choice: [64, 128]}}\n")
    with pytest.raises(SpaceError, match=r"space.model.params.rnn_hidden = 64: model.params.rnn_hidden: not a setting"):
        load_space(typo)


@pytest.mark.parametrize("text, model, key", [
    # a conditional on two models: its model.params must suit both, not only the first
    ("space: {model.name: {choice: [crnn, resnet18]}}\n"
     "conditional:\n  - when: {model.name: [crnn, resnet18]}\n"
     "    space: {model.params.lstm_hidden: {choice: [32, 64]}}\n", "resnet18", "lstm_hidden"),
    # a top-level model.params setting reaches every searched model
    ("space:\n  model.name: {choice: [crnn, resnet18]}\n  model.params.lstm_hidden: {choice: [32, 64]}\n",
     "resnet18", "lstm_hidden"),
])
def test_searched_model_params_are_checked_against_every_model_in_scope(tmp_path, text, model, key):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=rf"space.model.params.{key} = 32: model.params.{key}: "
                                         rf"not a setting of model '{model}'"):
        load_space(path)


PCEN_WITHOUT_GAIN = """
base: {train.augment.gain_db: 6}
space: {features.kind: {choice: [logmel, pcen]}}
conditional:
  - when: {features.kind: pcen}
    space: {train.augment.gain_db: {choice: [0]}}
"""


def test_a_setting_a_conditional_block_fixes_lets_its_condition_be_searched(tmp_path):
    """gain_db 6 in base is refused with pcen, but every pcen trial samples the block that fixes
    it to 0: the space loaded as a refusal of features.kind = pcen (its check built the config
    without the block's values), though its trials all ran."""
    path = tmp_path / "pcen.yaml"
    path.write_text(PCEN_WITHOUT_GAIN)
    space = load_space(path)
    for kind, gain in [("pcen", 0.0), ("logmel", 6.0)]:
        study = optuna.create_study()
        study.enqueue_trial({"features.kind": kind})
        trial = study.ask()
        space.define_by_run(trial)
        cfg = space.trial_config(trial.params)
        assert (cfg.features.kind, cfg.train.augment.gain_db) == (kind, gain)


@pytest.mark.parametrize("text, named", [
    # no block fixes gain_db for pcen: refused as before, at the searched kind
    (PCEN_WITHOUT_GAIN.split("conditional:")[0], "space.features.kind = 'pcen'"),
    # the block fixes a gain pcen refuses too: named at the block's own key
    (PCEN_WITHOUT_GAIN.replace("gain_db: 6", "gain_db: 0").replace("choice: [0]", "choice: [3]"),
     "conditional[0].space.train.augment.gain_db = 3"),
], ids=["no-block", "block-fixes-3"])
def test_a_gain_for_pcen_no_block_sets_to_0_is_still_refused(tmp_path, text, named):
    path = tmp_path / "pcen.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=rf"{re.escape(named)}: train.augment.gain_db: \d\.0 with features.kind: pcen"):
        load_space(path)


@pytest.mark.parametrize("mode", ["min", "MAX", "best"])
def test_search_mode_other_than_max_is_refused(mode):
    # both search metrics are higher-is-better: min would keep the worst trials
    with pytest.raises(SpaceError, match=rf"search.mode: '{mode}', but every search metric .* is higher-is-better"):
        parse_space(GOOD.replace("search: {samples: 4,", f"search: {{mode: {mode}, samples: 4,"))
    assert parse_space(GOOD.replace("search: {samples: 4,", "search: {mode: max, samples: 4,")).search.mode == "max"


def test_a_run_config_and_a_space_given_for_each_other_are_named(tmp_path, monkeypatch):
    """`tune --space configs/default.yaml` said "unknown section 'combine'", and `train
    --config search_spaces/quick.yaml` "unknown setting 'base'": neither named the mix-up."""
    from typer.testing import CliRunner

    import raytag.console.train
    import raytag.search.tuner
    from raytag.cli import app

    def no_ray():
        raise AssertionError("started Ray for a file of the other kind")

    monkeypatch.setattr(raytag.console.train, "ensure_ray", no_ray)
    monkeypatch.setattr(raytag.search.tuner, "ensure_ray", no_ray)
    root = Path(__file__).resolve().parents[1]
    config, space = root / "configs" / "default.yaml", root / "search_spaces" / "quick.yaml"

    def said(*args) -> str:
        result = CliRunner().invoke(app, [*args, "--data", str(tmp_path), "--storage", str(tmp_path / "r")],
                                    env={"COLUMNS": "300"})
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    told = said("tune", "--space", str(config))
    assert "this is a run config" in told and f"run it with `raytag train --config {config}`" in told
    assert f"this is a search space, not a run config; run it with `raytag tune --space {space}`" in said(
        "train", "--config", str(space))
    # a space with a mistyped section is still told about that section
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nbase: {}\nspce: {}\n")
    with pytest.raises(SpaceError, match="unknown section 'spce'"):
        load_space(typo)


def test_a_stored_sweep_whose_range_config_now_refuses_still_reports_and_resumes(tmp_path):
    """train.lr above 0 (5285120) is newer than sweeps that searched it from 0: their stored
    space.yaml must still be read by `raytag report` and --resume; a new sweep is refused."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from raytag.cli import app
    from raytag.search.tuner import resumed_space

    text = "name: old\nspace:\n  train.lr: {uniform: [0.0, 0.01]}\nsearch: {samples: 2, scheduler: fifo}\n"
    exp = tmp_path / "r" / "old"
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(text)
    pd.DataFrame([{"rank": 1, "trial_id": "a", "status": "ok", "reason": "", "rank_by": "cv_lwlrap",
                   "cv_lwlrap": 0.5, "test_lwlrap": None, "epochs_run": 3, "seconds": 10.0, "outputs_dir": "",
                   "train.lr": 0.004}]).to_csv(exp / "leaderboard.csv", index=False)
    result = CliRunner().invoke(app, ["report", "old", "--storage", str(tmp_path / "r")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "0.004" in result.output
    (exp / "sweep.json").write_text(json.dumps({
        "search": {"samples": 2, "scheduler": "fifo", "max_concurrent_trials": 1, "metric": "cv_lwlrap"},
        "settings": {}, "data": str(tmp_path / "data")}))
    space = resumed_space(str(exp), None, space_path=str(exp / "space.yaml"), name="old", data=str(tmp_path / "data"),
                          samples=None, scheduler=None, settings=None, say=lambda _: None)
    assert space.param_keys() == ["train.lr"]
    new = tmp_path / "new.yaml"
    new.write_text(text)
    with pytest.raises(SpaceError, match=r"space.train.lr = 0.0: train.lr: 0.0 must be above 0.0"):
        load_space(new)  # what a new `raytag tune --space` reads
