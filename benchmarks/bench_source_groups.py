#!/usr/bin/env python3
"""Which ESC-50 recordings went into each item of a make_fat_bench.py build, and which items
share a Freesound source.

ESC-50 cuts several 5 s clips (takes A, B, C...) from one Freesound recording and keeps them
in one fold, because takes of one recording sound alike (same scene, microphone, source).
make_fat_bench.py uses each *clip* once per split, but two takes of one recording can still
become two curated items, and a random K-fold over those items puts them on both sides of a
split. This script rebuilds the benchmark with the same seed, records the clips of every
item, and writes a groups file raytag reads (`cv.groups_file`): items that share a source
recording, directly or through a mixture, get one group.

    python benchmarks/bench_source_groups.py --source ../shared/data/esc50 \\
        --bench /work/bench/escfat --out /work/bench/escfat_groups.csv

The rebuild goes to a temporary folder and must reproduce --bench's CSVs exactly, or the
script stops. make_fat_bench.py does not report an item's clips, so its `make_split` is
repeated here with the clips' names kept; every random draw is the same, in the same order.
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SCRIPT = HERE.parent.parent / "shared" / "bench" / "make_fat_bench.py"


def load_bench_module(path: Path):
    spec = importlib.util.spec_from_file_location("make_fat_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tracked_make_split(mod, log: list):
    """make_fat_bench.make_split, draw for draw, also appending each returned item's clip
    names to `log` (in the order the items are returned)."""

    def make_split(clips, audio, rng, mix_frac, chain_frac, sr):
        order = [int(i) for i in rng.permutation(len(clips))]
        free = set(order)
        items = []
        budget = int(round(chain_frac * len(clips)))
        while budget > 0:
            start = next((i for i in order if i in free), None)
            if start is None:
                break
            cat = clips[start][1]
            members = [i for i in order if i in free and clips[i][1] == cat]
            x, used = np.zeros(0), []
            for i in members:
                if len(x) >= 10 * sr:
                    break
                gap = np.zeros(int(rng.uniform(0.1, 1.0) * sr)) if used else np.zeros(0)
                x = np.concatenate([x, gap, audio[clips[i][0]]])
                used.append(i)
            if len(x) < 10 * sr:
                break
            free -= set(used)
            budget -= len(used)
            items.append((x, [cat], [clips[i][0] for i in used]))
        pending = [i for i in order if i in free]
        n_pairs = int(round(mix_frac * len(clips) / 2))
        while n_pairs > 0 and len(pending) >= 2:
            i = pending.pop()
            j = next((k for k in reversed(pending) if clips[k][1] != clips[i][1]), None)
            if j is None:
                break
            pending.remove(j)
            free -= {i, j}
            (ca, ka), (cb, kb) = clips[i], clips[j]
            items.append((mod.overlay(audio[ca], audio[cb], rng, sr), sorted({ka, kb}), [ca, cb]))
            n_pairs -= 1
        items += [(audio[clips[i][0]], [clips[i][1]], [clips[i][0]]) for i in order if i in free]
        perm = rng.permutation(len(items))
        out = [items[i] for i in perm]
        log.extend(it[2] for it in out)
        return [(x, labels) for x, labels, _ in out]

    return make_split


def source_of(clip: str) -> str:
    """ESC-50 clip '1-100210-B-36' -> its Freesound recording '1-100210'."""
    fold, src = clip.split("-")[:2]
    return f"{fold}-{src}"


def groups_by_source(items: list[tuple[str, str, list[str]]]) -> dict[str, str]:
    """Union-find over items: two items sharing a source recording share a group."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for fname, _, clips in items:
        for c in clips:
            parent[find("item:" + fname)] = find("src:" + source_of(c))
    return {fname: find("item:" + fname).removeprefix("src:") for fname, _, _ in items}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="the ESC-50 folder make_fat_bench.py was given")
    ap.add_argument("--bench", required=True, help="the build to describe (its CSVs are checked)")
    ap.add_argument("--out", required=True, help="groups CSV to write: fname,split,clips,group")
    ap.add_argument("--script", default=str(DEFAULT_SCRIPT), help="make_fat_bench.py")
    ap.add_argument("--seed", type=int, default=0, help="the build's --seed")
    ap.add_argument("--classes", type=int, default=0, help="the build's --classes")
    a = ap.parse_args()

    mod = load_bench_module(Path(a.script))
    log: list[list[str]] = []
    mod.make_split = tracked_make_split(mod, log)
    bench = Path(a.bench)
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["make_fat_bench.py", "--source", a.source, "--out", tmp, "--seed", str(a.seed),
                    "--classes", str(a.classes)]
        mod.main()
        for name in ("train_curated.csv", "train_noisy.csv", "test_labels.csv"):
            if not filecmp.cmp(Path(tmp) / name, bench / name, shallow=False):
                sys.exit(f"the rebuild's {name} differs from {bench / name}: give the build's --seed, --classes and --source")
        rows = []
        for split, name in (("curated", "train_curated.csv"), ("noisy", "train_noisy.csv"), ("test", "test_labels.csv")):
            with open(Path(tmp) / name) as f:
                rows += [(r["fname"], split) for r in csv.DictReader(f)]
    if len(rows) != len(log):
        sys.exit(f"{len(rows)} items but {len(log)} recorded: make_fat_bench.py changed; update this script")
    items = [(fname, split, clips) for (fname, split), clips in zip(rows, log)]
    group = groups_by_source(items)
    with open(a.out, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["fname", "split", "clips", "group"])
        for fname, split, clips in items:
            wr.writerow([fname, split, ";".join(clips), group[fname]])
    for split in ("curated", "noisy", "test"):
        fn = [x for x, s, _ in items if s == split]
        sizes: dict[str, int] = {}
        for x in fn:
            sizes[group[x]] = sizes.get(group[x], 0) + 1
        shared = sum(n for n in sizes.values() if n > 1)
        print(f"{split}: {len(fn)} items in {len(sizes)} source groups; {shared} items share their group with another")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
