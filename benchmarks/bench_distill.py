"""Distilled students beside their teachers on the dev benchmark's test clips.

    python benchmarks/bench_distill.py --data DIR [--out JSON] NAME=EXPERIMENT_DIR[#K] ...

EXPERIMENT_DIR is what `raytag distill` was given (it holds distill/artifact and the
teacher's artifact). `#K` scores only the first K students of a `--students N` artifact: they
are exactly what `--students K` with the same --seed trains (seeds seed .. seed + K - 1). For each: the student's test lwlrap and the teacher's, the paired
bootstrap of student - teacher (90%), and the student's agreement with its teacher on the
test clips (lwlrap against the teacher's top labels; no labels used: the figure to choose
students by). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import experiment_artifact, load_artifact, probability_teacher
from raytag.ensemble.distill import labelled_test_rows, scores_on_test
from raytag.ensemble.tagging import predict_files
from raytag.metrics import paired_bootstrap_lwlrap


def teacher_key(teacher_path: str) -> str:
    """The teacher artifact's full resolved path: copies of one run teach alike, so it is tagged
    once, but two runs of one name (in different storages, or every sweep's "ensemble") differ."""
    return str(Path(teacher_path).resolve())


def first_students(student, k: int | None):
    """The artifact with only its first `k` students (all when k is None)."""
    if k is None:
        return student
    member = student.members[0]
    if not 1 <= k <= len(member.models):
        raise SystemExit(f"#{k}: the artifact holds {len(member.models)} student(s)")
    return dataclasses.replace(student, members=[dataclasses.replace(member, models=member.models[:k])])


def compare(exp: Path, dataset, teacher_cache: dict, k: int | None = None) -> dict:
    student = first_students(load_artifact(str(exp / "distill" / "artifact")), k)
    teacher_path = experiment_artifact(str(exp))
    paths = list(dataset.split("test")["path"])
    s_probs, _ = predict_files(student, paths, batch_size=32)
    key = teacher_key(teacher_path)
    if key not in teacher_cache:
        teacher = load_artifact(teacher_path)
        t_probs = predict_files(teacher, paths, batch_size=32)[0]
        target_teacher = probability_teacher(teacher)  # what distill scores agreement against
        teacher_cache[key] = (teacher, t_probs, t_probs if target_teacher is teacher
                              else predict_files(target_teacher, paths, batch_size=32)[0])
    teacher, t_probs, t_target_probs = teacher_cache[key]
    scores = scores_on_test(s_probs, t_target_probs, dataset)  # as `raytag distill` reports them
    y, rows = labelled_test_rows(list(s_probs.index), dataset)
    summary = json.loads((exp / "distill" / "distill_summary.json").read_text())
    return {
        "experiment": str(exp.resolve()),
        "teacher_artifact": key,
        "students": len(student.members[0].models),
        "student_test_lwlrap": scores["test_lwlrap"],
        "student_test_agreement_lwlrap": scores["test_agreement_lwlrap"],
        "student_minus_teacher": paired_bootstrap_lwlrap(y, t_probs.loc[s_probs.index].to_numpy()[rows],
                                                         s_probs.to_numpy()[rows]),
        "teacher_test_lwlrap": teacher.scores.get("test_lwlrap"),
        "settings": {k: summary.get(k) for k in ("targets", "noisy_targets", "label_weight", "epochs", "student_template")},
        "seconds": summary.get("seconds"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("runs", nargs="+", help="NAME=EXPERIMENT_DIR")
    args = ap.parse_args()
    dataset = load_dataset(str(args.data))
    rows, teachers = {}, {}
    for item in args.runs:
        name, path = item.split("=", 1)
        path, _, k = path.partition("#")
        rows[name] = compare(Path(path), dataset, teachers, int(k) if k else None)
        r = rows[name]
        d = r["student_minus_teacher"]
        print(f"{name:28s} student {r['student_test_lwlrap']:.4f}  teacher {r['teacher_test_lwlrap']:.4f}  "
              f"gap {d['diff']:+.4f} [{d['ci90'][0]:+.3f}, {d['ci90'][1]:+.3f}]  "
              f"agreement on test {r['student_test_agreement_lwlrap']:.4f}", flush=True)
    out = {"what": "raytag distill students against their teachers, dev benchmark test clips",
           "load_avg": os.getloadavg(), "runs": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
