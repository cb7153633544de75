"""Starting or joining Ray (raytag.session)."""
import pytest

from raytag.errors import ClusterError, RaytagError
from raytag.session import ensure_ray


def test_a_cluster_that_cannot_be_joined_is_a_user_error(monkeypatch):
    """RAY_ADDRESS names a cluster that refuses (or has no such head): one clear error naming
    the address and what to do, which the CLI prints without Ray's traceback."""
    import ray

    def refused(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `raytag train`
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ClusterError, match=r"RAY_ADDRESS=10\.0\.0\.9:6379: Could not find any running Ray "
                                           r"instance\.; unset RAY_ADDRESS") as caught:
        ensure_ray()
    assert isinstance(caught.value, RaytagError)
    assert "\n" not in str(caught.value)
