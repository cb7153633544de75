"""benchmarks/bench_predict.py without timing anything: its distilled variants alternate within
each round (they ran all rounds of one, then the next); a member of several models has every
model exported (it timed the eager models under the export's name, "agreeing" at 0); and each
section of the report keeps the provenance of the run that measured it (a rerun of one part
gave the carried-over part its own command and commit)."""
from __future__ import annotations

from bench_util import load_benchmark


def _bench():
    return load_benchmark("bench_predict")


def test_variants_alternate_within_each_round_and_the_fastest_is_kept():
    order, walls = [], {"a": iter([3.0, 1.0]), "b": iter([2.0, 4.0])}

    def measure(variant):
        order.append(variant["label"])
        return (next(walls[variant["label"]]), variant["label"])

    best = _bench().interleaved_best([{"label": "a"}, {"label": "b"}], 2, measure)
    assert order == ["a", "b", "a", "b"]
    assert best == {"a": (1.0, "a"), "b": (2.0, "b")}


def test_every_model_of_a_member_is_exported():
    def export(model, example):
        return {"double": (lambda x, m=model: 2 * m(x), "x2"),
                "broken": (None, "failed: no") if model is abs else (model, "ok")}

    models = [abs, lambda x: x + 1]
    out = _bench().export_every_model(models, None, export)
    fns, note = out["double"]
    assert [fn(-3) for fn in fns] == [6, -4] and "each of 2 models" in note
    assert out["broken"] == (None, "failed: no")  # one model without the export: not timed at all


def _ensemble_section(commit: str | None) -> dict:
    section = {"members": [{"model": "cnn2d", "features": "logmel"}], "fold_models": 3, "torch_threads": 2,
               "batch_size": 32, "runs": [], "median_x_real_time": {"before": 10.0, "after": 20.0},
               "speed_up": 2.0, "cpu_ratio_after_before": 0.5,
               "per_fold_model_x_real_time": {"before": 30.0, "after": 60.0},
               "max_abs_prob_diff": 0.0, "same_predictions": True}
    if commit:
        section["provenance"] = {"command": "python bench_predict.py --old", "commit": commit, "data": "/d",
                                 "clips": 64, "audio_seconds": 320.0, "machine": {"cpus": 2},
                                 "when": "2024-01-01 10:00"}
    return section


def test_a_carried_over_section_is_printed_with_its_own_provenance(tmp_path):
    speed_md = tmp_path / "speed.md"
    result = {"command": "python bench_predict.py --skip-ensemble --distilled X", "commit": "new123",
              "ensemble": _ensemble_section("old456")}
    _bench().write_section(result, speed_md)
    text = speed_md.read_text()
    assert "old456" in text and "--old" in text
    assert "new123" not in text and "--skip-ensemble" not in text


def test_a_section_from_before_provenance_was_kept_says_so(tmp_path):
    speed_md = tmp_path / "speed.md"
    _bench().write_section({"command": "python now", "commit": "new123", "ensemble": _ensemble_section(None)},
                           speed_md)
    text = speed_md.read_text()
    assert "did not record its command" in text and "new123" not in text
