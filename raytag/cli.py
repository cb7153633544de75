"""The raytag command line. Each command parses its options and hands over to the
module that owns the work; imports are lazy so that `raytag --help` stays instant."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from raytag import __version__
from raytag.errors import RaytagError

app = typer.Typer(
    name="raytag",
    help=(
        "Multi-label audio tagging trained on noisy labels: the Freesound Audio Tagging "
        "pipeline (warm-up on noisy clips, fine-tune on curated, filter, pseudo-label), "
        "searched with Ray Tune + Optuna and ensembled by lwlrap.\n\n"
        "Start with `raytag demo`: it makes a small dataset and runs every step on this machine."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

STORAGE_HELP = "Where results go: a local folder or a URI (s3://bucket/prefix, gs://...)."
DATA_HELP = ("Dataset folder in the FSDKaggle2019 or FSDKaggle2018 layout (see README), "
             "or a URI of one (s3://, gs://, file://) that each node copies once.")


def _run(fn, *args, **kwargs):
    """Call a command's implementation; user errors print as one clear message."""
    from raytag.config import ConfigError

    try:
        return fn(*args, **kwargs)
    except (RaytagError, ConfigError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2)


def _version(value: bool):
    if value:
        print(f"raytag {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    pass


@app.command()
def demo(
    out: Path = typer.Option(Path("results"), help="Folder for the demo's data cache and results."),
    tiny: bool = typer.Option(False, help="A much smaller run (used by the tests)."),
    samples: Optional[int] = typer.Option(None, help="Trials in the demo sweep (default: from quick.yaml)."),
):
    """Make the built-in demo dataset and run the whole job on it: features, a small
    search of the multi-stage pipeline, the ensemble, and tagging with the artifact."""
    from raytag.demo import run_demo

    _run(run_demo, out=out, tiny=tiny, samples=samples)


@app.command("make-demo-data")
def make_demo_data(
    out: Path = typer.Argument(..., help="Folder to write the demo dataset to (2019 layout)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    scale: float = typer.Option(1.0, help="Multiplies the number of clips per split."),
):
    """Write the synthetic demo dataset (curated, noisy with known wrong labels, test)."""
    from raytag.data.demo import make_demo_dataset

    path = _run(make_demo_dataset, out, seed=seed, scale=scale)
    console.print(f"demo dataset written to [bold]{path}[/]")


@app.command()
def prepare(
    data: str = typer.Option(..., help=DATA_HELP),
    config: Optional[Path] = typer.Option(None, help="YAML config; its `features` section is used."),
    cache: Path = typer.Option(Path("results/features"), help="Feature cache folder."),
):
    """Check a dataset and compute (or reuse) its cached features."""
    from raytag.features.store import prepare_command

    _run(prepare_command, data=data, config=config, cache=cache)


@app.command()
def train(
    config: Path = typer.Option(..., help="YAML config of one run (see configs/default.yaml)."),
    data: str = typer.Option(..., help=DATA_HELP),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    name: Optional[str] = typer.Option(None, help="Run name (default: the config's name). Same name resumes."),
    set_: List[str] = typer.Option([], "--set", help="Override a setting: --set train.lr=3e-4 (repeatable)."),
):
    """Run one configuration, all folds and all enabled stages, on a Ray Train worker group."""
    from raytag.training.runner import train_command

    _run(train_command, config=config, data=data, storage=storage, name=name, overrides=set_)


@app.command()
def tune(
    space: Path = typer.Option(..., help="Search space YAML (see search_spaces/)."),
    data: str = typer.Option(..., help=DATA_HELP),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    name: Optional[str] = typer.Option(None, help="Experiment name (default: the space's name)."),
    samples: Optional[int] = typer.Option(None, help="Number of trials (default: from the space)."),
    resume: bool = typer.Option(False, help="Continue an interrupted sweep of the same name."),
    scheduler: Optional[str] = typer.Option(None, help="asha | fifo | hyperband (default: from the space)."),
):
    """Search pipeline configurations with Ray Tune + Optuna; prints a leaderboard."""
    from raytag.search.tuner import tune_command

    _run(tune_command, space=space, data=data, storage=storage, name=name, samples=samples,
         resume=resume, scheduler=scheduler)


@app.command()
def report(
    experiment: str = typer.Argument(..., help="Experiment name (a folder under --storage)."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
):
    """Print a finished sweep's leaderboard again and (re)draw its plots."""
    from raytag.search.report import report_command

    _run(report_command, experiment=experiment, storage=storage)


@app.command()
def ensemble(
    experiment: str = typer.Argument(..., help="Experiment name (a folder under --storage)."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    top: Optional[int] = typer.Option(5, help="Candidates: the K best trials by the leaderboard's metric (CV MAP@3 on 2018 data, else CV lwlrap)."),
    min_cv: Optional[float] = typer.Option(None, help="Candidates: trials over this bar in the leaderboard's metric."),
):
    """Combine the best trials (arithmetic, geometric, rank, fitted weighted means),
    score them on out-of-fold predictions, and save the best as an artifact."""
    from raytag.ensemble.job import ensemble_command

    _run(ensemble_command, experiment=experiment, storage=storage, top=top, min_cv=min_cv)


@app.command()
def pull(
    experiment: str = typer.Argument(..., help="Experiment name."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    to: Path = typer.Option(..., help="Local folder to copy the artifact, leaderboard and report to."),
):
    """Copy the best ensemble artifact from a sweep's storage, verifying checksums."""
    from raytag.ensemble.pull import pull_command

    _run(pull_command, experiment=experiment, storage=storage, to=to)


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="Artifact folder (from `raytag ensemble` or `raytag pull`)."),
    inputs: List[Path] = typer.Argument(..., help="Audio files or folders to tag."),
    out: Optional[Path] = typer.Option(None, help="Output file (default: submission.csv, or stdout for json)."),
    format: str = typer.Option("csv", help="csv (Kaggle submission of the artifact's layout) or json."),
    batch_size: int = typer.Option(32, help="Segments per forward pass."),
):
    """Tag audio files with an ensemble artifact."""
    from raytag.predict import predict_command

    _run(predict_command, artifact=artifact, inputs=inputs, out=out, format=format, batch_size=batch_size)


@app.command()
def score(
    truth: Path = typer.Option(..., help="Truth CSV: fname,labels (2019) or fname,label (2018)."),
    submission: Path = typer.Option(..., help="Submission CSV: fname + one score column per class, or fname,label (top 3)."),
    per_class: bool = typer.Option(False, help="Also print lwlrap per class."),
):
    """Score a submission: lwlrap (and per-class lwlrap) or MAP@3."""
    from raytag.scoring import score_command

    _run(score_command, truth=truth, submission=submission, per_class=per_class)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
