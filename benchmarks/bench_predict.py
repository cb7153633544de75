"""Prediction speed (issue 11, item 3): `raytag predict`'s engine before and after its rework,
side by side in one run, and the distilled model with CPU exports.

Throughput is seconds of audio tagged per second of wall time (x real time), end to end
through `predict_files` (decode, front ends, segments, models, combiner) on the dev
benchmark's test clips (/work/bench/escfat/test, 5 s clips at 16 kHz).

1. Ensemble: the engine of commit BASELINE (loaded from git, one front end per member,
   each fold model cutting its own segments, `no_grad`) against the current one (each
   distinct front end once per clip, segments cut and normalised once per member,
   batches across clips, `inference_mode`), interleaved in --rounds rounds; the largest
   per-clip probability difference between the two is reported (must be <= 1e-5).
   Without --artifact the ensemble is 5 members x 3 folds with random weights (speed
   does not depend on the weights): cnn2d, crnn, resnet18 and resnet34 on the default
   log-mel, and cnn2d on log-mel + deltas (a second front end).
2. Distilled (--distilled DIR, an artifact from `raytag distill`): the same engine with 2
   and 1 torch threads, and each CPU export in place of the eager model (int8 dynamic
   quantisation, torch.compile, ONNX Runtime when installed), with its largest probability
   difference to the eager model (an export is worth keeping only within 1e-3). The variants
   alternate within each of --rounds rounds (best of each kept); every model of the member is
   exported, so an export row never times the eager models.

    .venv/bin/python benchmarks/bench_predict.py [--artifact DIR] [--distilled DIR] [--clips 64]

Writes results/benchmarks/predict.json and the "## Prediction" section of
results/benchmarks/speed.md (other sections of that file are left as they are).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASELINE = "471b637"  # the engine before issue 11 item 3
OUT_JSON = REPO / "results" / "benchmarks" / "predict.json"
SPEED_MD = REPO / "results" / "benchmarks" / "speed.md"
AGREE_EXPORT = 1e-3


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def baseline_engine():
    """raytag/ensemble/tagging.py as of BASELINE, imported as its own module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE}:raytag/ensemble/tagging.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tagging_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tagging_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_ensemble_artifact(work: Path) -> str:
    """5 members x 3 folds, random weights, written as trial outputs and saved as an artifact."""
    sys.path.insert(0, str(REPO / "tests"))
    from raytag.config import Config
    from raytag.ensemble.artifact import MemberSpec, save_artifact
    from test_ensemble import CLASSES, make_trial_outputs, make_truth  # the tests' trial-output writer

    base = Config().to_dict()
    feats = base["features"]
    members = [("cnn2d", feats), ("crnn", feats), ("resnet18", feats), ("resnet34", feats),
               ("cnn2d", {**feats, "deltas": 2})]
    y, yt = make_truth(30, 1), make_truth(10, 2)
    specs = []
    for i, (model, feat) in enumerate(members):
        out, _ = make_trial_outputs(work / "exp", f"m{i}_{model}", y, yt, 1.0, seed=i, n_folds=3,
                                    features=feat, model={**base["model"], "name": model})
        specs.append(MemberSpec(f"m{i}_{model}", out))
    dest = str(work / "artifact")
    save_artifact(dest, specs, "mean", None, CLASSES, "fat2019")
    return dest


def audio_seconds(paths) -> float:
    import soundfile as sf

    return float(sum(sf.info(str(p)).duration for p in paths))


def timed(fn, paths, **kw):
    """(wall s, CPU s of this process, probs, failures): on a shared machine the CPU time
    is the steadier figure (another job's load stretches the wall time, less the CPU time)."""
    t0, c0 = time.perf_counter(), time.process_time()
    probs, failures = fn(paths, **kw)
    return time.perf_counter() - t0, time.process_time() - c0, probs, failures


def bench_ensemble(artifact_path: str, paths, rounds: int, batch_size: int) -> dict:
    import torch

    from raytag.ensemble.artifact import describe, load_artifact
    from raytag.ensemble.tagging import predict_files

    old = baseline_engine()
    art = load_artifact(artifact_path)
    seconds = audio_seconds(paths)
    engines = {"before": lambda p, **k: old.predict_files(art, p, batch_size=batch_size),
               "after": lambda p, **k: predict_files(art, p, batch_size=batch_size)}
    for fn in engines.values():  # warm-up (first-call allocations, thread pools)
        fn(paths[:2])
    runs, probs = [], {}
    for r in range(rounds):
        for name, fn in engines.items():
            load = load_average()
            wall, cpu, p, _ = timed(fn, paths)
            probs[name] = p
            runs.append({"round": r, "engine": name, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "x_real_time": round(seconds / wall, 2), "load_avg": load})
            print(f"  ensemble {name:<7} round {r}: {wall:6.1f} s (CPU {cpu:6.1f} s)  {seconds / wall:6.1f} x real time"
                  f"  (load {load})", flush=True)
    diff = float(np.abs(probs["before"].to_numpy() - probs["after"].to_numpy()).max())
    med = {n: float(np.median([x["x_real_time"] for x in runs if x["engine"] == n])) for n in engines}
    cpu = {n: float(np.median([x["cpu_s"] for x in runs if x["engine"] == n])) for n in engines}
    members = describe(art)
    n_models = int(members["folds"].sum())
    return {
        "artifact": artifact_path, "members": members.to_dict(orient="records"), "fold_models": n_models,
        "torch_threads": torch.get_num_threads(), "batch_size": batch_size, "runs": runs,
        "median_x_real_time": med, "speed_up": round(med["after"] / med["before"], 3),
        "median_cpu_s": cpu, "cpu_ratio_after_before": round(cpu["after"] / cpu["before"], 3),
        "per_fold_model_x_real_time": {n: round(v * n_models, 1) for n, v in med.items()},
        "max_abs_prob_diff": diff, "same_predictions": diff <= 1e-5,
    }


# ----------------------------------------------------------------------------- distilled + exports
class _OnnxModel:
    """An ONNX Runtime session in the place of a torch model (called with a tensor)."""

    def __init__(self, session):
        self.session = session
        self.name = session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


def export_variants(model, example):
    """name -> (callable in the model's place, or None; note)."""
    import torch

    out = {}
    try:
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU},
                                                   dtype=torch.qint8)
        out["int8_dynamic"] = (q.eval(), "torch.ao dynamic quantisation (Linear/LSTM/GRU weights int8)")
    except Exception as err:  # noqa: BLE001 - reported as a figure, not a failure
        out["int8_dynamic"] = (None, f"failed: {err}")
    try:
        c = torch.compile(copy.deepcopy(model), dynamic=True)
        with torch.inference_mode():
            c(example)
        out["torch_compile"] = (c, "torch.compile(dynamic=True), inductor on CPU")
    except Exception as err:  # noqa: BLE001
        out["torch_compile"] = (None, f"failed: {str(err).splitlines()[0][:200]}")
    try:
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "student.onnx"
        torch.onnx.export(copy.deepcopy(model), (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        out["onnxruntime"] = (_OnnxModel(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])),
                              f"ONNX Runtime {ort.__version__}, CPU provider")
    except Exception as err:  # noqa: BLE001
        out["onnxruntime"] = (None, f"not measured: {str(err).splitlines()[0][:200]}")
    return out


def export_every_model(models: list, example, export=None) -> dict:
    """name -> (one export per model, or None; note): a member of several models runs an export
    only when every model has one (timing the eager models under an export's name misreports it)."""
    export = export or export_variants
    per_model = [export(m, example) for m in models]
    out = {}
    for name in per_model[0]:
        fns = [variants[name][0] for variants in per_model]
        failed = [variants[name][1] for variants in per_model if variants[name][0] is None]
        note = per_model[0][name][1] + (f" (each of {len(models)} models)" if len(models) > 1 else "")
        out[name] = (None, failed[0]) if failed else (fns, note)
    return out


def interleaved_best(variants: list, rounds: int, measure) -> dict:
    """Each variant measured once per round, the variants alternating within every round (so a
    change in the machine's load falls on all of them alike); label -> fastest (wall, ...) result."""
    best = {}
    for _ in range(rounds):
        for variant in variants:
            got = measure(variant)
            if variant["label"] not in best or got[0] < best[variant["label"]][0]:
                best[variant["label"]] = got
    return best


def bench_distilled(distilled: str, paths, rounds: int, batch_size: int) -> dict:
    import torch

    from raytag.ensemble.artifact import load_artifact
    from raytag.ensemble.tagging import predict_files

    art = load_artifact(distilled)
    seconds = audio_seconds(paths)
    member = art.members[0]
    eager = list(member.models)
    threads0 = torch.get_num_threads()

    def in_place(variant, fn):
        torch.set_num_threads(variant["threads"])
        member.models[:] = variant["models"] or eager
        try:
            return fn()
        finally:
            member.models[:] = eager
            torch.set_num_threads(threads0)

    def measure(variant):
        load = load_average()
        wall, _, p, _ = in_place(variant, lambda: timed(lambda q, **k: predict_files(art, q, batch_size=batch_size),
                                                        paths))
        return wall, p, load

    seg = int(member.settings["segment_frames"])
    c, f = np.asarray(member.settings["norm_mean"]).shape
    example = torch.zeros(batch_size, c, f, seg)
    variants = [{"label": f"eager {t}t", "variant": "eager", "threads": t, "models": None, "note": ""} for t in (2, 1)]
    failed = []
    for name, (fns, note) in export_every_model(eager, example).items():
        if fns is None:
            failed.append({"variant": name, "threads": 2, "note": note})
            print(f"  distilled {name}: {note}", flush=True)
        else:
            variants.append({"label": name, "variant": name, "threads": 2, "models": fns, "note": note})
    for variant in variants:  # warm-up (first-call allocations, thread pools)
        in_place(variant, lambda: predict_files(art, paths[:2], batch_size=batch_size))
    best = interleaved_best(variants, rounds, measure)
    reference = best["eager 2t"][1]
    rows = []
    for variant in variants:
        wall, p, load = best[variant["label"]]
        diff = float(np.abs(p.to_numpy() - reference.to_numpy()).max())
        row = {"variant": variant["variant"], "threads": variant["threads"], "wall_s": round(wall, 2),
               "x_real_time": round(seconds / wall, 1), "load_avg": load, "max_abs_prob_diff": diff,
               "note": variant["note"]}
        if variant["models"] is not None:
            row["agrees_1e-3"] = diff <= AGREE_EXPORT
        rows.append(row)
        print(f"  distilled {variant['label']:<14}: {seconds / wall:7.1f} x real time, max |diff| {diff:.2e}  "
              f"(load {load})", flush=True)
    rows += failed
    return {"artifact": distilled, "model": member.settings["model"], "features": member.settings["features"],
            "inference": member.settings.get("inference"), "scores": art.scores,
            "distilled": getattr(art, "distilled", None), "rounds": "interleaved, best of each", "variants": rows}


# ----------------------------------------------------------------------------- report
def provenance_line(section: dict) -> str:
    """Where one section's figures come from: its own run, which may be older than the file's."""
    prov = section.get("provenance")
    if not prov:
        return "Measured by an earlier run that did not record its command (kept from the last predict.json)."
    return (f"Measured {prov['when']} by `{prov['command']}` at commit {prov['commit']} on "
            f"{prov['machine']['cpus']} cores: {prov['clips']} clips of {prov['data']} "
            f"({prov['audio_seconds']:.0f} s of audio).")


def write_section(result: dict, speed_md: Path) -> None:
    ens = result.get("ensemble")
    lines = ["## Prediction", "",
             "Each part below says which run measured it (a rerun of one part keeps the other's figures). "
             "Machines shared with other jobs (1/5/15-minute load average per row); end to end through "
             "`predict_files` (decode, front ends, segments, models, combiner). x real time = seconds of "
             "audio per second.", ""]
    if ens:
        after = ens.get("provenance", {}).get("commit", "the commit measured")
        lines += [provenance_line(ens), "",
                  f"Ensemble: {len(ens['members'])} members, {ens['fold_models']} fold models "
                  f"({', '.join(m['model'] + '/' + m['features'] for m in ens['members'])}), "
                  f"{ens['torch_threads']} torch threads, batch {ens['batch_size']}. Before = engine of "
                  f"commit {BASELINE}; after = {after}. Interleaved rounds.", "",
                  "| engine | round | wall s | CPU s | x real time | load |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['engine']} | {r['round']} | {r['wall_s']} | {r.get('cpu_s', '-')} | {r['x_real_time']} | "
                  f"{r['load_avg']} |" for r in ens["runs"]]
        med = ens["median_x_real_time"]
        lines += ["", f"Median: before {med['before']:.1f}x, after {med['after']:.1f}x real time "
                      f"(speed-up {ens['speed_up']:.2f}; CPU time after/before "
                      f"{ens.get('cpu_ratio_after_before', float('nan')):.2f}); per fold model {ens['per_fold_model_x_real_time']['before']}x "
                      f"-> {ens['per_fold_model_x_real_time']['after']}x. Largest per-clip probability "
                      f"difference before/after: {ens['max_abs_prob_diff']:.1e} "
                      f"({'within' if ens['same_predictions'] else 'NOT within'} 1e-5).", ""]
    dist = result.get("distilled")
    if dist:
        lines += [provenance_line(dist), "",
                  f"Distilled model ({dist['model']['name']} width {dist['model']['width']} depth "
                  f"{dist['model']['depth']}, {dist['features']['kind']} {dist['features']['n_mels']} mels, "
                  f"overlap {dist['inference']['overlap'] if dist['inference'] else '-'}), best of rounds:", "",
                  "| variant | threads | x real time | max abs prob diff to eager | load | note |",
                  "|---|---|---|---|---|---|"]
        for r in dist["variants"]:
            x = r.get("x_real_time", "-")
            d = r.get("max_abs_prob_diff")
            lines.append(f"| {r['variant']} | {r['threads']} | {x} | {'-' if d is None else f'{d:.1e}'} | "
                         f"{r.get('load_avg', '-')} | {r['note']} |")
        lines.append("")
    section = "\n".join(lines)
    text = speed_md.read_text() if speed_md.exists() else "# Speed\n\n"
    if "## Prediction" in text:
        head, rest = text.split("## Prediction", 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    speed_md.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=None, help="ensemble artifact (default: a 5x3 random-weight one)")
    parser.add_argument("--distilled", default=None, help="distilled artifact from `raytag distill`")
    parser.add_argument("--skip-ensemble", action="store_true")
    parser.add_argument("--data", type=Path, default=Path("/work/bench/escfat"))
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raytag_bench_predict"))
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)

    paths = sorted((args.data / "test").glob("*.wav"))[:args.clips]
    if not paths:
        sys.exit(f"no test clips under {args.data}/test")
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    prov = {"command": " ".join(["python", *sys.argv]), "commit": commit, "data": str(args.data),
            "clips": len(paths), "audio_seconds": audio_seconds(paths),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "when": time.strftime("%Y-%m-%d %H:%M")}
    # top level: this invocation; each section keeps the provenance of the run that measured it
    result = {"benchmark": "predict", **prov, "load_avg_start": load_average()}
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.skip_ensemble:
        args.work.mkdir(parents=True, exist_ok=True)
        artifact = args.artifact or build_ensemble_artifact(args.work)
        print(f"ensemble {artifact}: {len(paths)} clips", flush=True)
        result["ensemble"] = {**bench_ensemble(artifact, paths, args.rounds, args.batch_size), "provenance": prov}
    elif "ensemble" in old:
        result["ensemble"] = old["ensemble"]  # keep the last measurement of the part not rerun
    if args.distilled:
        print(f"distilled {args.distilled}", flush=True)
        result["distilled"] = {**bench_distilled(args.distilled, paths, args.rounds, args.batch_size),
                               "provenance": prov}
    elif "distilled" in old:
        result["distilled"] = old["distilled"]
    result["load_avg_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    speed_md = SPEED_MD if args.out == OUT_JSON else args.out.parent / "speed.md"
    write_section(result, speed_md)
    print(f"wrote {args.out} and the Prediction section of {speed_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
