"""A FAT2019-layout benchmark N times larger: every clip of a source benchmark copied N times
under new names (a stand-in for FSDKaggle2019's ~24k clips when measuring how memory and
time grow with the number of clips).

Copy k of clip `abc.wav` is `k{k}_abc.wav` in the same split folder, with the same labels
in train_curated.csv / train_noisy.csv / train_noisy_truth.csv / test_labels.csv and a row
in sample_submission.csv. The files are real copies (not links), so each is its own clip
on disk, read and decoded on its own.

    .venv/bin/python benchmarks/make_scaled_bench.py --source /work/bench/escfat --out /tmp/escfat4x --factor 4
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

SPLITS = {"train_curated.csv": "train_curated", "train_noisy.csv": "train_noisy",
          "train_noisy_truth.csv": "train_noisy", "test_labels.csv": "test", "sample_submission.csv": "test"}


def scale(source: Path, out: Path, factor: int) -> Path:
    if factor < 1:
        raise SystemExit(f"--factor must be >= 1, got {factor}")
    if (out / "train_curated.csv").is_file():
        return out  # built before: the same source and factor give the same folder
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copied: set[tuple[str, str]] = set()
    for table, folder in SPLITS.items():
        path = source / table
        if not path.is_file():
            continue
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        (tmp / folder).mkdir(exist_ok=True)
        parts = []
        for k in range(factor):
            part = rows.copy()
            part["fname"] = [f"k{k}_{f}" for f in rows["fname"]]
            parts.append(part)
            for old, new in zip(rows["fname"], part["fname"]):
                if (folder, new) not in copied:
                    shutil.copyfile(source / folder / old, tmp / folder / new)
                    copied.add((folder, new))
        pd.concat(parts, ignore_index=True).to_csv(tmp / table, index=False)
    tmp.rename(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/bench/escfat"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=4)
    args = parser.parse_args(argv)
    out = scale(args.source, args.out, args.factor)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
