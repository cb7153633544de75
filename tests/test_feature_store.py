"""Feature store: built on a tiny FAT2019-layout folder (by Ray tasks in this test process,
which runs Ray; by forked processes in a fresh one), checked against the front end run
directly, cached, resumed, and honest about clips that cannot be decoded."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from raytag.config import FeatureConfig
from raytag.data.audio import load_audio
from raytag.data.layouts import load_dataset
from raytag.features.frontends import build_frontend
from raytag.console.prepare import prepare_command
from raytag.features.store import FeatureStore, FeatureStoreError, build_feature_store

CFG = FeatureConfig(kind="logmel", sample_rate=16000, n_mels=32, n_fft=512, hop_length=160)
CLASSES = ["Bark", "Chirp", "Hum"]
BAD = "nan_clip.wav"  # valid header, only NaN samples: passes the reader, fails decoding


def _tone(sr, seconds, freq, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def make_fat2019(root, sr=22050):
    """A minimal FSDKaggle2019 folder: 4 curated, 3 noisy (one undecodable), 2 test clips."""
    for folder in ("train_curated", "train_noisy", "test"):
        (root / folder).mkdir(parents=True)
    specs = {
        "train_curated": [("c0.wav", "Bark", 1.0), ("c1.wav", "Chirp,Hum", 0.6), ("c2.wav", "Hum", 1.7), ("c3.wav", "Bark", 0.3)],
        "train_noisy": [("n0.wav", "Chirp", 1.2), ("n1.wav", "Hum", 0.8), (BAD, "Bark", 0.5)],
        "test": [("t0.wav", "", 0.9), ("t1.wav", "", 1.4)],
    }
    seed = 0
    for folder, clips in specs.items():
        for fname, _, seconds in clips:
            seed += 1
            wave = _tone(sr, seconds, 200 + 150 * seed, seed)
            if fname == BAD:
                wave[:] = np.nan
                sf.write(root / folder / fname, wave, sr, subtype="FLOAT")
            else:
                sf.write(root / folder / fname, wave, sr, subtype="PCM_16")
    for folder, csv in (("train_curated", "train_curated.csv"), ("train_noisy", "train_noisy.csv")):
        pd.DataFrame([(f, lab) for f, lab, _ in specs[folder]], columns=["fname", "labels"]).to_csv(root / csv, index=False)
    sub = pd.DataFrame({"fname": [f for f, _, _ in specs["test"]], **{c: 0.0 for c in CLASSES}})
    sub.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_fat2019(tmp_path_factory.mktemp("fat")), sample_rate=CFG.sample_rate)


@pytest.fixture(scope="module")
def store(ray_session, dataset, tmp_path_factory):
    return build_feature_store(dataset, CFG, tmp_path_factory.mktemp("cache"), progress=False, chunk_size=3)


def direct(dataset, clip_id, cfg=CFG):
    path = dataset.clips.set_index("clip_id").loc[clip_id, "path"]
    with torch.no_grad():
        return build_frontend(cfg)(torch.from_numpy(load_audio(path, cfg.sample_rate))[None])[0].numpy()


def test_store_holds_the_front_end_output_of_every_decodable_clip(store, dataset):
    good = sorted(c for c in dataset.clips["clip_id"] if not c.endswith(BAD))
    assert store.clip_ids == good and len(store) == 8
    assert store.shape == (1, 32) and store.path.parent.name == CFG.cache_key()
    assert store.meta["n_shards"] == 3  # 9 clips in chunks of 3
    for clip_id in good:
        ref = direct(dataset, clip_id)
        got = store.get(clip_id)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert store.n_frames(clip_id) == ref.shape[-1]
        np.testing.assert_allclose(got, ref, atol=0.06, rtol=1e-3)  # float16 storage


def test_crop_reads_a_window_and_zero_pads_past_the_end(store, dataset):
    clip_id = "curated/c2.wav"
    full = store.get(clip_id)
    n = store.n_frames(clip_id)
    np.testing.assert_array_equal(store.crop(clip_id, 10, 25), full[:, :, 10:35])
    tail = store.crop(clip_id, n - 5, 20)
    assert tail.shape == (1, 32, 20)
    np.testing.assert_array_equal(tail[:, :, :5], full[:, :, n - 5:])
    assert (tail[:, :, 5:] == 0).all()  # padding of a short clip
    assert (store.crop(clip_id, n - 5, 20, pad_value=-80.0)[:, :, 5:] == -80.0).all()
    with pytest.raises(ValueError):
        store.crop(clip_id, -1, 10)


def test_undecodable_clip_is_reported_with_its_reason_and_left_out(store):
    assert list(store.failed.columns) == ["file", "reason"]
    assert store.failed["file"].tolist() == [f"train_noisy/{BAD}"]
    assert "finite" in store.failed["reason"].iloc[0]
    assert "noisy/" + BAD not in store
    with pytest.raises(KeyError, match="failed.csv"):
        store.get("noisy/" + BAD)
    on_disk = pd.read_csv(store.path / "failed.csv")
    assert on_disk["file"].tolist() == [f"train_noisy/{BAD}"]
    index = pd.read_parquet(store.path / "index.parquet")
    assert list(index.columns) == ["clip_id", "shard", "offset", "n_frames", "file"]
    assert not index["clip_id"].str.contains("nan_clip").any()


def test_mean_and_std_are_over_frames_of_non_test_clips(store):
    frames = np.concatenate([store.get(c) for c in store.clip_ids if not c.startswith("test/")], axis=-1)
    np.testing.assert_allclose(store.mean, frames.mean(axis=-1), atol=1e-3)
    np.testing.assert_allclose(store.std, frames.std(axis=-1), atol=1e-3)
    with_test = np.concatenate([store.get(c) for c in store.clip_ids], axis=-1)
    assert not np.allclose(store.mean, with_test.mean(axis=-1), atol=1e-3)


def test_shards_are_opened_lazily_and_the_store_pickles_cheaply(store):
    fresh = FeatureStore.open(store.path)
    assert fresh._shards == {}
    fresh.get("curated/c0.wav")
    assert list(fresh._shards) == [0]
    blob = pickle.dumps(fresh)
    assert len(blob) < 20_000 and b"ShardFile" not in blob
    copy = pickle.loads(blob)
    assert copy._shards == {}
    np.testing.assert_array_equal(copy.get("test/t1.wav"), store.get("test/t1.wav"))
    on_disk = np.load(store.shard_path(0), mmap_mode="r")
    assert on_disk.dtype == np.float16 and on_disk.shape[1:] == (1, 32)  # time-major (T, C, F)


def _mapped_files() -> set[str]:
    return {line.split(None, 5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(None, 5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_reading_maps_no_shard_into_the_process(store):
    """A memory map keeps every page it touched in the reader's RSS (a training worker's
    grew with the store); reads copy the frames out instead."""
    fresh = FeatureStore.open(store.path)
    for clip_id in fresh.clip_ids:
        full = fresh.get(clip_id)
        np.testing.assert_array_equal(fresh.crop(clip_id, 1, 5), full[..., 1:6])
    assert fresh._shards and not any("shard-" in path for path in _mapped_files() if str(store.path) in path)


def test_open_shard_files_are_capped_least_recently_used_first(store, monkeypatch):
    import raytag.features.store as store_module

    monkeypatch.setattr(store_module, "MAX_OPEN_SHARDS", 2)
    fresh = FeatureStore.open(store.path)
    for clip_id in fresh.clip_ids + fresh.clip_ids[::-1]:
        np.testing.assert_array_equal(fresh.get(clip_id), store.get(clip_id))
        assert len(fresh._shards) <= 2
    assert len(set(fresh._shard)) == 3  # the fixture's 9 clips in shards of 3: every read crossed shards


def test_a_shard_cut_short_after_opening_is_an_error_naming_it(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    fresh = FeatureStore.open(copy)
    last = fresh.clip_ids[-1]
    shard = fresh.shard_path(int(fresh._shard[fresh._row(last)]))
    fresh.get(last)  # opened while whole
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 64)
    with pytest.raises(FeatureStoreError, match=f"{shard.name}.*prepare"):
        fresh.get(last)
    with pytest.raises(FeatureStoreError, match="truncated"):
        FeatureStore.open(copy).get(last)


def test_second_build_reuses_every_shard_and_decodes_nothing(store, dataset):
    from raytag.features.store import BUILD_LOCK

    def stamps(path):  # but the build lock, whose holder writes itself into it for a waiter to name
        return {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.name != BUILD_LOCK}

    before = stamps(store.path)
    again = build_feature_store(dataset, CFG, store.path.parent.parent, progress=False, chunk_size=3)
    assert again.build_info["computed"] == 0 and again.build_info["reused"] == 3
    assert again.build_info["task_peak_rss_mb"] is None  # no task ran
    # nothing rewritten, meta.json included: a sweep's trials open the store while others "build" it
    assert stamps(again.path) == before
    assert again.failed["file"].tolist() == store.failed["file"].tolist()  # failures remembered
    np.testing.assert_array_equal(again.get("noisy/n1.wav"), store.get("noisy/n1.wav"))


def test_a_store_whose_files_disagree_with_its_shards_is_finished_again(dataset, tmp_path):
    """Reused shards alone do not vouch for the store: its index and statistics must be what
    they say (here a build killed after recomputing a shard left the old meta.json)."""
    first = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    meta = json.loads((first.path / "meta.json").read_text())
    stale = {**meta, "mean": (np.asarray(meta["mean"]) + 1.0).tolist()}
    (first.path / "meta.json").write_text(json.dumps(stale))
    again = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    assert again.build_info["computed"] == 0
    np.testing.assert_array_equal(again.meta["mean"], meta["mean"])


def test_interrupted_build_resumes_only_the_missing_shards(ray_session, dataset, tmp_path):
    first = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    expected = {c: first.get(c) for c in first.clip_ids}
    first.shard_path(1).unlink()  # as if killed before shard 1 was written
    with open(first.shard_path(2), "r+b") as fh:  # and shard 2 half written
        fh.truncate(100)
    (first.path / "meta.json").unlink()
    with pytest.raises(FeatureStoreError, match="prepare"):
        FeatureStore.open(first.path)
    stamp0 = first.shard_path(0).stat().st_mtime_ns
    resumed = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    assert resumed.build_info["computed"] == 2 and resumed.build_info["reused"] == 1
    assert first.shard_path(0).stat().st_mtime_ns == stamp0
    assert resumed.clip_ids == first.clip_ids
    for clip_id, ref in expected.items():
        np.testing.assert_array_equal(resumed.get(clip_id), ref)


def test_changed_settings_or_audio_are_not_served_from_the_cache(ray_session, dataset, tmp_path):
    first = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    mfcc = dataclasses.replace(CFG, kind="mfcc", n_mfcc=13, deltas=1)
    other = build_feature_store(dataset, mfcc, tmp_path, progress=False, chunk_size=3)
    assert other.path.parent.name == mfcc.cache_key() != first.path.parent.name and other.shape == (2, 13)
    assert other.build_info["computed"] == 3
    np.testing.assert_allclose(other.get("test/t0.wav"), direct(dataset, "test/t0.wav", mfcc), atol=0.06, rtol=1e-3)
    # rewrite one curated clip: only its shard is recomputed
    path = dataset.clips.set_index("clip_id").loc["curated/c0.wav", "path"]
    sf.write(path, _tone(22050, 0.7, 950, 99), 22050, subtype="PCM_16")
    again = build_feature_store(dataset, CFG, tmp_path, progress=False, chunk_size=3)
    assert again.build_info["computed"] == 1
    np.testing.assert_allclose(again.get("curated/c0.wav"), direct(dataset, "curated/c0.wav"), atol=0.06, rtol=1e-3)


def _build_here(dataset, cache, cfg=CFG):
    """A build in this process (no Ray, no fork): quick, and monkeypatches reach it."""
    return build_feature_store(dataset, cfg, cache, progress=False, chunk_size=3, workers=1)


def _add_clip(root, fname, label="Bark", seconds=0.8, folder="train_curated"):
    sf.write(root / folder / fname, _tone(22050, seconds, 440, 77), 22050, subtype="PCM_16")
    csv = root / f"{folder}.csv"
    table = pd.read_csv(csv, dtype=str)
    pd.concat([table, pd.DataFrame([(fname, label)], columns=["fname", "labels"])]).to_csv(csv, index=False)
    return load_dataset(root, sample_rate=CFG.sample_rate)


def _remove_clip(root, folder, fname):
    (root / folder / fname).unlink()
    csv = root / f"{folder}.csv"
    table = pd.read_csv(csv, dtype=str)
    table[table["fname"] != fname].to_csv(csv, index=False)
    return load_dataset(root, sample_rate=CFG.sample_rate)


def _same_frames(store, expected, but=()):
    for clip_id in store.clip_ids:
        if clip_id not in but:
            np.testing.assert_array_equal(store.get(clip_id), expected[clip_id])


def test_a_clip_added_or_removed_recomputes_only_the_shards_around_it(tmp_path):
    """Shards end where their clips say (shard_bounds), not at every chunk_size-th clip, and
    are named by their clips: one clip added (sorting first, or in the middle) or removed
    changes the shard it falls in and at most the next, not every shard after it (~190 of
    them on FSDKaggle2019)."""
    root = make_fat2019(tmp_path / "data")
    first = _build_here(load_dataset(root, sample_rate=CFG.sample_rate), tmp_path / "cache")
    expected = {c: first.get(c) for c in first.clip_ids}
    assert first.build_info["chunks"] == 3
    steps = [("curated/a.wav", lambda: _add_clip(root, "a.wav")),  # sorts first
             ("noisy/m.wav", lambda: _add_clip(root, "m.wav", folder="train_noisy")),  # in the middle
             ("", lambda: _remove_clip(root, "train_curated", "c1.wav"))]
    for added, change in steps:
        again = _build_here(change(), tmp_path / "cache")
        assert again.build_info["computed"] <= 2 and again.build_info["reused"] >= again.build_info["chunks"] - 2
        _same_frames(again, expected, but={added})
        if added:
            expected[added] = again.get(added)
    assert "curated/c1.wav" not in again and {"curated/a.wav", "noisy/m.wav"} <= set(again.clip_ids)


def test_a_clip_missing_for_one_build_finds_its_shard_again_when_it_is_back(tmp_path):
    """A file that could not be listed for one build (an NFS hiccup at the header check)
    changes its shard for that build; the next, with it back, reuses the shard it was in,
    whose sidecar the build without it kept (the index it replaced names that shard's file),
    however long ago the store was built."""
    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    expected = {c: first.get(c) for c in first.clip_ids}
    _backdate(first.path.glob("shard-*"), 86400)  # built yesterday: older than STALE_AFTER_S
    without = dataclasses.replace(dataset, clips=dataset.clips[dataset.clips["clip_id"] != "noisy/n0.wav"])
    assert _build_here(without, tmp_path / "cache").build_info["computed"] == 1
    back = _build_here(dataset, tmp_path / "cache")
    assert back.build_info["computed"] == 0 and back.clip_ids == first.clip_ids
    _same_frames(back, expected)


def test_shard_bounds_keep_shards_near_chunk_size_and_a_change_local():
    """On 640 random clip_ids in shards of about 16: sizes between half and twice that, the
    mean near it, and one clip added (anywhere, or sorting first) or removed changes at
    most two shards in nearly every case (a boundary cut at the most moves on until the
    next one the clips make)."""
    import random

    from raytag.features.store import shard_bounds

    rng = random.Random(0)

    def random_id():
        return f"{rng.choice(['curated', 'noisy', 'test'])}/{rng.getrandbits(40):010x}.wav"

    def shards(ids):
        return [tuple(ids[start:stop]) for start, stop in shard_bounds(ids, 16)]

    ids = sorted({random_id() for _ in range(640)})
    before = shards(ids)
    sizes = [len(shard) for shard in before]
    assert [c for shard in before for c in shard] == ids  # every clip once, in order
    assert min(sizes) >= 8 and max(sizes[:-1]) <= 32 and sizes[-1] < 32 + 8  # the last took a short tail
    assert 14 <= np.mean(sizes) <= 18
    changed = []
    for _ in range(100):
        added, removed = sorted([*ids, random_id()]), ids[:(i := rng.randrange(len(ids)))] + ids[i + 1:]
        changed += [len(set(shards(new)) - set(before)) for new in (added, removed, sorted([*ids, "a/first.wav"]))]
    assert np.mean(changed) < 1.3 and np.mean(np.asarray(changed) <= 2) >= 0.95
    assert shard_bounds(ids[:5], 1) == [(i, i + 1) for i in range(5)] and shard_bounds([], 16) == []


def test_a_reader_opened_before_a_rebuild_still_reads_its_own_clips(tmp_path):
    """A rebuild that moves clips between shards must not serve a reader with the old
    index another clip's frames (it wrote the shard files in place)."""
    root = make_fat2019(tmp_path / "data")
    first = _build_here(load_dataset(root, sample_rate=CFG.sample_rate), tmp_path / "cache")
    expected = {c: first.get(c) for c in first.clip_ids}
    before = FeatureStore.open(first.path)  # no shard opened yet
    pickled = pickle.dumps(before)
    # "curated/a.wav" sorts first: the first shard's clips move to other offsets in a new file
    rebuilt = _build_here(_add_clip(root, "a.wav"), tmp_path / "cache")
    assert rebuilt.build_info["computed"] == 1 and "curated/a.wav" in rebuilt
    for reader in (before, pickle.loads(pickled)):
        for clip_id, ref in expected.items():
            np.testing.assert_array_equal(reader.get(clip_id), ref)
    for clip_id in rebuilt.clip_ids:
        if clip_id != "curated/a.wav":
            np.testing.assert_array_equal(rebuilt.get(clip_id), expected[clip_id])


def test_a_reader_two_rebuilds_behind_gets_an_error_not_wrong_frames(tmp_path):
    root = make_fat2019(tmp_path / "data")
    first = _build_here(load_dataset(root, sample_rate=CFG.sample_rate), tmp_path / "cache")
    stale = FeatureStore.open(first.path)
    for path in first.path.glob("shard-*"):  # written an hour ago: clearly older than the next builds
        os.utime(path, (path.stat().st_atime - 3600, path.stat().st_mtime - 3600))
    # both join the first shard (c0, c1, c2), which each build replaces with a new one
    _build_here(_add_clip(root, "c15.wav"), tmp_path / "cache")
    newest = _build_here(_add_clip(root, "c16.wav"), tmp_path / "cache")
    with pytest.raises(FeatureStoreError, match="rebuilt.*open the store again"):
        stale.get("curated/c0.wav")
    np.testing.assert_array_equal(stale.get("test/t1.wav"), newest.get("test/t1.wav"))  # its shard is the same
    on_disk = {p.name for p in newest.path.glob("shard-*.npy")}
    assert set(newest._files.values()) <= on_disk and len(on_disk) <= 2 * len(newest._files)


def _backdate_shard_files(folder, seconds=3600):
    """Written `seconds` ago: clearly older than any build's grace period."""
    for npy in folder.glob("shard-*.npy"):
        os.utime(npy, (npy.stat().st_atime - seconds, npy.stat().st_mtime - seconds))


def _backdate(paths, seconds):
    for path in paths:
        os.utime(path, (path.stat().st_atime - seconds, path.stat().st_mtime - seconds))


def test_a_shard_whose_clips_all_failed_is_kept_and_not_decoded_again(tmp_path):
    """Its .npy (empty) is in no index, only in its sidecar: a rebuild must not delete it,
    or the build after decodes that shard again."""
    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)

    def build():  # one clip a shard: the undecodable clip is a shard of its own
        return build_feature_store(dataset, CFG, tmp_path / "cache", progress=False, chunk_size=1, workers=1)

    first = build()
    _backdate_shard_files(first.path)
    (first.path / "meta.json").unlink()  # the next build finishes the store again (and tidies)
    assert build().build_info["computed"] == 0
    assert build().build_info["computed"] == 0


def test_a_rebuild_deletes_only_unnamed_shard_files_older_than_the_grace_period(tmp_path):
    """An unnamed file a few minutes old may be a concurrent build's, started earlier and
    not yet indexed: only an old one is deleted."""
    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    recent, old = first.path / "shard-00000-0123456789abcdef.npy", first.path / "shard-00000-fedcba9876543210.npy"
    for path, age in ((recent, 60), (old, 3600)):
        path.write_bytes(b"another build's shard")
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    (first.path / "meta.json").unlink()
    _build_here(dataset, tmp_path / "cache")
    assert recent.exists() and not old.exists()


def test_a_new_decoder_or_front_end_version_recomputes_every_shard(tmp_path, monkeypatch):
    """Shards made by older decoding code must not be served once FEATURES_VERSION moves on."""
    import raytag.features.store as store_module

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    monkeypatch.setattr(store_module, "FEATURES_VERSION", store_module.FEATURES_VERSION + 1)
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == first.build_info["chunks"] == 3
    assert again.meta["key"] != first.meta["key"] and again.path == first.path


def test_a_clip_that_could_not_be_read_once_is_tried_again_by_the_next_build(tmp_path, monkeypatch):
    """A passing read error (libsndfile's "System error.", an NFS hiccup) must not be
    remembered as that clip's verdict for good."""
    import raytag.features.store as store_module
    from raytag.data.audio import AudioReadError

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    flaky = dataset.clips.set_index("clip_id").loc["curated/c1.wav", "path"]
    calls = []

    def fails_once(path, *args, **kwargs):
        if str(path) == flaky and not calls:
            calls.append(path)
            raise AudioReadError(path, "cannot decode: Error opening: System error.")
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "load_audio", fails_once)
    first = _build_here(dataset, tmp_path / "cache")
    assert "train_curated/c1.wav" in first.failed["file"].tolist() and "curated/c1.wav" not in first
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 1  # only the shard that left it out
    assert "curated/c1.wav" in again and again.failed["file"].tolist() == [f"train_noisy/{BAD}"]
    assert pd.read_csv(again.path / "failed.csv")["file"].tolist() == [f"train_noisy/{BAD}"]
    np.testing.assert_allclose(again.get("curated/c1.wav"), direct(dataset, "curated/c1.wav"), atol=0.06, rtol=1e-3)
    assert _build_here(dataset, tmp_path / "cache").build_info["computed"] == 0  # bad samples are not retried


def _counting_decodes(monkeypatch) -> list:
    """The paths the store decodes from now on, in order."""
    import raytag.features.store as store_module

    decoded = []

    def counted(path, *args, **kwargs):
        decoded.append(str(path))
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "load_audio", counted)
    return decoded


def test_a_damaged_file_fails_once_and_is_not_decoded_again(tmp_path, monkeypatch):
    """A file libsndfile cannot make sense of fails the same way every time: the next build
    remembers it (no audio work), as it does a clip with bad samples."""
    root = make_fat2019(tmp_path / "data")
    dataset = load_dataset(root, sample_rate=CFG.sample_rate)
    (root / "train_curated" / "c1.wav").write_bytes(b"RIFF, then nothing audio-like" * 20)  # damaged after the listing
    first = _build_here(dataset, tmp_path / "cache")
    assert "cannot decode" in dict(first.failed.itertuples(index=False))["train_curated/c1.wav"]
    decoded = _counting_decodes(monkeypatch)
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 0 and decoded == []


def test_running_out_of_memory_on_one_clip_is_that_clips_failure(tmp_path, monkeypatch):
    import raytag.features.store as store_module

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    huge = dataset.clips.set_index("clip_id").loc["noisy/n0.wav", "path"]

    def out_of_memory_on_huge(path, *args, **kwargs):
        if str(path) == huge:
            raise MemoryError()
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "load_audio", out_of_memory_on_huge)
    store = _build_here(dataset, tmp_path / "cache")
    failed = dict(store.failed.itertuples(index=False))
    assert "out of memory" in failed["train_noisy/n0.wav"] and len(store) == 7
    # the next build does not decode it in this process, where a MemoryError would fail it
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 0 and "out of memory" in dict(again.failed.itertuples(index=False))["train_noisy/n0.wav"]
    # a sidecar that does list it (an older build's) counts it as still failing
    assert not store_module._read_failures_decode_now({"retry": [huge], "shard": 1}, CFG)


def test_a_shard_whose_process_died_is_named_with_its_files(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from raytag.errors import RaytagError
    from raytag.features.store import _failed

    rows = [{"file": f"train_noisy/n{i}.wav"} for i in range(7)]
    err = _failed(tmp_path, 4, rows, BrokenProcessPool("A process in the process pool was terminated abruptly"))
    assert isinstance(err, RaytagError)
    text = str(err)
    assert "shard 4" in text and "terminated abruptly" in text and "run the same command again" in text
    assert "train_noisy/n0.wav, train_noisy/n1.wav" in text and "n4.wav and 2 more" in text and "n5.wav" not in text


def test_datasets_sharing_a_cache_folder_get_separate_stores(ray_session, dataset, tmp_path):
    other_root = make_fat2019(tmp_path / "other")
    other = load_dataset(other_root, sample_rate=CFG.sample_rate)
    a = build_feature_store(dataset, CFG, tmp_path / "cache", progress=False, chunk_size=3)
    b = build_feature_store(other, CFG, tmp_path / "cache", progress=False, chunk_size=3)
    assert a.path != b.path and a.path.parent == b.path.parent
    again = build_feature_store(dataset, CFG, tmp_path / "cache", progress=False, chunk_size=3)
    assert again.path == a.path and again.build_info["computed"] == 0


BUILD_IN_FRESH_PROCESS = """
import json, sys
from raytag.config import FeatureConfig
from raytag.data.layouts import load_dataset
from raytag.features.store import build_feature_store
cfg = FeatureConfig(**json.loads(sys.argv[1]))
store = build_feature_store(load_dataset(sys.argv[2], sample_rate=cfg.sample_rate), cfg, sys.argv[3],
                            progress=True, chunk_size=3, workers=int(sys.argv[4]))
print(json.dumps({"path": str(store.path), "ran_in": store.build_info["ran_in"]}))
"""


@pytest.mark.parametrize("workers", [2, 1])
def test_a_process_without_ray_builds_the_same_store_in_forked_processes(ray_session, tmp_path, workers):
    root = make_fat2019(tmp_path / "data")
    by_ray = build_feature_store(load_dataset(root, sample_rate=CFG.sample_rate), CFG, tmp_path / "ray",
                                 progress=False, chunk_size=3)
    assert by_ray.build_info["ran_in"] == "ray tasks"  # Ray runs in this process: it must not fork
    out = subprocess.run([sys.executable, "-c", BUILD_IN_FRESH_PROCESS, json.dumps(dataclasses.asdict(CFG)),
                          str(root), str(tmp_path / "fresh"), str(workers)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["ran_in"] == ("2 forked processes" if workers == 2 else "this process")
    forked = FeatureStore.open(fresh["path"])
    assert forked.clip_ids == by_ray.clip_ids and len(forked) == 8
    for clip_id in forked.clip_ids:
        np.testing.assert_array_equal(forked.get(clip_id), by_ray.get(clip_id))
    np.testing.assert_array_equal(forked.mean, by_ray.mean)
    np.testing.assert_array_equal(forked.std, by_ray.std)
    assert forked.failed["file"].tolist() == by_ray.failed["file"].tolist() == [f"train_noisy/{BAD}"]


def _add_older_format_shard(folder: Path, age=86400) -> list[Path]:
    """A shard of a store cut every chunk_size-th clip (before shard_id), `age` seconds old,
    as the build that replaced that store leaves it: its .npy and its sidecar naming it."""
    npy, side = folder / "shard-00000-0123456789abcdef.npy", folder / "shard-00000.json"
    npy.write_bytes(b"an older raytag's shard")
    side.write_text(json.dumps({"shard": 0, "file": npy.name}))
    _backdate([npy, side], age)
    return [npy, side]


def test_an_older_formats_files_are_deleted_by_a_build_that_computes_nothing_a_day_on(tmp_path):
    """After an upgrade the older store's files stay beside the new one for readers that
    opened it; a build that reuses every shard (and writes no index) deletes them once the
    new index is a day old, not never."""
    from raytag.features.store import OLDER_FORMAT_KEPT_S

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    older = _add_older_format_shard(first.path)
    _backdate(first.path.glob("shard-*"), 3600)
    assert _build_here(dataset, tmp_path / "cache").build_info["computed"] == 0
    assert all(path.exists() for path in older)  # the new index is young: a reader may hold them
    _backdate([first.path / "index.parquet"], OLDER_FORMAT_KEPT_S + 60)
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 0 and not any(path.exists() for path in older)
    assert {p.name for p in again.path.glob("shard-*.npy")} == set(first._files.values())
    _same_frames(again, {c: first.get(c) for c in first.clip_ids})


def test_open_refuses_a_folder_that_is_not_a_store(tmp_path):
    with pytest.raises(FeatureStoreError, match="meta.json"):
        FeatureStore.open(tmp_path)


def test_opening_an_older_format_says_a_build_rebuilds_it(tmp_path):
    """A build replaces an older format by itself: nothing needs deleting by hand."""
    (tmp_path / "meta.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(FeatureStoreError, match=r"format 1.*run `raytag prepare` \(or any command that builds features\) to rebuild it"):
        FeatureStore.open(tmp_path)


def test_prepare_command_builds_and_writes_skipped_csv(ray_session, tmp_path, capsys):
    root = make_fat2019(tmp_path / "data")
    (root / "train_curated" / "unlisted.wav").write_bytes(b"not listed in the csv")
    [store] = prepare_command(data=root, config=None, cache=tmp_path / "cache")
    skipped = pd.read_csv(store.path / "skipped.csv")
    assert set(skipped["file"]) == {"train_curated/unlisted.wav", f"train_noisy/{BAD}"}
    out = capsys.readouterr().out
    assert "skipped.csv" in out and "failed to decode" in out and str(len(store)) in out
    assert f"--feature-cache {tmp_path / 'cache'}" in " ".join(out.split())  # not the default: say how to read it


# ----------------------------------------------------------------------------- builders of one store
def test_builders_of_one_store_that_start_together_compute_each_shard_once(tmp_path, monkeypatch):
    """A sweep's trials of the same features start together: the second builder waits for
    the first (the store's build lock), then reuses its shards instead of computing them too."""
    import threading

    import raytag.features.store as store_module

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    compute = store_module._compute_shard
    both_computing = threading.Barrier(2, timeout=2.0)  # met only if both compute at once

    def compute_beside_the_other(*args, **kwargs):
        try:
            both_computing.wait()
        except threading.BrokenBarrierError:  # the other builder is not computing: go on alone
            pass
        return compute(*args, **kwargs)

    monkeypatch.setattr(store_module, "_compute_shard", compute_beside_the_other)
    built = []
    builders = [threading.Thread(target=lambda: built.append(_build_here(dataset, tmp_path / "cache")))
                for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    assert len(built) == 2
    n_chunks = built[0].build_info["chunks"]
    assert n_chunks == 3  # 9 clips in chunks of 3
    assert sum(b.build_info["computed"] for b in built) == n_chunks
    assert sorted(b.build_info["reused"] for b in built) == [0, n_chunks]
    assert built[0].clip_ids == built[1].clip_ids


def test_a_builder_waiting_for_another_says_so(tmp_path, capsys):
    import threading

    from raytag.features.store import BUILD_LOCK, exclusive_lock

    lock = tmp_path / BUILD_LOCK
    held, release = threading.Event(), threading.Event()

    def hold():
        with exclusive_lock(lock, waiting="unused"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    with exclusive_lock(lock, waiting="features: another process is building it; waiting", say=True):
        assert release.is_set()  # entered only once the holder let go
    holder.join()
    said = " ".join(capsys.readouterr().err.split())
    assert "another process is building it; waiting" in said
    # who holds it, and what a stopped (Ctrl-Z) or hung holder means: it waits for that process
    assert f"held by pid {os.getpid()} on " in said and f"keeps {lock} until it ends" in said


# ----------------------------------------------------------------------------- a lock that cannot be had
@pytest.fixture
def shared_tmp():
    """A folder under /tmp that another user may enter (pytest's tmp_path is this user's only)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="raytag-shared-"))
    base.chmod(0o755)
    yield base
    for path in [base, *base.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)  # so a non-root test run can delete what it made read-only
    shutil.rmtree(base)


def _read_only(folder: Path):
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


_BUILD_IN_A_CHILD = """
import dataclasses, json, sys
from raytag.config import FeatureConfig
from raytag.data.layouts import load_dataset
from raytag.features.store import build_feature_store
cfg = FeatureConfig(**json.loads(sys.argv[3]))
dataset = load_dataset(sys.argv[1], sample_rate=cfg.sample_rate)
try:
    print(json.dumps(build_feature_store(dataset, cfg, sys.argv[2], progress=False, chunk_size=3, workers=1).build_info))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}))
"""


def _build_as_another_user(data: Path, cache: Path) -> dict:
    """build_info of a build by a user who may not write the cache (as root: nobody), or the
    error it ended with ({error, message})."""
    import shutil

    command = [sys.executable, "-c", _BUILD_IN_A_CHILD, str(data), str(cache), json.dumps(dataclasses.asdict(CFG))]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no other user to build as")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": "/tmp"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cache_this_user_may_only_read_serves_a_build_that_reuses_every_shard(shared_tmp):
    """A colleague's prepared cache, a read-only mount: a build that reuses every shard writes
    nothing, so it needs no write access, not even to the build lock's file."""
    root = make_fat2019(shared_tmp / "data")
    built = _build_here(load_dataset(root, sample_rate=CFG.sample_rate), shared_tmp / "cache")
    older = _add_older_format_shard(built.path)  # due to be deleted, but not by this user
    _backdate([built.path / "index.parquet"], 2 * 86400)
    _read_only(shared_tmp / "cache")
    info = _build_as_another_user(root, shared_tmp / "cache")
    assert "error" not in info, info
    assert info["computed"] == 0 and info["reused"] == built.build_info["chunks"] == 3
    assert all(path.exists() for path in older)


def test_a_build_that_must_write_into_a_cache_it_cannot_write_says_where_and_what_to_do(shared_tmp):
    root = make_fat2019(shared_tmp / "data")
    _build_here(load_dataset(root, sample_rate=CFG.sample_rate), shared_tmp / "cache")
    _add_clip(root, "c9.wav")  # a new clip: a shard to compute
    _read_only(shared_tmp / "cache")
    info = _build_as_another_user(root, shared_tmp / "cache")
    assert info.get("error") == "StorageError", info
    assert f"cannot write the feature store {shared_tmp / 'cache'}" in info["message"]
    assert "shards must be computed" in info["message"] and "--feature-cache" in info["message"]


def test_a_file_system_without_flock_builds_without_the_lock(tmp_path, monkeypatch, caplog):
    """Lustre without -o flock, some FUSE file systems: flock fails (ENOLCK, ENOSYS); the
    build goes on without the lock, as builds did before it (shards are content-addressed)."""
    import errno
    import fcntl
    import logging

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    with caplog.at_level(logging.WARNING, logger="raytag.features"):
        store = _build_here(dataset, tmp_path / "cache")
    assert store.build_info["computed"] == 3 and len(store) > 0
    assert "cannot lock it (No locks available); going on without the lock" in caplog.text


def test_a_lock_file_in_a_group_shared_cache_is_writable_by_the_group(tmp_path):
    """A cache shared by a group (chmod g+ws): the umask would leave the group a lock file it
    cannot open for writing, which flock over NFS needs."""
    from raytag.features.store import BUILD_LOCK, exclusive_lock

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    old_umask = os.umask(0o022)  # the common umask, which alone would make the file 0644
    try:
        with exclusive_lock(shared / BUILD_LOCK, waiting="unused"):
            pass
    finally:
        os.umask(old_umask)
    assert (shared / BUILD_LOCK).stat().st_mode & 0o777 == 0o664


def test_a_feature_cache_that_cannot_be_created_is_a_storage_error_naming_it(tmp_path):
    """The store's folder, or a Train worker's node cache, under a path that cannot be made (a
    file in the way here; a parent this user may not write): what to do, not a traceback."""
    from types import SimpleNamespace

    from raytag.errors import StorageError
    from raytag.training.worker import open_node_store

    root = make_fat2019(tmp_path / "data")
    (tmp_path / "a file").write_text("")
    cache = tmp_path / "a file" / "cache"
    with pytest.raises(StorageError, match=r"cannot write the feature store .*a file/cache.*--feature-cache"):
        _build_here(load_dataset(root, sample_rate=CFG.sample_rate), cache)
    plan = SimpleNamespace(store_path=str(tmp_path / "not on this node"), feature_cache=str(cache),
                           data_ref=str(root), config=SimpleNamespace(features=CFG))
    with pytest.raises(StorageError, match=r"cannot create the feature cache .*a file/cache on this node"):
        open_node_store(plan)


@pytest.mark.timeout(120)
def test_a_train_worker_waits_a_bounded_time_for_another_builder_of_its_nodes_store(tmp_path, monkeypatch, caplog):
    """A trial driver on this node (trials_on_head: false) holds the store's lock while its
    Ray tasks wait for CPUs that this worker's placement group holds: the worker must not wait
    for that lock for ever, but build beside it (in this process, as it builds anyway)."""
    import logging
    from types import SimpleNamespace

    import raytag.training.worker as worker
    from raytag.features.store import BUILD_LOCK, store_dir

    root = make_fat2019(tmp_path / "data")
    dataset = load_dataset(root, sample_rate=CFG.sample_rate)
    lock = store_dir(tmp_path / "cache", CFG, dataset.root) / BUILD_LOCK
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\ntime.sleep(600)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(worker, "NODE_STORE_LOCK_WAIT_S", 1.0)
        plan = SimpleNamespace(store_path=str(tmp_path / "the driver's store, not on this node"),
                               feature_cache=str(tmp_path / "cache"), data_ref=str(root),
                               config=SimpleNamespace(features=CFG), curated_ids=[], noisy_ids=[], test_ids=[])
        with caplog.at_level(logging.WARNING, logger="raytag.features"):
            store = worker.open_node_store(plan)
        assert holder.poll() is None  # the other builder still holds its lock
        assert store.clip_ids == sorted(c for c in dataset.clips["clip_id"] if not c.endswith(BAD))
        assert "still held it after 1 s" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_builder_beside_another_reuses_the_shards_the_other_finishes_meanwhile(tmp_path, monkeypatch):
    """A Train worker whose wait for the lock ran out builds one shard after another beside
    the lock's holder: a shard the holder finishes meanwhile is taken, not computed again."""
    import raytag.features.store as store_module

    dataset = load_dataset(make_fat2019(tmp_path / "data"), sample_rate=CFG.sample_rate)
    clips = dataset.clips.sort_values("clip_id", kind="stable")
    chunks = [clips.iloc[start:stop] for start, stop in store_module.shard_bounds(clips["clip_id"].tolist(), 3)]
    shards = [store_module.shard_id(chunk["clip_id"].tolist()) for chunk in chunks]
    assert len(shards) == 3
    compute = store_module._compute_shard
    computed_here = []

    def the_other_builder_finishes_shard_1_meanwhile(shard, rows, *args, **kwargs):
        out = compute(shard, rows, *args, **kwargs)
        computed_here.append(shard)
        if shard == shards[0]:  # the other builder writes shard 1 before this one gets to it
            other_rows = [store_module._clip_row(r, dataset.root) for r in chunks[1].itertuples(index=False)]
            compute(shards[1], other_rows, [r["signature"] for r in other_rows], *args[1:], **kwargs)
        return out

    monkeypatch.setattr(store_module, "_compute_shard", the_other_builder_finishes_shard_1_meanwhile)
    store = _build_here(dataset, tmp_path / "cache")
    assert computed_here == [shards[0], shards[2]]
    assert (store.build_info["computed"], store.build_info["reused"]) == (2, 1)
    assert store.clip_ids == sorted(c for c in dataset.clips["clip_id"] if not c.endswith(BAD))


# ----------------------------------------------------------------------------- what prepare builds
SPACE = """name: tiny
base:
  features.n_mels: 24
space:
  features.deltas: {choice: [0, 1]}
"""


def test_prepare_builds_a_search_spaces_base_features_with_set_fixed_in_it(ray_session, tmp_path, capsys):
    root = make_fat2019(tmp_path / "data")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    [store] = prepare_command(data=root, config=space, cache=tmp_path / "cache")
    assert store.feature_config.n_mels == 24 and store.feature_config.deltas == 0
    assert "searches features.deltas" in " ".join(capsys.readouterr().out.split())
    [store] = prepare_command(data=root, config=space, cache=tmp_path / "cache", overrides=["features.n_mels=20"])
    assert store.feature_config.n_mels == 20  # as `raytag tune --set` fixes it for every trial


def test_prepare_applies_set_to_a_run_config(ray_session, tmp_path):
    root = make_fat2019(tmp_path / "data")
    [store] = prepare_command(data=root, config=None, cache=tmp_path / "cache",
                              overrides=["features.n_mels=20", "features.hop_length=256"])
    assert (store.feature_config.n_mels, store.feature_config.hop_length) == (20, 256)


def test_prepare_builds_each_members_front_end_and_says_for_whom(ray_session, tmp_path, capsys):
    from raytag.config import Config

    root = make_fat2019(tmp_path / "data")
    config = tmp_path / "members.yaml"
    config.write_text(Config.from_dict({
        "features": {"n_mels": 24},
        "members": [{"name": "narrow", "set": {"features.n_mels": 20}},
                    {"name": "plain", "set": {"model.width": 8}},
                    {"name": "wide", "set": {"model.width": 64}}],
    }).to_yaml())
    stores = prepare_command(data=root, config=config, cache=tmp_path / "cache")
    assert sorted(s.feature_config.n_mels for s in stores) == [20, 24]  # one per distinct front end
    out = " ".join(capsys.readouterr().out.split())
    assert "narrow" in out and "plain, wide" in out
    assert all((s.path / "skipped.csv").is_file() for s in stores)



def test_a_file_replaced_keeping_its_size_and_mtime_is_computed_again(tmp_path):
    """Audio of the same length and format has the same size, and cp -p, rsync -a or an
    archive extracted again keep the mtime: the file's change time moved, so it is hashed,
    and its bytes are not those its shard was computed from."""
    root = make_fat2019(tmp_path / "data")
    dataset = load_dataset(root, sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    path = root / "train_curated" / "c0.wav"
    before, stat = first.get("curated/c0.wav"), os.stat(path)
    sf.write(path, _tone(22050, 1.0, 1234, 99), 22050, subtype="PCM_16")  # other audio, same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 1
    assert not np.array_equal(again.get("curated/c0.wav"), before)
    np.testing.assert_allclose(again.get("curated/c0.wav"), direct(dataset, "curated/c0.wav"), atol=0.06, rtol=1e-3)


def _files_of_dataset(root):
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file()]


def test_a_change_of_status_alone_hashes_the_files_and_reuses_every_shard(tmp_path, monkeypatch, caplog):
    """chown -R (even to the owner already), chmod, a hard link (rsnapshot, cp -al) or a
    rename move a file's change time, not its audio: each such file is hashed once, its shard
    reused, and the sidecar keeps the new change time, so the next build hashes nothing (a
    cache this user may only read keeps the old one, and says so at INFO: the next build
    hashes them again)."""
    import errno
    import logging

    import raytag.features.store as store_module

    root = make_fat2019(tmp_path / "data")
    dataset = load_dataset(root, sample_rate=CFG.sample_rate)
    first = _build_here(dataset, tmp_path / "cache")
    for path in _files_of_dataset(root):  # what chown -R does to files already owned
        st = os.stat(path)
        os.chown(path, st.st_uid, st.st_gid)
    os.link(root / "train_curated" / "c1.wav", tmp_path / "snapshot-c1.wav")
    with monkeypatch.context() as read_only:
        read_only.setattr(store_module, "write_local_atomically",
                          lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
        caplog.set_level(logging.INFO, logger="raytag.features")
        assert _build_here(dataset, tmp_path / "cache").build_info["computed"] == 0
    assert "change times (Permission denied)" in caplog.text and "cannot record shard " in caplog.text
    again = _build_here(dataset, tmp_path / "cache")
    assert again.build_info["computed"] == 0 and again.clip_ids == first.clip_ids
    assert again.identity(again.clip_ids) == first.identity(first.clip_ids)
    hashed = []
    digest = store_module.file_digest
    monkeypatch.setattr(store_module, "file_digest", lambda path: hashed.append(path) or digest(path))
    assert _build_here(dataset, tmp_path / "cache").build_info["computed"] == 0 and hashed == []


def test_a_data_copy_made_again_at_the_same_path_reuses_every_shard(tmp_path):
    """Each node copies a data URI with its own change time, at the same path: with a shared
    feature cache, a change time in the signature would have each node compute every shard
    again in turn. A copy keeps its source's size and mtime, and those decide."""
    import shutil

    from raytag.cluster import materialize_data

    make_fat2019(tmp_path / "bucket")
    uri = (tmp_path / "bucket").as_uri()
    copy = materialize_data(uri, tmp_path / "node-data")
    first = _build_here(load_dataset(copy, sample_rate=CFG.sample_rate), tmp_path / "cache")
    shutil.rmtree(copy)  # another node's copy, at the same path
    assert materialize_data(uri, tmp_path / "node-data") == copy
    again = _build_here(load_dataset(copy, sample_rate=CFG.sample_rate), tmp_path / "cache")
    assert again.build_info["computed"] == 0 and again.clip_ids == first.clip_ids


def test_identity_names_the_key_and_the_audio_the_same_on_every_node(tmp_path):
    """FeatureStore.identity (a run's plan.features): the store's key and the contents of each
    clip's audio file, so a copy of the data elsewhere (another node), with its mtimes kept or
    not, has the same, other audio or another front end does not; a resume is refused on them
    (run_settings) and allowed on a copy that did not keep the mtimes."""
    import shutil
    from types import SimpleNamespace

    from raytag.config import Config, ConfigError
    from raytag.training.run_settings import check_run_settings

    root = make_fat2019(tmp_path / "data")
    dataset = load_dataset(root, sample_rate=CFG.sample_rate)
    store = _build_here(dataset, tmp_path / "cache")
    ids = store.clip_ids
    same = store.identity(ids)
    assert same.startswith("blake2b:") and f"audio contents of {len(ids)} clips, {store.meta['key']})" in same
    assert _build_here(dataset, tmp_path / "cache").identity(ids) == same
    assert FeatureStore.open(store.path).identity(ids) is None and pickle.loads(pickle.dumps(store)).identity(ids) is None
    elsewhere = shutil.copytree(root, tmp_path / "node2" / "data")  # copy2: mtimes kept, change times new
    assert _build_here(load_dataset(elsewhere, sample_rate=CFG.sample_rate), tmp_path / "cache2").identity(ids) == same
    mfcc = dataclasses.replace(CFG, kind="mfcc", n_mfcc=13)
    assert _build_here(dataset, tmp_path / "cache", mfcc).identity(ids) != same

    def plan(store):
        return SimpleNamespace(classes=CLASSES, curated_ids=ids, noisy_ids=[], test_ids=[],
                               curated_y=np.zeros((len(ids), 3), np.float32), noisy_y=np.zeros((0, 3), np.float32),
                               features_id=store.identity(ids))

    run = tmp_path / "run"
    check_run_settings(str(run), Config(), plan(store))
    (run / "checkpoint_000000").mkdir()
    # the data copied again without its mtimes (cp -r, scp, an archive extracted without them)
    shutil.rmtree(root)
    shutil.copytree(elsewhere, root, copy_function=shutil.copyfile)
    assert os.stat(root / "train_curated" / "c0.wav").st_mtime_ns != os.stat(elsewhere / "train_curated" / "c0.wav").st_mtime_ns
    copied = _build_here(dataset, tmp_path / "cache")
    assert copied.build_info["computed"] == 3 and copied.identity(ids) == same
    check_run_settings(str(run), Config(), plan(copied))  # the same audio resumes
    sf.write(root / "train_curated" / "c0.wav", _tone(22050, 1.0, 1234, 99), 22050, subtype="PCM_16")  # re-exported
    with pytest.raises(ConfigError, match=r"plan.features: .* an audio file's contents changed"):
        check_run_settings(str(run), Config(), plan(_build_here(dataset, tmp_path / "cache")))


def test_each_members_plan_names_its_own_front_end(tmp_path):
    """A members run trains each member in its own run folder, on its own features: each
    member's plan.features is its own front end's."""
    from raytag.config import Config
    from raytag.features.store import shard_key
    from raytag.training.runner import prepare_data

    root = make_fat2019(tmp_path / "data")
    cfg = Config.from_dict({"features": dataclasses.asdict(CFG), "cv": {"n_folds": 2},
                            "members": [{"name": "wide"}, {"name": "narrow", "set": {"features.n_mels": 20}}]})
    identities = {}
    for member, member_cfg in cfg.member_configs():
        _, store, plan = prepare_data(member_cfg, str(root), str(tmp_path / "cache"), progress=False)
        assert plan.features_id == store.identity(plan.curated_ids + plan.noisy_ids + plan.test_ids)
        identities[member] = plan.features_id
    assert identities["wide"] != identities["narrow"]
    assert identities["narrow"].endswith(f", {shard_key(dataclasses.replace(CFG, n_mels=20))})")


def test_an_empty_feature_cache_is_refused_and_an_empty_raytag_cache_is_unset(tmp_path, monkeypatch):
    """`--feature-cache "$CACHE"` with CACHE unset, or `export RAYTAG_CACHE=`, built the
    features in whatever folder the command ran in, so a run started elsewhere built them again."""
    from typer.testing import CliRunner

    from raytag.cli import app
    from raytag.features.store import default_feature_cache, feature_cache_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FeatureStoreError, match="--feature-cache '': empty; give a folder for the feature cache"):
        feature_cache_folder("")
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["prepare", "--data", str(tmp_path / "data"), "--feature-cache", ""],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "--feature-cache '': empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    monkeypatch.setenv("RAYTAG_CACHE", "")
    assert default_feature_cache() == str(Path.home() / ".cache" / "raytag" / "features")
