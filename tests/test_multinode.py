"""raytag on more than one node: the storage and data checks, copying a dataset onto a
node, and a real 2-node Ray cluster on loopback (head + second node, each its own
`ray start`) on which workers land on both nodes and a killed node is survived.

The `cluster` tests run last (conftest) and end the shared Ray session first; deselect
them with -m 'not cluster'. They stop only the processes they started (never `ray stop`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from raytag import cluster as rc
from raytag.errors import DatasetError, StorageError
from raytag.session import CONTROLLER_POLL
from raytag.testing import LocalCluster

# Ray workers cannot import this test module by name: ship its functions by value.
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ----------------------------------------------------------------------------- materialize_data
def _make_source(root: Path) -> Path:
    src = root / "fat2019"
    (src / "train_curated").mkdir(parents=True)
    (src / "train_curated" / "a.wav").write_bytes(os.urandom(300_000))
    (src / "train_curated" / "b.wav").write_bytes(os.urandom(1000))
    (src / "train_curated.csv").write_text("fname,labels\na.wav,Bark\nb.wav,Purr\n")
    return src


def test_materialize_copies_a_uri_once_and_keeps_it_current(tmp_path):
    src = _make_source(tmp_path)
    cache = tmp_path / "cache"
    local = rc.materialize_data(src.as_uri(), cache)
    assert local.parent == cache and local != src
    for rel in ("train_curated/a.wav", "train_curated/b.wav", "train_curated.csv"):
        assert (local / rel).read_bytes() == (src / rel).read_bytes()
    marker = json.loads((local / rc.MARKER).read_text())
    assert set(marker["files"]) == {"train_curated/a.wav", "train_curated/b.wav", "train_curated.csv"}

    # a second call copies nothing (the copy's files keep their inode and mtime)
    before = (local / "train_curated/a.wav").stat()
    assert rc.materialize_data(src.as_uri(), cache) == local
    after = (local / "train_curated/a.wav").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    # the source changes: a changed file is recopied, a removed one dropped, a new one added
    (src / "train_curated.csv").write_text("fname,labels\na.wav,Bark\n")
    (src / "train_curated" / "b.wav").unlink()
    (src / "train_noisy.csv").write_text("fname,labels\n")
    assert rc.materialize_data(src.as_uri(), cache) == local
    assert (local / "train_curated.csv").read_text() == "fname,labels\na.wav,Bark\n"
    assert not (local / "train_curated/b.wav").exists()
    assert (local / "train_noisy.csv").is_file()
    assert (local / "train_curated/a.wav").stat().st_ino == before.st_ino  # unchanged: kept


def test_materialize_says_what_it_copies_and_shows_a_bar_on_the_driver(tmp_path, capsys):
    """A dataset at a URI may take minutes to copy: the copy says how many files and bytes
    (and which are already here), with `progress` also a bar of bytes and files; a copy
    that is current says nothing."""
    src = _make_source(tmp_path)
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    rc.materialize_data(src.as_uri(), tmp_path / "cache", progress=True)
    err = " ".join(capsys.readouterr().err.split())
    assert f"data: copying 3 files ({size / 1000:.1f} kB) from {src.as_uri()}" in err
    assert "3/3 files" in err  # the bar, at its end
    rc.materialize_data(src.as_uri(), tmp_path / "cache", progress=True)
    assert capsys.readouterr().err == ""  # nothing to copy
    (src / "train_noisy.csv").write_text("fname,labels\n")
    rc.materialize_data(src.as_uri(), tmp_path / "cache")  # a worker's call: the line, no bar
    err = capsys.readouterr().err
    assert err.startswith("data: copying 1 file (") and "; 3 already copied" in err and len(err.splitlines()) == 1


def test_materialize_resumes_an_interrupted_copy(tmp_path):
    src = _make_source(tmp_path)
    cache = tmp_path / "cache"
    final = rc._cache_dir_for(src.as_uri(), cache)
    partial = final.with_name(final.name + ".partial")
    # what a killed copy leaves: whole files (with their source's time) and a half-written temporary
    (partial / "train_curated").mkdir(parents=True)
    for rel in ("train_curated.csv", "train_curated/b.wav"):
        (partial / rel).write_bytes((src / rel).read_bytes())
        os.utime(partial / rel, ns=((src / rel).stat().st_mtime_ns,) * 2)
    kept = (partial / "train_curated.csv").stat().st_ino
    (partial / "train_curated" / "a.wav.part").write_bytes(b"half")
    # then, before the rerun, the source's b.wav is edited to other bytes of the same size
    b_wav = src / "train_curated" / "b.wav"
    edited, was = bytes(reversed(b_wav.read_bytes())), b_wav.stat().st_mtime_ns
    b_wav.write_bytes(edited)
    os.utime(b_wav, ns=(was + 10**9,) * 2)  # a second later, whatever the file system's clock grain
    assert not final.exists()

    local = rc.materialize_data(src.as_uri(), cache)
    assert local == final and not partial.exists()
    assert (local / "train_curated.csv").stat().st_ino == kept  # not copied again
    assert (local / "train_curated/b.wav").read_bytes() == edited  # the stale copy was not trusted
    assert (local / "train_curated/a.wav").read_bytes() == (src / "train_curated/a.wav").read_bytes()
    assert not list(local.rglob("*.part"))


def test_materialize_concurrent_callers_share_one_copy(tmp_path):
    src = _make_source(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: rc.materialize_data(src.as_uri(), tmp_path / "cache"), range(4)))
    assert len(set(paths)) == 1
    assert (paths[0] / "train_curated/a.wav").read_bytes() == (src / "train_curated/a.wav").read_bytes()


def test_materialize_local_paths_and_errors(tmp_path):
    src = _make_source(tmp_path)
    assert rc.materialize_data(str(src), tmp_path / "cache") == src.resolve()  # used in place
    # "file:/x" is what pathlib leaves of "file:///x" (typer Path options)
    assert (rc.materialize_data(f"file:{src}", tmp_path / "cache") / "train_curated.csv").is_file()
    with pytest.raises(DatasetError, match="not found"):
        rc.materialize_data((tmp_path / "nope").as_uri(), tmp_path / "cache")
    with pytest.raises(DatasetError, match="not found"):
        rc.materialize_data(str(tmp_path / "nope"), tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no files"):
        rc.materialize_data((tmp_path / "empty").as_uri(), tmp_path / "cache")


def test_uri_helpers():
    assert rc.is_local_path("results") and rc.is_local_path("/abs/x") and rc.is_local_path("file:///x")
    assert not rc.is_local_path("s3://bucket/x") and not rc.is_local_path("gs://b/x")
    assert not rc.is_local_path("s3:/bucket/x")  # pathlib-mangled URI is still a URI
    assert rc.normalize_uri("s3:/bucket/x") == "s3://bucket/x"
    assert rc.normalize_uri("file:/tmp/x") == "file:///tmp/x"
    assert rc.normalize_uri("/tmp/x") == "/tmp/x"


# ----------------------------------------------------------------------------- storage checks, one node
def test_storage_check_on_one_node_and_on_an_autoscaling_cluster(ray_session, tmp_path, monkeypatch):
    monkeypatch.delenv(rc.SHARED_FS_ENV, raising=False)
    monkeypatch.setattr(rc, "LAUNCHER_CONFIG", tmp_path / "absent.yaml")
    assert len(rc.cluster_nodes()) == 1 and not rc.is_multinode()
    rc.check_storage("results")  # one node: local storage is fine
    rc.check_data(str(tmp_path))

    # the head of a `ray up` cluster whose autoscaler may add workers counts as multi-node
    launcher = tmp_path / "ray_bootstrap_config.yaml"
    launcher.write_text(yaml.safe_dump({"cluster_name": "x", "max_workers": 4}))
    monkeypatch.setattr(rc, "LAUNCHER_CONFIG", launcher)
    assert rc.is_multinode()
    with pytest.raises(StorageError, match=r"s3://bucket/prefix.*RAYTAG_SHARED_FS=1"):
        rc.check_storage("results")
    with pytest.raises(StorageError, match="--data s3://"):
        rc.check_data(str(tmp_path))
    rc.check_storage("s3://bucket/prefix")
    rc.check_data("s3://bucket/fat2019")
    monkeypatch.setenv(rc.SHARED_FS_ENV, "1")
    rc.check_storage("/mnt/efs/raytag")  # declared shared: accepted


# ----------------------------------------------------------------------------- a real 2-node cluster
@pytest.fixture(scope="module")
def two_node_cluster():
    """Head + one more node on loopback, 2 logical CPUs each; this process is the driver."""
    import ray

    ray.shutdown()  # the shared test session (conftest runs cluster tests last)
    # a short root: Ray's socket paths under it must stay within AF_UNIX's 107 bytes, which a
    # pytest-xdist worker's basetemp (.../pytest-N/popen-gw1/...) would exceed
    root = Path(tempfile.mkdtemp(prefix="raytag-rc-"))
    cluster = LocalCluster(root=root, num_cpus=2)
    # Ray Train's default poll (conftest sets 0.25 s for the other tests) on the nodes, where the
    # sweep's trials drive their trainers: its tiny trials then train for several seconds, long
    # enough for the node-loss test to catch one training on the second node
    cluster.system_env[CONTROLLER_POLL] = "2"
    try:
        cluster.start(n_nodes=2)
        cluster.connect(log_to_driver=False, configure_logging=False)
        nodes = cluster.wait_for_nodes(2)
        assert len(nodes) == 2, nodes
        yield cluster
    finally:
        cluster.disconnect()
        cluster.stop()
        assert not [pid for node in cluster.nodes for pid in node.pids()]
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.cluster
def test_two_nodes_refuse_local_storage(two_node_cluster, monkeypatch):
    monkeypatch.delenv(rc.SHARED_FS_ENV, raising=False)
    nodes = rc.cluster_nodes()
    assert len(nodes) == 2 and sum(n["is_head"] for n in nodes) == 1
    assert rc.is_multinode()
    with pytest.raises(StorageError, match=r"2 nodes.*--storage s3://bucket/prefix"):
        rc.check_storage("results")
    rc.check_storage("gs://bucket/prefix")
    monkeypatch.setenv(rc.SHARED_FS_ENV, "1")  # both nodes share this machine's disk
    rc.check_storage("results")


def _spread_loop(config):
    """Train loop: all-reduce across the workers each epoch, checkpoint on rank 0, resume."""
    import json
    import os
    import tempfile
    import time
    from pathlib import Path

    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    node = ray.get_runtime_context().get_node_id()
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
    log = Path(config["log_dir"]) / f"rank{rank}-pid{os.getpid()}.jsonl"
    for epoch in range(start, config["epochs"]):
        time.sleep(config["sleep"])
        total = torch.tensor([1.0])
        dist.all_reduce(total)  # the workers really work together (gloo, across nodes)
        with log.open("a") as f:
            f.write(json.dumps({"rank": rank, "node": node, "epoch": epoch, "start": start,
                                "world": int(total.item()), "t": time.time()}) + "\n")
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"epoch": epoch}, checkpoint=ckpt)


def _read_log(log_dir: Path) -> list[dict]:
    rows = []
    for path in log_dir.glob("*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["t"])


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_workers_on_both_nodes_survive_losing_one(two_node_cluster, tmp_path):
    """One worker per node; SIGKILL the second node mid-run; FailureConfig restarts the
    worker group on the head from the last checkpoint and the run finishes every epoch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cluster = two_node_cluster
    head_id = next(n["node_id"] for n in rc.cluster_nodes() if n["is_head"])
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    epochs = 8
    trainer = TorchTrainer(
        _spread_loop,
        train_loop_config={"log_dir": str(log_dir), "epochs": epochs, "sleep": 1.0},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5},
                                               placement_strategy="SPREAD"),
        run_config=ray.train.RunConfig(name="spread", storage_path=str(tmp_path / "storage"),
                                       failure_config=ray.train.FailureConfig(max_failures=2)),
    )
    out = {}
    runner = threading.Thread(target=lambda: out.setdefault("result", trainer.fit()), daemon=True)
    runner.start()

    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and runner.is_alive():
        rows = _read_log(log_dir)
        if any(r["node"] != head_id and r["epoch"] >= 1 for r in rows):
            break
        time.sleep(0.3)
    else:
        runner.join(timeout=5)
        # a node lost before the test's own kill (once under a loaded CI machine: its raylet
        # ended by itself and the SPREAD group never placed) shows here as fewer live nodes
        alive = [(n["node_id"][:8], n["is_head"]) for n in rc.cluster_nodes()]
        pytest.fail(f"no worker reached epoch 1 on the second node: {out.get('result')} {_read_log(log_dir)}; "
                    f"live nodes now: {alive}")
    before = _read_log(log_dir)
    killed_at = time.time()
    assert cluster.kill_node("worker1"), "the second node had no processes to kill"
    runner.join(timeout=180)
    assert not runner.is_alive(), "the run did not finish after the node was lost"
    result = out["result"]

    assert result.error is None, result.error
    nodes_before = {r["node"] for r in before}
    assert len(nodes_before) == 2 and head_id in nodes_before, "one worker per node before the kill"
    assert all(r["world"] == 2 for r in before)
    after = [r for r in _read_log(log_dir) if r["t"] > killed_at]
    assert after and {r["node"] for r in after} == {head_id}, "restarted workers should be on the head"
    resumed = {r["start"] for r in after if r["start"] > 0}
    assert resumed, "the restarted group began from scratch, not from the checkpoint"
    last_before = max(r["epoch"] for r in before if r["rank"] == 0)
    assert min(resumed) <= last_before + 1, "epochs were skipped"
    done = {r["epoch"] for r in _read_log(log_dir) if r["rank"] == 0}
    assert done == set(range(epochs))
    with result.checkpoint.as_directory() as d:
        assert json.loads((Path(d) / "state.json").read_text())["epoch"] == epochs - 1
    assert len(cluster.wait_for_nodes(1, timeout=30)) == 1


SWEEP_SPACE = """
name: twonode
base:
  features.n_mels: 32
  train.crop_seconds: 1.0
  train.batch_size: 32
  cv.n_folds: 2
  pipeline.noisy_selection.max_per_class: 4
  pipeline.warmup.epochs: 1
  pipeline.finetune.epochs: 2
  pipeline.filter.enabled: false
  pipeline.pseudo.enabled: false
  inference.segment_seconds: 1.0
space:
  model.name: {choice: [cnn2d]}
  model.width: {choice: [8, 16]}
  train.lr: {loguniform: [5.0e-4, 3.0e-3]}
search: {samples: 2, scheduler: fifo, max_concurrent_trials: 2, seed: 0}
resources: {num_workers: 2, cpus_per_worker: 0.5, trial_cpus: 0.25}
"""


class _Watcher:
    """Samples which Ray workers run on which node (by process title) every 0.3 s."""

    def __init__(self, cluster):
        self.cluster, self.seen, self._stop = cluster, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = time.time()
            for node in list(self.cluster.nodes):
                for pid, title in node.ray_processes().items():
                    self.seen.append({"t": now, "node": node.name, "pid": pid, "title": title})
            time.sleep(0.3)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join()

    def pids(self, node: str, kind: str, before: float = float("inf"), after: float = 0.0) -> set:
        return {s["pid"] for s in self.seen if s["node"] == node and kind in s["title"] and after < s["t"] < before}

    def first_seen(self, pid: int) -> float:
        return min(s["t"] for s in self.seen if s["pid"] == pid)


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_sweep_uses_both_nodes_and_survives_losing_one(two_node_cluster, demo_data, tmp_path, monkeypatch):
    """A 2-trial raytag sweep on the 2-node cluster: trial workers run on both nodes; the
    second node is SIGKILLed while a trial trains there. A trial whose driver lived on the
    head finishes (Ray Train FailureConfig restarts its workers from the last checkpoint);
    the sweep records any trial whose driver died with the node as failed with its reason;
    a trial finished before the kill keeps its outputs untouched."""
    from raytag.search.leaderboard import TRIAL_RESULT
    from raytag.search.tuner import run_sweep

    cluster = two_node_cluster
    if len(rc.cluster_nodes()) < 2:  # the previous test killed worker1: bring a node back
        cluster._ray_start("worker2", [f"--address={cluster.address}"], timeout=90)
        assert len(cluster.wait_for_nodes(2)) == 2
    second = cluster.nodes[-1].name
    monkeypatch.setenv(rc.SHARED_FS_ENV, "1")  # both nodes share this disk
    storage = str(tmp_path / "storage")
    rc.check_storage(storage)  # what `raytag tune` checks first
    space = tmp_path / "twonode.yaml"
    space.write_text(SWEEP_SPACE)
    # Features prepared once before the sweep, as `raytag prepare` does (a feature store
    # built from inside a trial asks 1 CPU per task inside the trial's 0.25 CPU placement
    # group: see the report to the lead).
    from raytag.config import Config
    from raytag.data.layouts import load_dataset
    from raytag.features.store import build_feature_store

    features = Config.from_dict({"features": {"n_mels": 32}}).features
    build_feature_store(load_dataset(demo_data, sample_rate=features.sample_rate), features,
                        tmp_path / "features", progress=False)

    watcher = _Watcher(cluster).start()
    out = {}

    def sweep():
        try:
            out["result"] = run_sweep(space, demo_data, storage=storage, name="twonode",
                                      progress=False, feature_cache=str(tmp_path / "features"))
        except BaseException as err:  # reported by the main thread
            out["error"] = err

    runner = threading.Thread(target=sweep, daemon=True)
    runner.start()
    deadline = time.monotonic() + 240
    killed_at = None
    while runner.is_alive() and time.monotonic() < deadline:
        training = [pid for pid in watcher.pids(second, "RayTrainWorker")
                    if time.time() - watcher.first_seen(pid) > 4.0]  # past start-up: training
        if training and watcher.pids("head", "RayTrainWorker"):
            killed_at = time.time()
            drivers_lost = watcher.pids(second, "ImplicitFunc", after=killed_at - 1.0)
            done_before = {p.parent.name: p.read_bytes() for p in Path(storage).glob(f"twonode/trials/*/{TRIAL_RESULT}")}
            assert cluster.kill_node(second)
            break
        time.sleep(0.3)
    # after the loss the head (2 CPUs) runs the surviving trials one at a time (1.25 CPU
    # each), and a worker group waiting for CPUs may first time out and restart: allow for it
    runner.join(timeout=540)
    watcher.stop()
    assert not runner.is_alive(), "the sweep did not finish after the node was lost"
    assert "error" not in out, out.get("error")
    assert killed_at is not None, f"workers never ran on both nodes: {watcher.seen[-20:]}"

    # both nodes did work
    assert watcher.pids("head", "RayTrainWorker", before=killed_at)
    assert watcher.pids(second, "RayTrainWorker", before=killed_at)

    board = out["result"].leaderboard.set_index("trial_id")
    assert len(board) == 2
    ok = board[board["status"] == "ok"]
    lost = board[board["status"] != "ok"]
    # Trial drivers run on the head (resources.trials_on_head), so losing the second node
    # costs only Train workers: every trial finishes, its workers restarted from the last
    # checkpoint by Ray Train's FailureConfig.
    assert not drivers_lost, f"a trial driver ran on the lost node: {drivers_lost}"
    assert len(lost) == 0 and len(ok) == 2, board[["status", "reason"]]
    if not drivers_lost:
        # the killed workers' trial restarted on the head after the kill
        assert watcher.pids("head", "RayTrainWorker", after=killed_at + 0.5), "no worker restarted on the head"
    for trial_id, row in ok.iterrows():
        outputs = Path(row["outputs_dir"])
        assert (outputs / "oof.parquet").is_file() and (outputs / "metrics.json").is_file()
        assert 0.0 < row["cv_lwlrap"] <= 1.0
    # nothing lost from trials finished before the kill
    for trial_dir, blob in done_before.items():
        assert (Path(storage) / "twonode" / "trials" / trial_dir / TRIAL_RESULT).read_bytes() == blob
