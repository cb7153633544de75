"""`raytag prepare`: check a dataset and build (or reuse) its features, then print a summary."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from raytag.features.store import FeatureStore, prepare_features


def prepare_command(data, config, cache) -> FeatureStore:
    """`raytag prepare`: read the dataset, build or reuse its features, print a summary."""
    done = prepare_features(data, config, cache)
    dataset, store, skipped, skipped_path = done.dataset, done.store, done.skipped, done.skipped_path
    c, f = store.shape
    info = store.build_info
    table = Table(title="raytag prepare", show_header=False)
    table.add_row("dataset", f"{dataset.root} ({dataset.layout}, {len(dataset.classes)} classes)")
    table.add_row("clips with features", f"{len(store)} ({done.hours:.2f} h of audio)")
    table.add_row("features", f"{done.features.kind}: {c} channel(s) x {f} bins, {store.meta['n_frames']} frames")
    table.add_row("time", f"{done.seconds:.1f} s ({info.get('computed', 0)} shards computed, {info.get('reused', 0)} reused)")
    table.add_row("cache", str(store.path))
    table.add_row("skipped by the dataset reader", str(len(dataset.skipped)))
    table.add_row("failed to decode", str(len(store.failed)))
    table.add_row("skipped.csv", f"{len(skipped)} rows (path below)")
    console = Console()
    console.print(table)
    # on a line of its own and never wrapped or cut with "…": the path must be copyable
    console.print(f"skipped clips (file, reason): {skipped_path}", soft_wrap=True, markup=False, highlight=False)
    return store
