"""raytag.training.run_settings: a run folder resumes only the run that began in it."""
from __future__ import annotations

import json

import pytest

from raytag.config import Config, ConfigError
from raytag.training.run_settings import SETTINGS_FILE, check_run_settings


def test_a_resume_may_change_resources_but_not_what_the_run_learns(tmp_path):
    cfg = Config.from_dict({"train": {"lr": 0.003, "torch_threads": 1}})
    check_run_settings(str(tmp_path), cfg)  # first start: recorded
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["train.lr"] == 0.003
    (tmp_path / "checkpoint_local_000001").mkdir()
    check_run_settings(str(tmp_path), cfg)
    check_run_settings(str(tmp_path), Config.from_dict({"train": {"lr": 0.003, "torch_threads": 2, "num_workers": 2,
                                                                  "profile_epoch": 3}, "name": "renamed"}))
    with pytest.raises(ConfigError, match=r"train.lr: 0.003 then, 0.001 now.*delete the folder"):
        check_run_settings(str(tmp_path), Config.from_dict({"train": {"lr": 0.001}}))
    with pytest.raises(ConfigError, match=r"cv.folds: None then, \[0\] now"):
        check_run_settings(str(tmp_path), Config.from_dict({"train": {"lr": 0.003}, "cv": {"folds": [0]}}))


def test_without_checkpoints_a_rerun_starts_over_with_its_own_settings(tmp_path):
    check_run_settings(str(tmp_path), Config.from_dict({"seed": 1}))
    check_run_settings(str(tmp_path), Config.from_dict({"seed": 2}))  # nothing to resume: no conflict
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["seed"] == 2


def test_other_clips_or_labels_are_another_run(tmp_path):
    import numpy as np
    from types import SimpleNamespace

    plan = SimpleNamespace(classes=["Bark", "Purr"], curated_ids=["c1", "c2"], noisy_ids=["n1"], test_ids=["t1"],
                           curated_y=np.eye(2, dtype=np.float32), noisy_y=np.ones((1, 2), np.float32))
    cfg = Config.from_dict({})
    check_run_settings(str(tmp_path), cfg, plan)
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), cfg, plan)
    relabelled = SimpleNamespace(**{**vars(plan), "noisy_y": np.zeros((1, 2), np.float32)})
    with pytest.raises(ConfigError, match=r"data: 'sha256:\w+ \(2 curated, 1 noisy, 1 test clips\)' then"):
        check_run_settings(str(tmp_path), cfg, relabelled)


def test_a_setting_a_newer_raytag_added_is_not_a_change_of_the_run(tmp_path):
    check_run_settings(str(tmp_path), Config.from_dict({}))
    recorded = json.loads((tmp_path / SETTINGS_FILE).read_text())
    del recorded["train.lr"]  # as if written before train.lr existed
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(recorded))
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), Config.from_dict({}))  # resumes


CRNN = {"name": "crnn", "width": 4, "depth": 2, "dropout": 0.0, "params": {"lstm_hidden": 8}}


def test_a_run_begun_before_crnns_skip_default_resumes_with_the_model_its_checkpoints_hold(tmp_path):
    """run_settings.json of a crnn run begun before skip's default became 1 lacks the key, and
    its checkpoints hold skip=0 weights: a resume that leaves skip unset builds skip=0 (in the
    plan the workers build from), and they load; one that asks for skip=1 is refused."""
    import numpy as np
    from types import SimpleNamespace

    from raytag.models import build_model

    cfg = Config.from_dict({"model": CRNN})
    plan = SimpleNamespace(cfg=cfg.to_dict(), classes=["Bark"], curated_ids=["c1"], noisy_ids=[], test_ids=[],
                           curated_y=np.ones((1, 1), np.float32), noisy_y=np.zeros((0, 1), np.float32))
    check_run_settings(str(tmp_path), cfg, plan)  # a new run records today's default
    recorded = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert recorded["model.params.skip"] == 1
    del recorded["model.params.skip"]  # as written before the default changed
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(recorded))
    (tmp_path / "checkpoint_local_000001").mkdir()
    old_weights = build_model(Config.from_dict({"model": {**CRNN, "params": {"lstm_hidden": 8, "skip": 0}}}).model,
                              3, 1, 64).state_dict()

    resumed = check_run_settings(str(tmp_path), cfg, plan)
    assert resumed.model.params["skip"] == 0 and plan.cfg["model"]["params"]["skip"] == 0
    build_model(Config.from_dict(plan.cfg).model, 3, 1, 64).load_state_dict(old_weights)  # strict
    with pytest.raises(ConfigError, match=r"model.params.skip: 0 then, 1 now"):
        check_run_settings(str(tmp_path), Config.from_dict({"model": {**CRNN, "params": {"lstm_hidden": 8,
                                                                                         "skip": 1}}}))


def _plan(**changes):
    """A plan as build_plan makes it (the parts check_run_settings reads)."""
    import numpy as np
    from types import SimpleNamespace

    plan = SimpleNamespace(
        cfg=Config.from_dict({}).to_dict(), classes=["Bark", "Purr"], curated_ids=["c1", "c2", "c3", "c4"],
        noisy_ids=["n1", "n2"], test_ids=["t1"], curated_y=np.eye(2, dtype=np.float32)[[0, 1, 0, 1]],
        noisy_y=np.ones((2, 2), np.float32), curated_fold=np.array([0, 0, 1, 1]), noisy_fold=None,
        noisy_subset=["n1"], noisy_targets=None)
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


def _with_groups(groups):
    cfg = Config.from_dict({}).to_dict()
    cfg["pipeline"]["label_spreading"]["groups"] = groups
    return cfg


@pytest.mark.parametrize("key, changed", [
    ("plan.curated_fold", {"curated_fold": [1, 0, 0, 1]}),  # cv.clip_groups fixed: the same clips, other folds
    ("plan.noisy_fold", {"noisy_fold": [0, 1]}),
    ("plan.noisy_subset", {"noisy_subset": ["n2"]}),
    ("plan.label_spreading_groups", {"cfg": _with_groups([["Bark", "Purr"]])}),  # a groups_file edited
])
def test_a_resume_on_another_plan_from_the_same_config_is_refused(tmp_path, key, changed):
    """The folds, noisy subset and spreading groups come from files the config only names
    (cv.clip_groups, groups_file): a resume whose plan differs would mix two splits."""
    import numpy as np

    cfg = Config.from_dict({})
    check_run_settings(str(tmp_path), cfg, _plan())
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), cfg, _plan())  # the same plan resumes
    changed = {k: np.asarray(v) if k.endswith("fold") else v for k, v in changed.items()}
    with pytest.raises(ConfigError, match=rf"{key}: '[^']+' then, 'sha256:\w+ [^']+' now.*derived from the files"):
        check_run_settings(str(tmp_path), cfg, _plan(**changed))


def test_a_resume_with_a_re_ensembled_noisy_teacher_is_refused(tmp_path):
    """train.noisy_teacher names a folder: the teacher there (its artifact's files,
    `teacher_identity`, which fit_pipeline's noisy_teacher hook returns) is part of the plan;
    the targets themselves may differ in the last bits when made again on another node, and
    the same teacher may be named by another path."""
    import numpy as np

    from raytag.ensemble.noisy_teacher import teacher_identity

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "manifest.json").write_text(json.dumps({"created": "then", "files": {"ensemble.json": "aa"}}))
    cfg = Config.from_dict({"train": {"noisy_teacher": {"artifact": str(teacher)}}})
    run = tmp_path / "run"
    targets = {0: np.full((2, 2), 0.75, np.float32), 1: np.full((2, 2), 0.25, np.float32)}

    def plan(targets):
        return _plan(cfg=cfg.to_dict(), noisy_targets=targets, noisy_teacher_id=teacher_identity(str(teacher)))

    check_run_settings(str(run), cfg, plan(targets))
    (run / "checkpoint_000000").mkdir()
    (teacher / "manifest.json").write_text(json.dumps({"created": "now", "files": {"ensemble.json": "aa"}}))
    nudged = {f: t + np.float32(1e-7) for f, t in targets.items()}  # made again elsewhere: the same teacher
    check_run_settings(str(run), cfg, plan(nudged))
    renamed = Config.from_dict({"train": {"noisy_teacher": {"artifact": str(tmp_path / "." / "teacher")}}})
    check_run_settings(str(run), renamed, plan(targets))  # the same teacher, spelt another way
    (teacher / "manifest.json").write_text(json.dumps({"created": "now", "files": {"ensemble.json": "bb"}}))
    with pytest.raises(ConfigError, match=r"plan.noisy_teacher: 'sha256:\w+ \(teacher artifact of 1 files\)' then"):
        check_run_settings(str(run), cfg, plan(targets))


def test_a_run_recorded_before_the_plan_keys_still_resumes(tmp_path):
    cfg = Config.from_dict({})
    check_run_settings(str(tmp_path), cfg, _plan())
    recorded = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert {k for k in recorded if k.startswith("plan.")} == {
        "plan.curated_fold", "plan.noisy_fold", "plan.noisy_subset", "plan.label_spreading_groups",
        "plan.noisy_teacher"}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({k: v for k, v in recorded.items()
                                                      if not k.startswith("plan.")}))
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), cfg, _plan(noisy_subset=["n2"]))  # nothing recorded to compare it with


def test_a_path_spelt_another_way_resumes_and_its_contents_still_count(tmp_path):
    """cv.clip_groups recorded relative, resumed absolute (a sweep's trial takes it from the
    command's folder): the same plan resumes; another split is still refused (plan.curated_fold)."""
    import numpy as np

    check_run_settings(str(tmp_path), Config.from_dict({"cv": {"clip_groups": "groups.csv"}}), _plan())
    (tmp_path / "checkpoint_000000").mkdir()
    moved = Config.from_dict({"cv": {"clip_groups": "/data/x/groups.csv"}})
    check_run_settings(str(tmp_path), moved, _plan())
    with pytest.raises(ConfigError, match="plan.curated_fold"):
        check_run_settings(str(tmp_path), moved, _plan(curated_fold=np.asarray([1, 0, 0, 1])))


def test_a_resume_on_other_features_is_refused_and_one_recorded_before_the_key_resumes(tmp_path):
    """plan.features (FeatureStore.identity: the store's key and the clips' audio contents):
    audio re-exported under the same names, or an upgrade that changes the features, would
    otherwise resume checkpoints trained on the old features with the new ones."""
    cfg = Config.from_dict({})
    then = "blake2b:aaaa (audio contents of 7 clips, k-features3-format2-librosa0.11)"
    check_run_settings(str(tmp_path), cfg, _plan(features_id=then))
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["plan.features"] == then
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), cfg, _plan(features_id=then))  # the same features resume
    now = "blake2b:bbbb (audio contents of 7 clips, k-features3-format2-librosa0.12)"
    with pytest.raises(ConfigError, match=r"plan.features: '[^']+librosa0.11\)' then, '[^']+librosa0.12\)' now; "
                                          r"plan.features is the feature store's key .* contents of each clip's "
                                          r"audio file \(not its times: a copy resumes\): an audio file's contents"):
        check_run_settings(str(tmp_path), cfg, _plan(features_id=now))
    recorded = json.loads((tmp_path / SETTINGS_FILE).read_text())
    del recorded["plan.features"]  # as recorded before the key existed
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(recorded))
    check_run_settings(str(tmp_path), cfg, _plan(features_id=now))  # nothing recorded to compare it with


def test_a_plan_features_made_by_the_older_rule_is_not_compared(tmp_path):
    """An older raytag recorded plan.features from the clips' sizes and modification times
    ("sha256:"): it cannot be compared with one made from their contents, so the run resumes
    as one recorded before the key did (the recorded value is left as it was)."""
    import numpy as np

    cfg = Config.from_dict({})
    older = "sha256:aaaa (features of 7 clips, k-features3-format2-librosa0.11)"
    check_run_settings(str(tmp_path), cfg, _plan(features_id=older))
    (tmp_path / "checkpoint_000000").mkdir()
    check_run_settings(str(tmp_path), cfg, _plan(features_id="blake2b:bbbb (audio contents of 7 clips, k)"))
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["plan.features"] == older
    with pytest.raises(ConfigError, match="plan.curated_fold"):  # the rest is still compared
        check_run_settings(str(tmp_path), cfg, _plan(features_id="blake2b:bbbb", curated_fold=np.asarray([1, 0, 0, 1])))
