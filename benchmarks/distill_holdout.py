#!/usr/bin/env python3
"""Student settings judged on held-out curated clips, with their labels (issue 11's distillation).

    python benchmarks/distill_holdout.py --data DIR --experiment RUN_DIR --epochs 30 60 [--folds 0 1] [--out JSON]

`raytag distill` trains its students on every curated clip, so nothing says, without the test
labels, whether a setting (here: the number of epochs) makes a better student; agreement with
the teacher cannot, as a student better than its teacher disagrees with it more. Here, for each
held-out fold k (the teacher's own out-of-fold assignment of the curated clips), one student is
trained as `raytag distill` trains it (the same code: `prepare_student`, `train_students`) on every training clip but fold k's
curated ones, and scored on those clips against their true labels; the folds are pooled, and
each setting is compared with the first by a paired bootstrap over the held-out clips.

Caveat: the targets of the other clips come from the teacher's fold models, which learned fold
k's labels (a stacking leak, alike for every setting), so the levels are optimistic; the
differences between settings less so. The teacher's targets are read from (or cached in)
RUN_DIR/distill, as `raytag distill` keeps them.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from raytag import storage
from raytag.ensemble.crop_targets import held_out_folds
from raytag.ensemble.distill import DISTILL_DIR, StudentSettings, prepare_student, train_students
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap
from raytag.session import ensure_ray
from raytag.training.inference import iter_store_clips, predict_segments


def held_out_scores(run_dir: Path, data: Path, epochs: int, folds: list[int], feature_cache: str | None) -> dict:
    """{clip: student probabilities} for fold k's curated clips, k in `folds`, each by a student
    trained without them; and the truth of those clips."""
    prepared = prepare_student(str(run_dir / "artifact"), storage.join(str(run_dir), DISTILL_DIR),
                               StudentSettings(epochs=epochs, students=1), str(data), feature_cache, progress=False)
    cfg, dataset, store, plan, targets = (prepared.cfg, prepared.dataset, prepared.store, prepared.plan,
                                          prepared.targets)
    fold_of = held_out_folds(prepared.template.settings["source"], noisy=False)
    truth = dict(zip(dataset.split("curated")["clip_id"], dataset.label_matrix("curated")))
    probs, y = {}, {}
    for k in folds:
        out = [i for i, c in enumerate(targets.clip_ids) if fold_of.get(c) == k and c in truth]
        keep = np.setdiff1d(np.arange(len(targets)), out)
        train = type(targets)([targets.clip_ids[i] for i in keep], targets.targets[keep], targets.is_noisy[keep])
        (model,), _ = train_students(cfg, plan, store, train, 1)
        held = [targets.clip_ids[i] for i in out]
        p = predict_segments(model, iter_store_clips(store, held), cfg.segment_frames(), overlap=cfg.inference.overlap,
                             reduce=cfg.inference.reduce, batch_size=64, mean=plan.norm_mean, std=plan.norm_std)
        probs.update(zip(held, p))
        y.update((c, truth[c]) for c in held)
        print(f"epochs {epochs}, fold {k}: {len(held)} held-out clips, lwlrap {lwlrap(np.stack([truth[c] for c in held]), p):.4f}",
              flush=True)
    return {"probs": probs, "truth": y, "features": cfg.features.kind}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--experiment", type=Path, required=True, help="the `raytag train` run whose artifact teaches")
    ap.add_argument("--epochs", type=int, nargs="+", required=True, help="settings compared; the first is the baseline")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--feature-cache", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ensure_ray()
    started = time.time()
    runs = {e: held_out_scores(args.experiment, args.data, e, args.folds, args.feature_cache) for e in args.epochs}
    base = runs[args.epochs[0]]
    clips = sorted(base["probs"])
    y = np.stack([base["truth"][c] for c in clips])
    report = {"what": "students trained without a curated fold, scored on it (true labels)", "experiment": str(args.experiment),
              "folds": args.folds, "n_clips": len(clips), "features": base["features"], "rows": {},
              "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
              "seconds": round(time.time() - started)}
    for e, run in runs.items():
        p = np.stack([run["probs"][c] for c in clips])
        row = {"held_out_lwlrap": round(float(lwlrap(y, p)), 4)}
        if e != args.epochs[0]:
            row["vs_first"] = paired_bootstrap_lwlrap(y, np.stack([base["probs"][c] for c in clips]), p)
        report["rows"][f"epochs {e}"] = row
        print(f"epochs {e}: held-out lwlrap {row['held_out_lwlrap']:.4f}  {row.get('vs_first', '')}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
