"""cluster.yaml is checked offline against Ray's cluster-launcher schema (the same
prepare_config + validate_config that `ray up` runs first), and against what raytag needs:
a CPU head, an autoscaling GPU pool, the project's checkout installed with its own pins."""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _launcher_api():
    """Ray's private validators; a clear failure (not a skip) if a Ray upgrade moves them."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except (ImportError, AttributeError) as err:
        import ray

        pytest.fail(
            f"ray {ray.__version__} no longer has ray.autoscaler._private.util.prepare_config / "
            f"validate_config (private API used to validate cluster.yaml offline): {err}. "
            "Find where `ray up` validates its config now (ray/autoscaler/_private/commands.py, "
            "create_or_update_cluster) and point this test there; until then cluster.yaml is unchecked."
        )
    return prepare_config, validate_config


def _validate(config: dict) -> dict:
    prepare_config, validate_config = _launcher_api()
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_schema(config):
    prepared = _validate(config)
    assert prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize("breakage", [
    ("top-level typo", lambda c: c.__setitem__("max_worker", 4)),
    ("non-integer min_workers", lambda c: c["available_node_types"]["ray.worker.gpu"].__setitem__("min_workers", "two")),
    ("unknown head type", lambda c: c.__setitem__("head_node_type", "ray.head.missing")),
], ids=lambda b: b[0])
def test_validator_rejects_broken_copies(config, breakage):
    """The validator is not a no-op: small mistakes in a copy of cluster.yaml are caught."""
    _, breaker = breakage
    broken = copy.deepcopy(config)
    breaker(broken)
    with pytest.raises(Exception):
        _validate(broken)


def test_head_is_cpu_and_gpu_pool_autoscales(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"]), "head should be a CPU instance"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers, "no worker node type"
    for name, worker in workers.items():
        assert re.match(r"^(g|p)\d", worker["node_config"]["InstanceType"]), f"{name} is not a GPU instance"
        assert 0 <= worker["min_workers"] < worker["max_workers"] <= config["max_workers"], name


def test_setup_installs_this_checkout_with_pyproject_pins(config):
    """Nodes install `pip install -e` of the mounted checkout, so the pins are pyproject's;
    any version this file names itself must agree with pyproject.toml."""
    mounts = config["file_mounts"]
    checkout = next(remote for remote, local in mounts.items() if local in (".", "./"))
    commands = " && ".join(config["setup_commands"])
    assert re.search(rf"pip install[^&|;]*-e {re.escape(checkout)}(\s|$)", commands), commands

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[<>=!~ ]", d, 1)[0]: d for d in deps}
    text = CLUSTER_YAML.read_text()
    for name in ("torch", "ray"):
        spec = re.sub(r"^[^<>=!~]*", "", pins[name].split(";")[0].replace(" ", ""))
        for found in re.findall(rf"\b{name}(?:\[[^\]]*\])?((?:[<>=!~]=?[\w.*]+,?)+)", text):
            assert found.rstrip(",") == spec, f"cluster.yaml names {name}{found}, pyproject pins {name}{spec}"
    # the launcher's start commands must run the ray of that install
    assert "raytag-venv/bin" in commands and "ray start --head" in " ".join(config["head_start_ray_commands"])


def test_comments_say_what_to_change_and_cost():
    text = CLUSTER_YAML.read_text()
    change_lines = [line for line in text.splitlines() if "CHANGE" in line]
    for needle in ("region", "account id", "bucket", "InstanceType", "key"):
        assert any(needle.lower() in line.lower() for line in change_lines), f"no CHANGE note on {needle}"
    assert re.search(r"\$\d", text), "no cost note"


def test_dashboard_listens_on_localhost_only(config):
    """The dashboard runs whatever job it is sent: it must not listen on every interface,
    and the file must say how to reach it (the SSH tunnel of `ray dashboard`)."""
    start = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts == ["127.0.0.1"], f"dashboard host {hosts or 'default'}; bind it to 127.0.0.1"
    assert "ray dashboard cluster.yaml" in CLUSTER_YAML.read_text()


def test_head_setup_installs_boto3_into_the_venv_ray_runs_from(config):
    """The head's autoscaler runs on ~/raytag-venv's ray and needs boto3 to start the GPU
    workers; ray[default,...] does not bring it, and a head_setup_commands of our own
    replaces Ray's default one (which installs boto3 into the system python)."""
    head = _validate(config)["head_setup_commands"]  # setup_commands first, as `ray up` runs them
    made_venv = next(i for i, cmd in enumerate(head) if "-m venv ~/raytag-venv" in cmd)
    boto3 = [i for i, cmd in enumerate(head) if re.search(r"raytag-venv/bin/pip install[^&|;]*\bboto3", cmd)]
    assert boto3 and boto3[0] > made_venv, head


# python3 of each Ubuntu release the launcher's AMIs are built on
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}


def test_nodes_python_is_one_raytag_supports(config):
    """~/raytag-venv is made with the AMI's own python3; pyproject's requires-python must admit
    it (if it is ever raised past it, the setup must install a newer Python, see cluster.yaml)."""
    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    made_venv = next(cmd for cmd in config["setup_commands"] if "-m venv ~/raytag-venv" in cmd)
    interpreter = re.search(r"\bpython(3(?:\.\d+)?) -m venv", made_venv).group(1)
    for name, node in config["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        ubuntu = re.search(r"ubuntu-(\d+\.\d+)", image)
        assert ubuntu, f"{name}: cannot tell which Python {image} has; name the Ubuntu release in this test"
        version = interpreter if "." in interpreter else UBUNTU_PYTHON[ubuntu.group(1)]
        assert requires.contains(version), f"{name}: python {version} of {image}, raytag requires {requires}"
        assert f"Python {version}" in CLUSTER_YAML.read_text(), f"cluster.yaml does not say the nodes run Python {version}"
