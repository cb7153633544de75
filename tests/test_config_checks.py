"""Settings are checked when they are read: a value that would fail (or be ignored) later,
after compute was spent, is refused up front with the key named."""
from __future__ import annotations

import pytest
import yaml

from raytag.config import Config, ConfigError, parse_cli_overrides


def _with(*items: str) -> Config:
    return Config().with_overrides(parse_cli_overrides(list(items)))


def test_numbers_in_exponent_form_are_numbers():
    """PyYAML reads 3e-4 (no ".") as text; --help's own example must work."""
    assert _with("train.lr=3e-4").train.lr == pytest.approx(3e-4)
    assert Config.from_dict(yaml.safe_load("train:\n  lr: 1e-3\n")).train.lr == pytest.approx(1e-3)
    for bad, needle in (("train.lr=abc", "expected a number, got 'abc'"), ("train.lr=.nan", "got NaN")):
        with pytest.raises(ConfigError, match=needle):
            _with(bad)


def test_infinite_numbers_are_refused_with_the_key():
    """inf passed the range checks (no maximum) and failed in the worker (crop_frames' int())."""
    for bad, needle in (("train.crop_seconds=.inf", "train.crop_seconds: inf is not a finite number"),
                        ("inference.segment_seconds=.inf", "segment_seconds: inf is not a finite number"),
                        ("train.lr=-.inf", "train.lr: -inf is not a finite number")):
        with pytest.raises(ConfigError, match=needle):
            _with(bad)


@pytest.mark.parametrize("items, needle", [
    (["train.augment.gain_db=-6"], "gain_db: -6.0 is below the minimum 0"),
    (["train.augment.time_shift=-0.1"], "time_shift: -0.1 is below the minimum 0"),
    (["model.dropout=1.5"], "dropout: 1.5 is above the maximum"),
    (["pipeline.pseudo.epochs=-3"], "pipeline.pseudo.epochs: -3 is below the minimum 1"),
    (["pipeline.pseudo.epochs=0"], "pipeline.pseudo.epochs: 0 is below the minimum 1"),  # trained 1 epoch a round
    (["features.fmin=9000", "features.fmax=8000"], "fmin: 9000.0 leaves no band below fmax"),
    (["features.top_db=-10"], "top_db: -10.0 is below the minimum 0"),
    (["features.kind=raw"], "features.kind: raw .*needs model.name: rawwave_cnn"),
    (["model.name=rawwave_cnn"], "rawwave_cnn takes waveforms; set features.kind: raw"),
    (["features.kind=raw", "model.name=rawwave_cnn", "train.specaugment.enabled=true"],
     "train.specaugment.enabled: SpecAugment masks time and mel bins"),  # was skipped without a word
    (["features.kind=pcen", "train.augment.gain_db=6"], "train.augment.gain_db: 6.0 with features.kind: pcen"),
    (["features.kind=pcen", "features.pcen_power=0"], "features.pcen_power: 0.0 is below the minimum 0.01"),
    (['cv.folds=["0","1"]'], "cv.folds: .*give fold numbers from 0 to 4"),
    (["cv.folds=[]"], "cv.folds: \\[\\]: give fold numbers"),
    (["cv.folds=[5]"], "cv.folds: \\[5\\]: give fold numbers from 0 to 4"),
    (["pipeline.pseudo.enabled=true", "pipeline.pseudo.rounds=3", "pipeline.pseudo.upper=0.6"],
     "pseudo.upper: 0.6 must stay above the lower bound, which reaches 0.65"),
    (["train.max_failures=-1"], "train.max_failures: -1 is below the minimum 0"),  # in_process: no attempt at all
    (["pipeline.label_spreading.alpha=0"], "label_spreading.alpha: 0.0 must be above 0"),
    (["pipeline.label_spreading.alpha=1"], "label_spreading.alpha: 1.0 must be below 1"),
    (["pipeline.label_spreading.gamma=-1"], "label_spreading.gamma: -1.0 is below the minimum 0"),
    (["pipeline.label_spreading.max_iter=0"], "label_spreading.max_iter: 0 is below the minimum 1"),
    (["pipeline.label_spreading.pca_components=0"], "label_spreading.pca_components: 0 is below the minimum 1"),
    (["pipeline.label_spreading.max_graph=1"], "label_spreading.max_graph: 1 is below the minimum 2"),
    (["pipeline.pseudo.rounds=0"], "pipeline.pseudo.rounds: 0 is below the minimum 1"),  # stage 2 dropped silently
    (["pipeline.warmup.lr=-0.001"], "pipeline.warmup.lr: -0.001 must be above 0"),
    (["pipeline.finetune.lr=0"], "pipeline.finetune.lr: 0.0 must be above 0"),  # was replaced by train.lr
    (["pipeline.pseudo.lr=0"], "pipeline.pseudo.lr: 0.0 must be above 0"),
    # train.lr=0 trained every fold and stage with no update; -1's message implied 0 was fine
    (["train.lr=0"], "train.lr: 0.0 must be above 0"),
    (["train.lr=-1"], "train.lr: -1.0 must be above 0"),
    (["model.width=0"], "model.width: 0 is below the minimum 1"),  # failed only when the model was built
    (["model.depth=0"], "model.depth: 0 is below the minimum 1"),
    (["seed=-1"], "^seed: -1 is below the minimum 0"),
    (["seed=4294967296"], "^seed: 4294967296 is above the maximum 4294967295"),
    (["cv.seed=-1"], "cv.seed: -1 is below the minimum 0"),
    (["cv.seed=4294967296"], "cv.seed: 4294967296 is above the maximum 4294967295"),
])
def test_values_that_would_fail_later_are_refused_with_the_key(items, needle):
    with pytest.raises(ConfigError, match=needle):
        _with(*items)


def test_the_pseudo_bound_check_follows_the_schedule():
    # one round, or a constant schedule, never reaches lower.end
    assert _with("pipeline.pseudo.enabled=true", "pipeline.pseudo.rounds=1", "pipeline.pseudo.upper=0.6")
    assert _with("pipeline.pseudo.enabled=true", "pipeline.pseudo.lower.shape=constant", "pipeline.pseudo.upper=0.6")
    assert _with("pipeline.pseudo.enabled=false", "pipeline.pseudo.upper=0.6")  # off: not used


def test_a_random_gain_is_refused_on_pcen_alone_not_beside_log_mel():
    """logmel_pcen's gain moves its log-mel channel (augment.gain_pattern), so it is a real transform there."""
    assert _with("features.kind=logmel_pcen", "train.augment.gain_db=6").train.augment.gain_db == 6


def test_raw_waveforms_reach_every_member_only_as_the_raw_wave_cnn():
    default = Config.from_yaml("configs/default.yaml")
    with pytest.raises(ConfigError, match=r"members\[1\]\.set: features.kind: raw"):
        default.with_overrides({"features.kind": "raw", "model.name": "rawwave_cnn"})  # vgg_small's member keeps its model
    raw = Config.from_dict({"features": {"kind": "raw"}, "model": {"name": "rawwave_cnn"}})
    assert (raw.features.kind, raw.model.name) == ("raw", "rawwave_cnn")


def test_a_members_model_setting_is_refused_before_the_first_member_trains():
    """Family settings are checked when a model is built: a run builds every member's first,
    so the second member's bad setting does not wait for the first member's training."""
    from raytag.models.registry import ModelConfigError, check_run_models

    default = Config.from_yaml("configs/default.yaml")
    check_run_models(default)
    both = default.with_overrides({"model.name": "cnn2d", "model.params.hidden": 0})  # cnn2d's, not vgg_small's
    with pytest.raises(ModelConfigError, match="member vgg_small: model.params.hidden: not a setting of model 'vgg_small'"):
        check_run_models(both)
    with pytest.raises(ModelConfigError, match="model.depth"):
        check_run_models(Config.from_dict({"model": {"name": "resnet18", "depth": 7}}))


def test_a_members_run_refuses_a_bad_member_before_any_member_trains(monkeypatch, tmp_path):
    from raytag.ensemble import members
    from raytag.models.registry import ModelConfigError

    trained = []
    monkeypatch.setattr(members, "fit_pipeline", lambda cfg, *a, **k: trained.append(cfg.model.name))
    bad = Config.from_yaml("configs/default.yaml").with_overrides({"model.name": "cnn2d", "model.params.hidden": 0})
    with pytest.raises(ModelConfigError, match="member vgg_small"):
        members.fit_members(bad, "unused", str(tmp_path), "run", progress=False)
    assert trained == []


def test_a_mapping_for_a_section_changes_only_the_keys_it_names():
    """A mapping assigned whole replaced the section, its other keys falling back to the
    built-in defaults; a mapping-valued setting (model.params) is still replaced whole."""
    base = Config.from_dict({"train": {"batch_size": 8, "lr": 0.01, "mixup": {"alpha": 0.1}},
                             "pipeline": {"finetune": {"epochs": 3, "lr": 0.005}},
                             "model": {"params": {"a": 1}}})
    cli = base.with_overrides(parse_cli_overrides(["train={lr: 0.002, mixup: {prob: 0.5}}"]))
    assert (cli.train.lr, cli.train.batch_size) == (0.002, 8)
    assert (cli.train.mixup.alpha, cli.train.mixup.prob) == (0.1, 0.5)
    nested = base.with_overrides({"pipeline": {"finetune": {"epochs": 10}}, "model": {"params": {"b": 2}}})
    assert (nested.pipeline.finetune.epochs, nested.pipeline.finetune.lr) == (10, 0.005)
    assert nested.model.params == {"b": 2}
    with pytest.raises(ConfigError, match="unknown setting 'train.lrr'"):
        base.with_overrides({"train": {"lrr": 1}})


def test_a_members_nested_set_keeps_the_rest_of_the_section():
    cfg = Config.from_dict({"pipeline": {"finetune": {"epochs": 4, "lr": 0.005}},
                            "members": [{"name": "a"}, {"name": "b", "set": {"pipeline": {"finetune": {"epochs": 9}}}}]})
    finetune = dict(cfg.member_configs())["b"].pipeline.finetune
    assert (finetune.epochs, finetune.lr) == (9, 0.005)


def test_a_key_that_is_not_text_is_refused_with_the_member():
    with pytest.raises(ConfigError, match=r"members\[1\]\.set: key True is not a setting name"):
        Config.from_dict({"members": [{"name": "a"}, {"name": "b", "set": {True: 1}}]})


def test_a_stage_learning_rate_is_its_own_and_none_means_train_lr():
    import torch

    from raytag.training.epoch import build_optimizer
    from raytag.training.steps import Step

    cfg = _with("train.lr=0.003", "train.scheduler=none")
    model = torch.nn.Linear(2, 2)
    lr_of = lambda lr: build_optimizer(cfg, model, Step("finetune", 0, epochs=1, lr=lr), 4)[0].param_groups[0]["lr"]
    assert (lr_of(None), lr_of(0.0005)) == (0.003, 0.0005)
    assert lr_of(0.0) == 0.0  # a stage's own value is used as given (the config refuses 0)
    assert _with("pipeline.finetune.lr=0.0005", "seed=4294967295").pipeline.finetune.lr == 0.0005


def test_members_left_empty_in_yaml_means_no_members(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: solo\nmembers:\n")
    assert Config.from_yaml(path).members == []


@pytest.mark.parametrize("item, key", [("pipeline.warmup=null", "pipeline.warmup"), ("pipeline.pseudo=", "pipeline.pseudo"),
                                       ("pipeline.filter=~", "pipeline.filter"), ("pipeline.finetune=null", "pipeline.finetune"),
                                       ("features=null", "features"), ("train.mixup=null", "train.mixup")])
def test_a_section_given_as_null_is_refused_not_reset_to_the_built_in_defaults(item, key):
    """null for a section became the section class's defaults: `pipeline.warmup=null`, meant as
    "no warm-up", switched default.yaml's warm-up on, and a null finetune trained 5 epochs."""
    default = Config.from_yaml("configs/default.yaml")
    with pytest.raises(ConfigError, match=f"^{key}: empty \\(null\\); .*leave this --set out"):
        default.with_overrides(parse_cli_overrides([item]))


def test_a_null_section_from_set_is_answered_in_set_syntax():
    """The advice was YAML (`write pipeline.warmup.enabled: false`) for a null typed in --set,
    and `--set 'pipeline.warmup.enabled: false'` is refused for having no '='."""
    with pytest.raises(ConfigError, match=r"^pipeline.warmup: empty \(null\); to switch it off give "
                                          r"--set pipeline.warmup.enabled=false; leave this --set out to keep "
                                          r"the config file's settings$"):
        _with("pipeline.warmup=null")
    with pytest.raises(ConfigError, match=r"^train: empty \(null\); to change it give its settings, "
                                          r"e.g. --set train.crop_seconds=\.\.\.;"):
        _with("train=null")


def test_a_section_whose_defaults_are_off_takes_null_as_off():
    """`--set train.noisy_teacher=null` meant "no teacher" (its defaults: artifact null) until
    null sections were refused ("give its settings"). A section whose built-in defaults are
    off (noisy_teacher, specaugment, label_spreading) takes null as those defaults again;
    one whose defaults would switch a stage on is still refused (above)."""
    on = Config.from_dict({"train": {"noisy_teacher": {"artifact": "runs/teacher", "label_weight": 0.3},
                                     "specaugment": {"enabled": True}},
                           "pipeline": {"label_spreading": {"enabled": True}}})
    off = on.with_overrides(parse_cli_overrides(["train.noisy_teacher=null", "train.specaugment=~",
                                                 "pipeline.label_spreading=None"]))
    assert off.train.noisy_teacher.artifact is None and off.train.noisy_teacher.label_weight == 0.5
    assert not off.train.specaugment.enabled and not off.pipeline.label_spreading.enabled
    in_a_file = Config.from_dict(yaml.safe_load("train:\n  noisy_teacher:\n    # artifact: runs/teacher\n"))
    assert in_a_file.train.noisy_teacher.artifact is None


def test_a_null_section_says_how_to_switch_a_stage_off(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("pipeline:\n  warmup:\n    # enabled: false\n    # epochs: 3\n")  # keys commented out
    with pytest.raises(ConfigError, match="pipeline.warmup: empty .*write pipeline.warmup.enabled: false"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match=r"members\[1\]\.set: pipeline.filter: empty .*pipeline.filter.enabled: false"):
        Config.from_dict({"members": [{"name": "a"}, {"name": "b", "set": {"pipeline.filter": None}}]})
    with pytest.raises(ConfigError, match="^train: empty .*e.g. train.crop_seconds"):  # no switch: name a setting
        Config.from_dict({"train": None})


def test_python_none_on_the_command_line_is_null_where_a_setting_takes_null():
    """`--set cv.clip_groups=None` was the path 'None' (a missing file later), and
    features.fmax=None "expected a number, got 'None'"."""
    cfg = _with("cv.clip_groups=None", "train.noisy_teacher.artifact=none", "features.fmax=None", "cv.folds=None")
    assert (cfg.cv.clip_groups, cfg.train.noisy_teacher.artifact, cfg.features.fmax, cfg.cv.folds) == (None,) * 4
    # where a setting's values are words, none stays the word
    words = _with("train.scheduler=none", "pipeline.finetune.noisy=none", "name=None")
    assert (words.train.scheduler, words.pipeline.finetune.noisy, words.name) == ("none", "none", "None")


def test_a_text_setting_keeps_the_text_typed():
    """YAML reads 0123 as the octal number 83 and 2024-01-01 as a date: "expected text, got 83"."""
    assert _with("name=0123").name == "0123"
    assert _with("name=2024-01-01").name == "2024-01-01"
    assert _with("name=on").name == "on"
    assert _with("cv.clip_groups=0123 # a comment").cv.clip_groups == "0123"
    assert _with("train.lr=0123").train.lr == 83  # a number setting keeps YAML's reading


def test_value_errors_say_how_to_write_the_value():
    with pytest.raises(ConfigError, match=r"cv.folds: expected a list, got '0,1'; write it in brackets, e.g. \[0,1\]"):
        _with("cv.folds=0,1")
    with pytest.raises(ConfigError, match=r"features.fmax: 'None' is text in YAML; write null"):
        Config.from_dict(yaml.safe_load("features:\n  fmax: None\n"))  # a config file, not --set
    with pytest.raises(ConfigError, match=r"cv.clip_groups: 'none' is text in YAML; write null"):
        Config.from_dict({"cv": {"clip_groups": "none"}})


def test_a_fixed_choice_settings_values_are_read_from_its_declaration():
    from raytag.config import FeatureConfig, setting_choices

    kinds = setting_choices("features.kind")
    assert "logmel_pcen" in kinds and "raw" in kinds and FeatureConfig().kind in kinds
    assert setting_choices("train.normalize.kind") == ("per_bin", "global", "fixed")
    with pytest.raises(KeyError, match="train.lr is not a setting with a fixed set"):
        setting_choices("train.lr")
