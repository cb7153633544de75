"""raytag.testing.LocalCluster's own cleanup (no Ray started)."""
from __future__ import annotations

import pytest

from raytag.testing import LocalCluster


def test_the_nodes_are_stopped_even_when_disconnecting_fails(tmp_path, monkeypatch):
    cluster = LocalCluster(root=tmp_path)
    stopped = []

    def failing_disconnect():
        raise RuntimeError("ray.shutdown failed")

    monkeypatch.setattr(cluster, "disconnect", failing_disconnect)
    monkeypatch.setattr(cluster, "stop", lambda: stopped.append(True))
    with pytest.raises(RuntimeError, match="ray.shutdown failed"):
        with cluster:
            pass
    assert stopped == [True]
