#!/usr/bin/env python3
"""How many distilled students to average (`raytag distill --students N`): quality and speed of
the first k students, k = 1 .. N, of one N-student run.

    python benchmarks/bench_students.py --data DIR --experiment EXPERIMENT_DIR [--rounds 2] [--out JSON]

EXPERIMENT_DIR is what `raytag distill ... --students N` was given. The first k students of that
run are exactly what `--students k` with the same --seed trains (seeds seed .. seed + k - 1;
tests/test_distill.py checks it), so one run gives every k. For each k, an artifact holding only
those students is written under --work (the same files, its model card listing folds 0 .. k-1),
then:
- quality: bench_distill's figures for it (test lwlrap against the teacher's, paired bootstrap,
  and the agreement with the teacher on the test clips, which needs no labels);
- speed: `raytag predict ARTIFACT <the test clips> --out ...` in a fresh process each time
  (start-up and loading counted, as a user runs it), the ks interleaved, best of --rounds;
  x real time = seconds of test audio / wall seconds.
Prints a table; writes JSON with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from bench_distill import compare
from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import MemberSpec, load_artifact, save_artifact

RAYTAG = str(Path(sys.executable).with_name("raytag"))


def k_student_artifact(student_dir: Path, k: int, work: Path, art) -> Path:
    """An artifact of the first k students of `student_dir` (distill/student), under `work`."""
    src = work / f"student_{k}"
    shutil.rmtree(src, ignore_errors=True)
    (src / "weights").mkdir(parents=True)
    for i in range(k):
        shutil.copy(student_dir / "weights" / f"fold{i}.safetensors", src / "weights")
    card = json.loads((student_dir / "model.json").read_text())
    (src / "model.json").write_text(json.dumps({**card, "folds": list(range(k)), "refit_fold": None}))
    dest = work / f"artifact_{k}"
    save_artifact(str(dest), [MemberSpec("student", str(src))], "mean", None, art.classes, art.layout,
                  art.scores, distilled={**art.distilled, "students": k})
    return dest


def predict_seconds(artifact: Path, test_dir: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([RAYTAG, "predict", str(artifact), str(test_dir), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--experiment", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2, help="timed `raytag predict` runs per k (0: quality only)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/raytag_bench_students"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dataset = load_dataset(str(args.data))
    full = load_artifact(str(args.experiment / "distill" / "artifact"))
    n = len(full.members[0].models)
    student_dir = args.experiment / "distill" / "student"
    load_before = os.getloadavg()
    teachers = {}
    rows = {k: compare(args.experiment, dataset, teachers, k) for k in range(1, n + 1)}
    seconds = {k: [] for k in rows}
    if args.rounds:  # `raytag predict` reads artifacts on disk: one of the first k students for each k
        args.work.mkdir(parents=True, exist_ok=True)
        artifacts = {k: k_student_artifact(student_dir, k, args.work, full) for k in rows}
        for _ in range(args.rounds):
            for k, art in artifacts.items():
                seconds[k].append(predict_seconds(art, args.data / "test", args.work / f"sub_{k}.csv"))
    audio_s = sum(sf.info(str(p)).duration for p in dataset.split("test")["path"])
    for k, r in rows.items():
        speed = ""
        if seconds[k]:  # --rounds 0: quality only
            best = min(seconds[k])
            r.update(predict_seconds=[round(s, 2) for s in seconds[k]], x_real_time=round(audio_s / best, 1))
            speed = f"; raytag predict {best:.1f} s = {r['x_real_time']:.0f}x real time"
        d = r["student_minus_teacher"]
        print(f"{k} student(s): test {r['student_test_lwlrap']:.4f} (teacher {r['teacher_test_lwlrap']:.4f}, "
              f"{d['diff']:+.4f} [{d['ci90'][0]:+.3f}, {d['ci90'][1]:+.3f}]), agreement on test "
              f"{r['student_test_agreement_lwlrap']:.4f}{speed}", flush=True)
    out = {"what": "the first k students of one `raytag distill --students N` run", "experiment": str(args.experiment),
           "test_audio_seconds": round(audio_s, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
           "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
