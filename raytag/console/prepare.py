"""`raytag prepare`: check a dataset and build (or reuse) its features, then print a summary."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.markup import escape
from rich.table import Table

from raytag.config import Config, members_keep_their_own, parse_cli_overrides
from raytag.console import output_console
from raytag.features.store import (FeatureStore, PreparedFeatures, default_feature_cache, feature_cache_folder,
                                   prepare_features)
from raytag.search.space import SearchSpace, is_space_file, load_space, with_fixed_settings


def prepare_command(data, config: Optional[Path], cache: Optional[str],
                    overrides: Sequence[str] = ()) -> list[FeatureStore]:
    """`raytag prepare`: read the dataset, build or reuse the features a run of `config` (a
    run config or a search space, `overrides` applied) trains on, print a summary."""
    console = output_console()
    cfg, notes = config_to_prepare(config, overrides)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    cache = feature_cache_folder(cache)  # before the data copy: a wrong folder costs nothing
    done = prepare_features(data, cfg, cache)
    console.print(summary_table(done))
    for prepared in done:
        # on a line of its own and never wrapped or cut with "…": the path must be copyable
        console.print(f"skipped clips (file, reason){_for_members(prepared, done)}: {prepared.skipped_path}",
                      soft_wrap=True, markup=False, highlight=False)
    if cache != str(Path(default_feature_cache()).expanduser().absolute()):  # train and tune read the default unless told
        console.print(f"train and tune read these features with --feature-cache {cache} "
                      f"(or RAYTAG_CACHE={cache}); without it they build again in {default_feature_cache()}",
                      soft_wrap=True, markup=False, highlight=False)
    return [prepared.store for prepared in done]


def config_to_prepare(config: Optional[Path], overrides: Sequence[str]) -> tuple[Config, list[str]]:
    """(the config whose features to build, notes on it). A run config is read as `raytag
    train` reads it, `--set` applied; a search space gives its base, `--set` fixed in it as
    `raytag tune --set` does; no file: the built-in config."""
    cli = parse_cli_overrides(list(overrides)) if overrides else {}
    if config is not None and is_space_file(config):
        space = load_space(config)
        space = with_fixed_settings(space, cli) if cli else space
        return space.base_config(), searched_features(space)
    cfg = Config.from_yaml(config) if config is not None else Config()
    if not cli:
        return cfg, []
    cfg = cfg.with_overrides(cli)
    return cfg, members_keep_their_own(cfg, cli)


def searched_features(space: SearchSpace) -> list[str]:
    """A note when the space searches front-end settings: only its base's are built here."""
    keys = [key for key in space.param_keys() if key == "features" or key.startswith("features.")]
    if not keys:
        return []
    return [f"{space.source} searches {', '.join(keys)}: prepare builds the base's features; a trial "
            "with other values builds its own when it starts (once per front end: trials that share "
            "one wait for its build and reuse it)"]


def summary_table(done: list[PreparedFeatures]) -> Table:
    """The dataset, then each front end built: its members, clips, shape, time and store."""
    first = done[0].dataset
    table = Table(title="raytag prepare", show_header=False)
    table.add_row("dataset", f"{first.root} ({first.layout}, {len(first.classes)} classes)")
    if len(done) > 1:
        table.add_row("front ends", f"{len(done)} (the members' features differ)")
    for prepared in done:
        dataset, store = prepared.dataset, prepared.store
        c, f = store.shape
        info = store.build_info
        if len(done) > 1:
            table.add_section()
        if prepared.members:
            table.add_row("for members", ", ".join(prepared.members))
        table.add_row("clips with features", f"{len(store)} ({prepared.hours:.2f} h of audio)")
        table.add_row("features", f"{prepared.features.kind}: {c} channel(s) x {f} bins, {store.meta['n_frames']} frames")
        table.add_row("time", f"{prepared.seconds:.1f} s ({info.get('computed', 0)} shards computed, "
                              f"{info.get('reused', 0)} reused)")
        table.add_row("cache", str(store.path))
        table.add_row("skipped by the dataset reader", str(len(dataset.skipped)))
        table.add_row("failed to decode", str(len(store.failed)))
        table.add_row("skipped.csv", f"{len(prepared.skipped)} rows (path below)")
    return table


def _for_members(prepared: PreparedFeatures, done: list[PreparedFeatures]) -> str:
    return f" of members {', '.join(prepared.members)}" if len(done) > 1 else ""
