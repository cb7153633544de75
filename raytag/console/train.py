"""`raytag train`: one configuration on a Ray Train worker group, then its tables."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from raytag.cluster import check_data, check_storage
from raytag.config import Config, parse_cli_overrides
from raytag.console.tables import stage_table
from raytag.session import ensure_ray
from raytag.training.runner import fit_pipeline


def train_command(config: Path, data: Path, storage: str, name: Optional[str], overrides: list[str]):
    console = Console()
    cfg = Config.from_yaml(config)
    if overrides:
        cfg = cfg.with_overrides(parse_cli_overrides(overrides))
    ensure_ray()
    check_storage(storage)  # a multi-node cluster needs storage and data every node can read
    check_data(str(data))
    name = name or cfg.name
    console.print(f"[bold]raytag train[/] {name}: {cfg.model.name} on {cfg.features.kind}, "
                  f"{len(cfg.cv.folds or range(cfg.cv.n_folds))} fold(s), {cfg.train.num_workers} worker(s)")
    result = fit_pipeline(cfg, data, storage, name)
    console.print(stage_table(result.stages))
    table = Table(title="CV lwlrap by fold")
    table.add_column("fold")
    table.add_column("lwlrap", justify="right")
    for fold, value in result.metrics["fold_lwlrap"].items():
        table.add_row(str(fold), f"{value:.4f}")
    table.add_row("[bold]overall (OOF)[/]", f"[bold]{result.metrics['cv_lwlrap']:.4f}[/]")
    console.print(table)
    if result.metrics.get("test_lwlrap") is not None:
        console.print(f"test lwlrap (reported only, never used to choose): {result.metrics['test_lwlrap']:.4f}")
    console.print(f"checkpoints: {result.run_dir}\npredictions, weights, submission: {result.outputs_dir}")
    return result
