#!/usr/bin/env python3
"""Students of a teacher whose members see different front ends: does a student per front end
keep more of the teacher than students on its best member's front end alone?

    python benchmarks/distill_front_ends.py --data DIR --teacher RUN_DIR \\
        --students logmel=DISTILL_ARTIFACT [--train pcen=WORK_DIR] [--students NAME=ART ...] [--out JSON]

RUN_DIR is a `raytag train` run (its artifact is the teacher). Each `--students NAME=ARTIFACT` is a
`raytag distill` artifact of that teacher (all its students on one front end). `--train KIND=WORK`
first distils the teacher again with the students on `features.kind: KIND`, as `raytag distill
--front-end KIND` does (the template member's front end with the kind changed), in a copy of
RUN_DIR made under WORK, and adds it as NAME=KIND. Students default to 3 (`--n`); the first k of a run are what
`--students k` trains.

On the test clips: every student alone, the first k of each front end averaged (as the artifact
tags), and one front end's first a with another's first b in one geometric mean (as a run's
members are combined). For each: test lwlrap, the paired bootstrap against the teacher (reported
only), and the agreement with the teacher's top labels (no labels used: what a choice may use).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import load_artifact
from raytag.ensemble.combiners import combine
from raytag.ensemble.distill import StudentSettings, distill, labelled_test_rows, scores_on_test
from raytag.ensemble.tagging import predict_files
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def train_on_front_end(run_dir: Path, kind: str, work: Path, data: Path, n: int) -> Path:
    """Distil `run_dir`'s artifact with students on front end `kind`, as `raytag distill --front-end
    KIND` makes them (distill.student_features: the template member's settings, the kind changed)."""
    copy = work / run_dir.name
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    for part in ("artifact", "members", "outputs"):
        shutil.copytree(run_dir / part, copy / part, symlinks=True)
    distill(str(copy), StudentSettings(students=n, front_end=kind), data=str(data), say=print)
    return copy / "distill" / "artifact"


def per_student(artifact: str, paths: list[str]) -> list[np.ndarray]:
    """Each student's test probabilities (rows in `paths` order)."""
    art = load_artifact(artifact)
    member = art.members[0]
    out = []
    for model in member.models:  # the artifact with this student alone (bench_distill.first_students' way)
        one = dataclasses.replace(art, members=[dataclasses.replace(member, models=[model])])
        probs, _ = predict_files(one, paths, batch_size=64)
        out.append(probs.loc[paths].to_numpy())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True, help="the `raytag train` run distilled")
    ap.add_argument("--students", action="append", default=[], metavar="NAME=ARTIFACT")
    ap.add_argument("--train", action="append", default=[], metavar="KIND=WORK_DIR")
    ap.add_argument("--n", type=int, default=3, help="students per front end trained by --train")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = dict(s.split("=", 1) for s in args.students)
    for spec in args.train:
        kind, work = spec.split("=", 1)
        runs[kind] = str(train_on_front_end(args.teacher, kind, Path(work), args.data, args.n))
    dataset = load_dataset(str(args.data))
    paths = [str(p) for p in dataset.split("test")["path"]]
    y, rows = labelled_test_rows(paths, dataset)
    teacher_probs, _ = predict_files(load_artifact(str(args.teacher / "artifact")), paths, batch_size=64)
    teacher = teacher_probs.loc[paths].to_numpy()
    students = {name: per_student(art, paths) for name, art in runs.items()}

    def entry(probs: np.ndarray) -> dict:
        # test lwlrap and agreement with the teacher's top labels as `raytag distill` reports them
        scores = scores_on_test(pd.DataFrame(probs, index=paths), teacher_probs.loc[paths], dataset)
        return {"test_lwlrap": round(scores["test_lwlrap"], 4),
                "agreement": round(scores["test_agreement_lwlrap"], 4),
                "vs_teacher": paired_bootstrap_lwlrap(y, teacher[rows], probs[rows])}

    report = {"what": "distilled students per front end against their teacher, on the test clips",
              "teacher": str(args.teacher), "students": runs, "load_avg": load,
              "teacher_test_lwlrap": round(float(lwlrap(y, teacher[rows])), 4), "rows": {}}
    for name, models in students.items():
        for k in range(1, len(models) + 1):
            report["rows"][f"{name} x{k}"] = entry(np.mean(models[:k], axis=0))
    for (a_name, a), (b_name, b) in itertools.combinations(students.items(), 2):
        for ka, kb in ((1, 1), (2, 1), (2, 2), (len(a), len(b))):
            if ka <= len(a) and kb <= len(b):
                mixed = combine("geometric", [np.mean(a[:ka], axis=0), np.mean(b[:kb], axis=0)])
                report["rows"][f"geometric({a_name} x{ka}, {b_name} x{kb})"] = entry(mixed)
    print(f"teacher: test {report['teacher_test_lwlrap']:.4f}")
    for name, row in report["rows"].items():
        pair = row["vs_teacher"]
        print(f"{name:36s} test {row['test_lwlrap']:.4f} ({pair['diff']:+.4f} [{pair['ci90'][0]:+.3f}, "
              f"{pair['ci90'][1]:+.3f}])  agreement {row['agreement']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
