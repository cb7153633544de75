"""`raytag predict` against `raytag predict --compile`, end to end as a user runs them
(process start, artifact load, decoding, front ends, compilation, networks), interleaved
rounds on the same files; prints a table and writes results/benchmarks/predict_compile.json.

    python benchmarks/bench_predict_compile.py ARTIFACT [ARTIFACT ...] --files DIR --rounds 2

Each row also gives the largest difference between the two runs' scores (the export is
kept only if it agrees to 1e-3) and the load average before the run."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def audio_seconds(folder: Path) -> float:
    return sum(sf.info(str(p)).duration for p in sorted(folder.iterdir()) if p.suffix in (".wav", ".flac"))


def run(artifact: str, files: Path, compile: bool, out: Path) -> float:
    cmd = [sys.executable, "-m", "raytag.cli", "predict", artifact, str(files), "--out", str(out)]
    if compile:
        cmd.append("--compile")
    started = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.time() - started


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--files", type=Path, required=True, help="a folder of audio files to tag")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "predict_compile.json")
    args = ap.parse_args()
    seconds_of_audio = audio_seconds(args.files)
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for a, artifact in enumerate(args.artifacts):
        for r in range(args.rounds):
            for compile in (False, True):
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                out = tmp / f"artifact{a}-{'compile' if compile else 'eager'}-round{r}.csv"
                wall = run(artifact, args.files, compile, out)
                rows.append({"artifact": artifact, "round": r, "engine": "compile" if compile else "eager",
                             "wall_s": round(wall, 1), "x_real_time": round(seconds_of_audio / wall, 1),
                             "load": load, "csv": str(out)})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    for artifact, group in table.groupby("artifact"):
        eager = pd.read_csv(group[group.engine == "eager"].csv.iloc[0]).set_index("fname")
        comp = pd.read_csv(group[group.engine == "compile"].csv.iloc[0]).set_index("fname").loc[eager.index]
        diff = float((eager - comp).abs().to_numpy().max())
        table.loc[table.artifact == artifact, "max_abs_diff"] = diff
    print(f"\n{len(list(args.files.iterdir()))} files, {seconds_of_audio:.0f} s of audio\n")
    print(markdown(table.drop(columns=["csv"])))
    summary = table.groupby(["artifact", "engine"])["wall_s"].median().unstack()
    summary["speed_up"] = summary["eager"] / summary["compile"]
    print("\nmedian wall s:\n" + markdown(summary.reset_index()))
    args.out.write_text(json.dumps({"audio_seconds": seconds_of_audio, "rows": rows,
                                    "median": summary.reset_index().to_dict(orient="records")}, indent=2))


if __name__ == "__main__":
    main()
