"""The raytag command line. Each command parses its options and hands over to its
command in raytag.console (which calls the library and prints the result); imports are
lazy so that `raytag --help` stays instant."""
from __future__ import annotations

import os
import select
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

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
    context_settings={"help_option_names": ["-h", "--help"]},  # every command's context inherits it
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

STORAGE_HELP = "Where results go: a local folder or a URI (s3://bucket/prefix, gs://...)."
FEATURE_CACHE_HELP = ("Feature cache folder, a path on each node: its own disk, or a folder every node mounts at "
                      "the same path (default: $RAYTAG_CACHE, else ~/.cache/raytag/features). "
                      "prepare, train and tune build and read features there: give each the same one.")
DATA_HELP = ("Dataset folder in the FSDKaggle2019 or FSDKaggle2018 layout (see README), "
             "or a URI of one (s3://, gs://, file://) that each node copies once.")


def _run(fn, *args, **kwargs):
    """Call a command's implementation; user errors, and files it could not read or write,
    print as one clear message (exit 2). A reader closing stdout (`| head`) ends it quietly."""
    from raytag.config import ConfigError
    from raytag.errors import os_error_text

    try:
        if "storage" in kwargs:  # every command's --storage: "" (an unset shell variable) is not the current folder
            from raytag.storage import nonempty_option

            kwargs["storage"] = nonempty_option(kwargs["storage"], "--storage", "give the folder or URI that holds "
                                                "the experiments (without --storage: results)")
        result = fn(*args, **kwargs)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return result
    except (RaytagError, ConfigError) as err:
        # soft_wrap: never split or crop a path in the message (80 columns, piped output);
        # escape: a "[...]" in the message is text, not rich markup
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(code=2)
    except OSError as err:  # a file or folder the command could not read or write: named, no traceback
        if isinstance(err, BrokenPipeError) and _stdout_reader_gone():  # `| head` has what it wanted
            _quiet_closed_stdout()
        console.print(f"[bold red]error:[/] {escape(os_error_text(err))}", soft_wrap=True)
        raise typer.Exit(code=2)


SIGPIPE_EXIT = 128 + 13  # what a shell reports for a command a closed pipe stopped (`seq 1e9 | head`)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`raytag predict ... --out - | head`
    has read its lines): poll reports an error on a pipe with no reader left."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False


def _quiet_closed_stdout() -> None:
    """A reader that stops reading is normal in a pipeline: stop without a message. stdout
    goes to devnull so that Python's flush at exit does not fail on the closed pipe again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(code=SIGPIPE_EXIT)


def _html_report(exp_dir: str, required: bool = False) -> None:
    """Write the sweep's report.html and print where; after tune/ensemble a failure here
    is only a warning (their own results are already saved)."""
    from raytag.report_html import write_report_html

    try:
        path = write_report_html(exp_dir)
    except Exception as err:  # noqa: BLE001 - reported; the report is an extra after tune/ensemble
        if required:
            console.print(f"[bold red]error:[/] report.html not written: {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(code=2)
        console.print(f"[yellow]report.html not written:[/] {escape(str(err))}", soft_wrap=True)
        return
    console.print(f"report: [bold]{escape(str(path))}[/]", highlight=False, soft_wrap=True)  # a path on one line


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
    out: str = typer.Option("results", help="Folder for the demo's data cache and results."),
    tiny: bool = typer.Option(False, help="A much smaller run (used by the tests)."),
    samples: Optional[int] = typer.Option(None, help="Trials in a new demo sweep (default: from search_spaces/demo.yaml). A rerun resumes the sweep under --out with its first count: give a fresh --out (or delete results/demo) to change it."),
):
    """Make the built-in demo dataset and run the whole job on it: features, a small
    search of the multi-stage pipeline, the ensemble, and tagging with the artifact."""
    from raytag.demo import run_demo

    _run(run_demo, out=out, tiny=tiny, samples=samples)


@app.command("make-demo-data")
def make_demo_data(
    out: str = typer.Argument(..., help="Folder to write the demo dataset to (2019 layout); a local path."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    scale: float = typer.Option(1.0, help="Multiplies the number of clips per split."),
):
    """Write the synthetic demo dataset (curated, noisy with known wrong labels, test)."""
    from raytag.data.demo import make_demo_dataset

    path = _run(make_demo_dataset, out, seed=seed, scale=scale)
    console.print(f"demo dataset written to [bold]{escape(str(path))}[/]", soft_wrap=True)  # text, not markup


@app.command()
def prepare(
    data: str = typer.Option(..., help=DATA_HELP),
    config: Optional[Path] = typer.Option(None, help="YAML whose features to build: the run config you will train with, e.g. configs/default.yaml (with `members`: each member's front end), or the search space you will tune (its base's). Default: the built-in features, 96 mels."),
    feature_cache: Optional[str] = typer.Option(None, "--feature-cache", "--cache", help=FEATURE_CACHE_HELP),
    set_: List[str] = typer.Option([], "--set", help="Override a setting, as train's --set does (tune's, for a search space): --set features.n_mels=128 (repeatable)."),
):
    """Check a dataset and compute (or reuse) its cached features, where train and tune will reuse them."""
    from raytag.console.prepare import prepare_command

    _run(prepare_command, data=data, config=config, cache=feature_cache, overrides=set_)


@app.command()
def train(
    config: Path = typer.Option(..., help="YAML config of one run (see configs/default.yaml)."),
    data: str = typer.Option(..., help=DATA_HELP),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    name: Optional[str] = typer.Option(None, help="Run name (default: the config's name). Same name resumes."),
    set_: List[str] = typer.Option([], "--set", help="Override a setting: --set train.lr=3e-4 (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per epoch; only the tables at the end."),
    feature_cache: Optional[str] = typer.Option(None, "--feature-cache", help=FEATURE_CACHE_HELP),
):
    """Run one configuration, all folds and all enabled stages, on a Ray Train worker group (or in this process, for one CPU worker on a local Ray: train.runner).
    Prints one line per epoch (stage, fold, epoch, train loss, held-out lwlrap, seconds,
    time left for the run) unless --quiet."""
    from raytag.console.train import train_command

    _run(train_command, config=config, data=data, storage=storage, name=name, overrides=set_, quiet=quiet,
         feature_cache=feature_cache)


@app.command()
def tune(
    space: Path = typer.Option(..., help="Search space YAML (see search_spaces/)."),
    data: str = typer.Option(..., help=DATA_HELP),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    name: Optional[str] = typer.Option(None, help="Experiment name (default: the space's name)."),
    samples: Optional[int] = typer.Option(None, help="Number of trials (default: from the space)."),
    resume: bool = typer.Option(False, help="Continue an interrupted sweep of the same name."),
    scheduler: Optional[str] = typer.Option(None, help="asha | fifo (default: from the space). hyperband is refused: it does not fit the pipeline; use asha."),
    set_: List[str] = typer.Option([], "--set", help="Fix a setting for every trial, as if in the space's base: --set cv.clip_groups=groups.csv (repeatable; a key the space searches is refused)."),
    feature_cache: Optional[str] = typer.Option(None, "--feature-cache", help=FEATURE_CACHE_HELP + " On a cluster, the same path on every node."),
):
    """Search pipeline configurations with Ray Tune + Optuna; prints a leaderboard."""
    from raytag.console.sweep import has_scored_trials, tune_command

    result = _run(tune_command, space=space, data=data, storage=storage, name=name, samples=samples,
                  resume=resume, scheduler=scheduler, overrides=set_, feature_cache=feature_cache)
    _html_report(result.experiment_dir)
    if not has_scored_trials(result.leaderboard):  # every trial failed: no result (reasons printed)
        raise typer.Exit(code=2)


@app.command()
def report(
    experiment: str = typer.Argument(..., help="Experiment name (a folder under --storage)."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    html: bool = typer.Option(False, "--html", help="Also write report.html beside the leaderboard: one self-contained page."),
):
    """Print a finished sweep's leaderboard again and (re)draw its plots."""
    from raytag import storage as files
    from raytag.console.sweep import report_command

    _run(report_command, experiment=experiment, storage=storage)
    if html:
        _html_report(files.join(files.absolute(storage), experiment), required=True)


@app.command()
def ensemble(
    experiment: str = typer.Argument(..., help="Experiment name (a folder under --storage): a sweep, or a `raytag train` run (its members are the candidates)."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    top: Optional[int] = typer.Option(5, help="Candidates: the K best trials by the leaderboard's metric (CV MAP@3 on 2018 data, else CV lwlrap); 0: no limit."),
    min_cv: Optional[float] = typer.Option(None, help="Candidates: trials over this bar in the leaderboard's metric."),
    with_: List[str] = typer.Option([], "--with", help="Another experiment under --storage whose trials are candidates too (repeatable): a sweep of other model families on the same data and folds, or a `raytag train` run (each of its members competes). The ensemble is written under EXPERIMENT."),
):
    """Combine the best trials (arithmetic, geometric, rank, fitted weighted means),
    score them on out-of-fold predictions, and save the best as an artifact."""
    from raytag.console.ensemble import ensemble_command

    from raytag import storage as files

    _run(ensemble_command, experiment=experiment, storage=storage, top=top, min_cv=min_cv, also=with_)
    exp_dir = files.join(files.absolute(storage), experiment)
    if files.exists(files.join(exp_dir, "leaderboard.csv")):  # a sweep; a train run has no report page
        _html_report(exp_dir)


@app.command()
def distill(
    experiment: str = typer.Argument(..., help="A sweep with an ensemble (`raytag ensemble`) or a `raytag train` run: its name, a folder under --storage."),
    storage: str = typer.Option("results", help="Where the experiment is: a local folder (distill writes its outputs beside it; a URI is refused)."),
    data: Optional[str] = typer.Option(None, help="The dataset the sweep ran on (default: the one in its sweep.json; a train run needs it)."),
    model: Optional[str] = typer.Option(None, help="The student's architecture (a model name, as in search spaces; default: that of the teacher's member with the best out-of-fold lwlrap, whose recipe it takes)."),
    width: Optional[int] = typer.Option(None, help="The student's width (channels of its first block; default: that member's, or 32 with a --model no member has)."),
    depth: Optional[int] = typer.Option(None, help="The student's depth (blocks; default: that member's, or 4 with a --model no member has)."),
    epochs: int = typer.Option(60, help="Training epochs over every training clip (twice a member's 30, which stopped students well short; results/benchmarks/distill_holdout.json)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: that member's; its optimizer and schedule)."),
    batch_size: int = typer.Option(32, help="Clips per training batch."),
    overlap: Optional[float] = typer.Option(None, help="Segment overlap when tagging, 0 to 0.95 (default: that of the member the student is made like, see --model); 0 is fastest."),
    feature_cache: Optional[str] = typer.Option(None, help=FEATURE_CACHE_HELP + " `raytag demo` builds in results/features."),
    seed: int = typer.Option(0, help="Seed of the student's initialisation and batches."),
    students: int = typer.Option(2, help="Students trained alike but for their seeds (--seed, +1, ...) and averaged in the artifact, as a run's fold models are: each one more costs a student's training and slows tagging (the front end is shared). 1 is the fastest; 2 agreed better with the teacher on new clips (speed.md)."),
    label_weight: float = typer.Option(0.5, help="Each clip's target: this share of its given labels, the rest the teacher's soft prediction (0: the teacher's alone)."),
    teacher_scale: str = typer.Option("prob", help="The teacher's part of a target: 'prob' (its probabilities) or 'clip_max' (each clip's divided by its top class score, so the top class teaches 1)."),
    average_last: Optional[int] = typer.Option(None, help="The student is the mean of its last N epochs' weights (SWA; 0: off; default: as its member was trained)."),
    noisy_targets: str = typer.Option("oof", help="The teacher's predictions on noisy clips: 'oof' (its members' out-of-fold ones, where every member trained with cv.noisy_folds; else the artifact's) or 'ensemble' (the artifact's)."),
    target_grain: str = typer.Option("clip", help="The teacher's part of a crop's target: 'clip' (its clip's prediction, for every crop of the clip) or 'segment' (the teacher along the clip: its members' predictions on segments every quarter crop, at the crop's start)."),
    init: str = typer.Option("scratch", help="The student's first weights: 'scratch' (random) or 'member' (the template member's first fold model, fine-tuned on the targets; pair it with fewer --epochs and a lower --lr)."),
    front_end: str = typer.Option("auto", help="The student's front end: 'auto' (log-mel and PCEN as two channels, logmel_pcen, where the teacher has members on both; else that member's), 'member' (the front end of the member it is made like), or a features.kind (logmel, pcen, logmel_pcen, mfcc, colormel) with that member's other settings."),
):
    """Distil the ensemble (a sweep's, or a train run's members) into one small, fast model:
    trained on its soft predictions for every training clip (out-of-fold on curated clips;
    on noisy clips too if the teacher trained with cv.noisy_folds, else the artifact's own),
    saved as an artifact under EXPERIMENT/distill/artifact that `raytag predict` and
    `raytag serve` take like any other. The student trains and tags on the CPU, in this
    process, whether or not the machine has a GPU."""
    from raytag.console.distill import distill_command
    from raytag.ensemble.distill import StudentSettings

    settings = StudentSettings(model=model, width=width, depth=depth, epochs=epochs, lr=lr,
                               batch_size=batch_size, overlap=overlap, seed=seed, students=students,
                               label_weight=label_weight,
                               teacher_scale=teacher_scale, noisy_targets=noisy_targets, target_grain=target_grain,
                               average_last=average_last, init=init, front_end=front_end)
    _run(distill_command, experiment=experiment, storage=storage, data=data, feature_cache=feature_cache,
         settings=settings)


@app.command()
def pull(
    experiment: str = typer.Argument(..., help="A sweep with an ensemble, or a `raytag train` run: its name."),
    storage: str = typer.Option("results", help=STORAGE_HELP),
    to: str = typer.Option(..., help="Local folder to copy the artifact, leaderboard and report to."),
):
    """Copy the best ensemble artifact from a sweep's storage (or a train run's artifact),
    verifying checksums."""
    from raytag.console.ensemble import pull_command

    _run(pull_command, experiment=experiment, storage=storage, to=to)


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="Artifact folder (from `raytag train`, `ensemble`, `distill` or `pull`)."),
    inputs: List[Path] = typer.Argument(..., help="Audio files or folders to tag."),
    out: Optional[Path] = typer.Option(None, help="Output file; - for stdout (default: submission.csv, or stdout for json)."),
    format: Optional[str] = typer.Option(None, help="csv (Kaggle submission of the artifact's layout) or json (default: json for an --out ending in .json, else csv)."),
    batch_size: int = typer.Option(32, help="Segments per forward pass."),
    compile: bool = typer.Option(False, "--compile", help="Run the networks through torch.compile: about 1.3x faster on CPU, same scores (to 1e-6), but compiling takes 15-40 s a run, so it pays only on lists of several hours of audio. Needs a C++ compiler; without one the networks run as usual, with a warning."),
):
    """Tag audio files with an ensemble artifact."""
    from raytag.console.predict import predict_command

    _run(predict_command, artifact=artifact, inputs=inputs, out=out, format=format, batch_size=batch_size,
         compile=compile)


@app.command()
def score(
    truth: Path = typer.Option(..., help="Truth CSV: fname,labels (2019) or fname,label (2018)."),
    submission: Path = typer.Option(..., help="Submission CSV: fname + one score column per class, or fname,label (top 3)."),
    per_class: bool = typer.Option(False, help="Also print lwlrap per class."),
):
    """Score a submission: lwlrap (and per-class lwlrap) or MAP@3."""
    from raytag.console.score import score_command

    _run(score_command, truth=truth, submission=submission, per_class=per_class)


@app.command()
def serve(
    artifact: str = typer.Argument(..., help="Artifact folder or URI (from `raytag train`, `ensemble`, `distill` or `pull`)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 to accept other machines."),
    port: int = typer.Option(8000, help="TCP port of the HTTP endpoint."),
    replicas: int = typer.Option(1, help="Model replicas (Ray actors), each with the whole artifact loaded."),
    max_batch_size: int = typer.Option(8, help="Uploads from different clients scored together, at most."),
    max_upload_mb: float = typer.Option(50.0, help="Larger uploads are refused with 413."),
    max_seconds: float = typer.Option(1800.0, help="Longer audio is refused with 413, before it is decoded whole "
                                      "(a small compressed file can hold hours); use `raytag predict` for long recordings."),
    replica_cpus: float = typer.Option(1.0, help="CPUs each replica holds."),
    replica_gpus: float = typer.Option(0.0, help="GPUs each replica holds (0.5 packs two on a GPU); >0 runs the models on CUDA."),
    name: str = typer.Option("raytag", help="The Serve app's name: `raytag` is served at /, any other under /NAME/. "
                             "A second `raytag serve` on one cluster needs its own (and the running Serve's --host/--port)."),
):
    """Serve an artifact over HTTP with Ray Serve until Ctrl-C.

    POST /tag takes an audio file (multipart field `file`, or the raw body; ?top=K) and
    answers its tags; GET / is a page to drop a clip on; GET /classes and GET /healthz."""
    from raytag.serve.app import serve_command

    _run(serve_command, artifact=artifact, host=host, port=port, replicas=replicas,
         max_batch_size=max_batch_size, max_upload_mb=max_upload_mb,
         replica_cpus=replica_cpus, replica_gpus=replica_gpus, max_seconds=max_seconds, name=name)



# keep last: re-flows every command's help and drops Typer's Python type labels (raytag.cli_help)
from raytag.cli_help import install as _install_help  # noqa: E402

_install_help(app)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
