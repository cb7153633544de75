"""`raytag train`: one configuration on a Ray Train worker group, then its tables."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.markup import escape

from raytag.cluster import check_data, check_data_folder, check_storage
from raytag.config import Config, ConfigError, members_keep_their_own, parse_cli_overrides
from raytag.console import output_console
from raytag.console.feature_cache import feature_cache_option
from raytag.console.tables import fold_table, stage_table
from raytag.ensemble.members import fit_members, save_run_artifact
from raytag.ensemble.noisy_teacher import noisy_teacher_targets
from raytag.search.space import is_space_file
from raytag.session import ensure_ray
from raytag.storage import check_name
from raytag.training.progress import EpochEvent
from raytag.training.runner import fit_pipeline


def duration(seconds: float) -> str:
    """<1s, 12s, 9m 40s, 2h 05m: short enough for a line per epoch."""
    s = int(round(seconds))
    if s < 1:
        return "<1s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def epoch_line(event: EpochEvent) -> str:
    """finetune   fold 1/5  epoch 12/30  loss 0.0712  val lwlrap 0.541  21.3 s  ETA 9m 40s
    (on the 2018 layout "val lwlrap 0.541  MAP@3 0.612": its task's own score beside it)"""
    if event.fold is None:
        fold = "all folds"
    elif event.fold >= event.n_folds:  # cv.refit's model, on every curated clip
        fold = "refit"
    else:
        fold = f"fold {event.fold + 1}/{event.n_folds}"
    width = len(str(event.epochs))
    eta = f"ETA {duration(event.eta_seconds)}" if event.eta_seconds > 0 else "last epoch"
    map3 = f"MAP@3 {event.val_map3:.3f}  " if event.val_map3 is not None else ""
    return (f"{event.stage:<10} {fold:<9}  epoch {event.epoch:>{width}}/{event.epochs}  "
            f"loss {event.train_loss:.4f}  val lwlrap {event.val_lwlrap:.3f}  {map3}"
            f"{event.seconds:.1f} s  {eta}")


def train_command(config: Path, data: Path, storage: str, name: Optional[str], overrides: list[str],
                  quiet: bool = False, feature_cache: Optional[str] = None):
    """`quiet`: no line per epoch (the run's tables at the end only). `feature_cache`: where
    features are built and read (None: default_feature_cache)."""
    console = output_console()
    if name is not None:  # "" too: it would mean the config's name, or the storage itself
        name = check_name(name, "--name")
    check_data_folder(data)  # a typo is named before Ray starts and the run folder is made
    cache = feature_cache_option(feature_cache)
    if is_space_file(config):  # its base/space sections would read as unknown settings
        raise ConfigError(f"{config}: this is a search space, not a run config; run it with "
                          f"`raytag tune --space {config}`, or give a run config (see configs/)")
    cfg = Config.from_yaml(config)
    if overrides:
        cli = parse_cli_overrides(overrides)
        cfg = cfg.with_overrides(cli)
        for note in members_keep_their_own(cfg, cli):
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    name = name or check_name(cfg.name, f"{config}: name")
    ensure_ray()
    check_storage(storage)  # a multi-node cluster needs storage and data every node can read
    check_data(str(data))
    n_folds = len(cfg.cv.folds or range(cfg.cv.n_folds))
    members = cfg.member_configs()
    what = (f"{len(members)} members ({', '.join(n for n, _ in members)}), {cfg.combine} mean" if members
            else cfg.model.name)
    kinds = list(dict.fromkeys(c.features.kind for _, c in members)) or [cfg.features.kind]  # members may differ
    console.print(f"[bold]raytag train[/] {name}: {what} on {' and '.join(kinds)}, "
                  f"{n_folds} fold(s), {cfg.train.num_workers} worker(s)", soft_wrap=True)

    def on_epoch(event: EpochEvent):  # soft_wrap: one line each, whatever the terminal's width
        console.print(epoch_line(event), highlight=False, soft_wrap=True)

    def on_member(i: int, member: str, member_cfg: Config):
        console.print(f"[bold]member {i + 1}/{len(members)}: {member}[/] ({member_model(member_cfg)})", highlight=False,
                      soft_wrap=True)

    if members:
        result = fit_members(cfg, data, storage, name, feature_cache=cache, on_epoch=None if quiet else on_epoch,
                             on_member=on_member)
    else:
        result = fit_pipeline(cfg, data, storage, name, feature_cache=cache, on_epoch=None if quiet else on_epoch,
                              noisy_teacher=noisy_teacher_targets)
        result.metrics["artifact"] = save_run_artifact(cfg, result)
    console.print(stage_table(result.stages))
    console.print(fold_table(result.metrics))
    if result.metrics.get("test_lwlrap") is not None:
        console.print(f"test lwlrap (reported only, never used to choose): {result.metrics['test_lwlrap']:.4f}")
    if result.metrics.get("test_clips_left_out"):
        console.print(f"{result.metrics['test_clips_left_out']} test clip(s) left out of the members' combined test "
                      "predictions (and score): some member has no prediction of them, e.g. a clip shorter than its "
                      "frame; listed in the outputs' skipped.csv", soft_wrap=True)
    # paths and notes are text ("[live]" in a folder name), not rich markup
    console.print(f"checkpoints: {escape(str(result.run_dir))}\n"
                  f"predictions, weights, submission: {escape(str(result.outputs_dir))}")
    if result.metrics.get("artifact"):
        console.print(f"artifact (for raytag predict / serve): {escape(str(result.metrics['artifact']))}", soft_wrap=True)
    if cfg.train.profile_epoch:
        report = f"outputs/profile/epoch{cfg.train.profile_epoch}.txt"
        local = Path(result.run_dir).is_dir()
        found = sorted(Path(result.run_dir).glob(f"**/{report}")) if local else []
        where = ("\n  ".join(str(f) for f in found) if found else
                 f"none: the run trained fewer than {cfg.train.profile_epoch} epochs" if local else
                 f"{report} under {result.run_dir} (each member's, for members)")
        console.print(f"profile of epoch {cfg.train.profile_epoch} (train.profile_epoch):\n  {escape(where)}", soft_wrap=True,
                      highlight=False)
    return result


def member_model(cfg: Config) -> str:
    """'cnn2d width 16 on 64 mels' (a member's line before its epochs)."""
    kind = cfg.features.kind
    bins = {"logmel": f"{cfg.features.n_mels} mels", "colormel": f"{cfg.features.n_mels} colour-mel bands",
            "pcen": f"{cfg.features.n_mels} PCEN mels",
            "logmel_pcen": f"{cfg.features.n_mels} mels, log-mel and PCEN"}.get(kind, kind)
    return f"{cfg.model.name} width {cfg.model.width} on {bins}"
