"""Offline checks of every ``cluster/*.yaml`` (``ray up`` cluster configs).

No cloud, no credentials, no boto3: Ray's own validator (``prepare_config`` +
``validate_config``, a private API pinned by ``ray==`` in pyproject.toml) plus this project's
invariants read with plain YAML: shared (cloud) storage, trial drivers pinned to the head by a
custom resource, GPUs on GPU workers, the image and installs pinned to the versions this repo
is tested with, no secrets, the dashboard and MLflow bound as documented, no port open to the
internet. The head/worker command lines are parsed by the installed ``ray start`` and
``mlflow server`` CLIs (so a wrong flag fails here) and every command is syntax-checked with
``bash -n``. Each checker returns a list of problems; the ``*_catches_*`` tests feed each one
a broken copy of a real config to show it is not vacuous.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from _cluster_checks import (
    CLUSTER_DIR,
    CLUSTER_FILES,
    VPC_ONLY_MARKER,
    ClusterCheckError,
    _ids,
    binding_problems,
    driver_resource_problems,
    gpu_problems,
    image_problems,
    ingress_problems,
    install_pin_problems,
    load,
    mlflow_server_params,
    pyproject_pins,
    ray_start_params,
    ray_validator_problems,
    secret_problems,
    shell_syntax_problems,
    storage_problems,
)

# Importing mlflow.cli (to parse the head's `mlflow server` line) configures SQLAlchemy mappers.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")



@pytest.fixture(scope="module", params=CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def cluster(request) -> tuple[Path, dict, str]:
    cfg, text = load(request.param)
    return request.param, cfg, text


@pytest.fixture(scope="module")
def gpu_cfg() -> tuple[dict, str]:
    """The reference config the ``*_catches_*`` tests break on purpose."""
    return load(CLUSTER_DIR / "gpu.yaml")


# ------------------------------------------------------------------------------ helpers


def test_there_is_a_cluster_config():
    assert CLUSTER_FILES, f"no cluster YAML in {CLUSTER_DIR}"


def test_ray_validator_accepts(cluster):
    """(Its import and run time: benchmarks/unit_timings.py.)"""
    assert ray_validator_problems(cluster[1]) == []


def test_storage_is_shared_cloud_storage(cluster):
    assert storage_problems(cluster[1]) == []


def test_driver_resource_only_on_the_head(cluster):
    assert driver_resource_problems(cluster[1]) == []


def test_gpu_workers_have_gpus(cluster):
    path, cfg, _ = cluster
    assert gpu_problems(cfg, require_gpu_workers="gpu" in path.stem) == []


def test_image_pins_the_installed_ray():
    import ray

    assert pyproject_pins().get("ray") == ray.__version__, "pyproject pins another ray"
    for path in CLUSTER_FILES:
        assert image_problems(load(path)[0], ray.__version__) == [], path.name


def test_installs_pin_pyproject_versions(cluster):
    assert install_pin_problems(cluster[1]) == []


def test_no_secrets(cluster):
    assert secret_problems(cluster[2]) == []


def test_dashboard_and_mlflow_binding(cluster):
    assert binding_problems(cluster[1], cluster[2]) == []


def test_gpu_yaml_binding_is_what_its_readme_says(gpu_cfg):
    """gpu.yaml: MLflow on 0.0.0.0 of the head (workers log over the VPC), VPC-only by the
    security group (no ingress rule at all), the dashboard on loopback (SSH tunnel)."""
    cfg, text = gpu_cfg
    (mlflow,) = mlflow_server_params(cfg)
    assert mlflow["host"] == "0.0.0.0" and mlflow["port"] == 5000
    assert VPC_ONLY_MARKER in text
    assert "security_group" not in cfg["provider"]
    assert all("SecurityGroupIds" not in t["node_config"]
               for t in cfg["available_node_types"].values())
    (head,) = ray_start_params(cfg, "head_start_ray_commands")
    assert head["dashboard_host"] == "127.0.0.1"


def test_no_port_open_to_the_internet(cluster):
    assert ingress_problems(cluster[1]) == []


def test_workers_join_the_head(cluster):
    (params,) = ray_start_params(cluster[1], "worker_start_ray_commands")
    assert params["address"] == "$RAY_HEAD_IP:6379" and not params["head"]


def test_commands_parse_as_bash(cluster):
    assert shell_syntax_problems(cluster[1]) == []


def test_readme_covers_each_config():
    readme = (CLUSTER_DIR / "README.md").read_text()
    for path in CLUSTER_FILES:
        assert f"ray up cluster/{path.name}" in readme
        assert f"ray down cluster/{path.name}" in readme


# --------------------------------------------------- the checkers catch what they should


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _swap(key: str, old: str, new: str) -> Callable[[dict, str], None]:
    """A breaker replacing ``old`` (which must occur) by ``new`` in the command list ``key``."""
    def breaker(cfg: dict, text: str) -> None:
        assert any(old in c for c in cfg[key]), old
        cfg[key] = [c.replace(old, new) for c in cfg[key]]
    return breaker


#: case -> (checker(cfg, text), breaker(cfg, text)): the breaker edits cfg in place and returns
#: None, or returns the broken YAML text for the text-level checkers.
MUTATIONS: dict[str, tuple[Callable[[dict, str], list[str]],
                           Callable[[dict, str], str | None]]] = {
    "ray-schema-typo": (lambda c, t: ray_validator_problems(c),
                        lambda c, t: _set(c, "max_worker", 3)),
    "ray-fractional-gpu": (lambda c, t: ray_validator_problems(c),
                           lambda c, t: _set(c, "available_node_types.gpu_worker.resources.GPU",
                                          0.5)),
    "local-storage": (lambda c, t: storage_problems(c),
                      lambda c, t: _set(c, "metadata.fusion_orchestrator.storage", "ray_results")),
    "local-mlflow-artifacts": (
        lambda c, t: storage_problems(c),
        _swap("head_start_ray_commands",
              "--artifacts-destination s3://YOUR_BUCKET/fusion-orchestrator/mlflow-artifacts",
              "--artifacts-destination /home/ray/mlflow/artifacts")),
    "driver-on-gpu-worker": (lambda c, t: driver_resource_problems(c),
                             lambda c, t: _set(c, "available_node_types.gpu_worker.resources",
                                            {"CPU": 4, "GPU": 1, "driver": 4})),
    "no-driver-on-head": (lambda c, t: driver_resource_problems(c),
                          lambda c, t: _set(c, "available_node_types.head_cpu.resources",
                                         {"CPU": 6})),
    "gpu-worker-without-gpu": (lambda c, t: gpu_problems(c),
                               lambda c, t: _set(c, "available_node_types.gpu_worker.resources",
                                              {"CPU": 4})),
    "image-other-ray": (lambda c, t: image_problems(c, "2.60.0"),
                        lambda c, t: _set(c, "docker.image", "rayproject/ray:2.59.0-py311-gpu")),
    "image-ray-ml": (lambda c, t: image_problems(c, "2.60.0"),
                     lambda c, t: _set(c, "docker.image", "rayproject/ray-ml:latest-gpu")),
    "project-other-version": (
        lambda c, t: install_pin_problems(c),
        _swap("setup_commands", "fusion-orchestrator@v", "fusion-orchestrator@v9")),
    "project-unpinned": (
        lambda c, t: install_pin_problems(c),
        _swap("setup_commands", "fusion-orchestrator@v", "fusion-orchestrator@main#v")),
    "torch-unpinned": (
        lambda c, t: install_pin_problems(c),
        _swap("setup_commands", '"torch==2.13.0"', "torch")),
    "mlflow-other-pin": (
        lambda c, t: install_pin_problems(c),
        _swap("setup_commands", "mlflow==3.17.2", "mlflow==3.18.0")),
    "secret-key-id": (lambda c, t: secret_problems(t),
                      lambda c, t: t + "\n# AKIAABCDEFGHIJKLMNOP\n"),
    "secret-in-uri": (lambda c, t: secret_problems(t),
                      lambda c, t: t.replace("sqlite:////home/ray/mlflow/mlflow.db",
                                             "postgresql://mlflow:hunter22@db:5432/mlflow")),
    "dashboard-public": (
        lambda c, t: binding_problems(c, t),
        _swap("head_start_ray_commands", "--dashboard-host=127.0.0.1",
              "--dashboard-host=0.0.0.0")),
    "mlflow-any-undocumented": (lambda c, t: binding_problems(c, t),
                                lambda c, t: t.replace(VPC_ONLY_MARKER, "internal")),
    "mlflow-bad-flag": (
        lambda c, t: binding_problems(c, t),
        _swap("head_start_ray_commands", "--port 5000", "--prot 5000")),
    "sg-open-5000": (lambda c, t: ingress_problems(c) + binding_problems(c, t),
                     lambda c, t: _set(c, "provider.security_group", {"IpPermissions": [
                         {"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp",
                          "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]})),
    "bash-unbalanced-quote": (
        lambda c, t: shell_syntax_problems(c),
        lambda c, t: c.update(worker_start_ray_commands=["ray start --address='$RAY_HEAD_IP"])),
}


def mutation_problems(gpu_cfg: tuple[dict, str], check, mutate) -> list[str]:
    """What ``check`` finds in the reference config broken by ``mutate`` (a
    :class:`ClusterCheckError` is a finding; any other exception, a crashing checker,
    propagates and fails the test)."""
    cfg, text = copy.deepcopy(gpu_cfg[0]), gpu_cfg[1]
    assert check(cfg, text) == [], "the unbroken config already fails"
    text = mutate(cfg, text) or text
    try:
        return check(cfg, text)
    except ClusterCheckError as exc:
        return [f"{type(exc).__name__}: {exc}"]


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_checkers_catch_broken_configs(gpu_cfg, case):
    check, mutate = MUTATIONS[case]
    assert mutation_problems(gpu_cfg, check, mutate), f"{case}: not caught"


def test_a_crashing_checker_is_a_failure_not_a_catch(gpu_cfg):
    """The harness itself: a mutation that makes a checker crash (KeyError, TypeError) is
    reported as an error, while a command line the CLI rejects counts as caught."""
    with pytest.raises(KeyError, match="head_node_type"):
        mutation_problems(gpu_cfg, lambda c, t: driver_resource_problems(c),
                          lambda c, t: c.__delitem__("head_node_type"))
    with pytest.raises(TypeError):
        mutation_problems(gpu_cfg, lambda c, t: gpu_problems(c),
                          lambda c, t: _set(c, "available_node_types.gpu_worker.resources.GPU",
                                            "1"))
    check, mutate = MUTATIONS["mlflow-bad-flag"]
    (problem,) = mutation_problems(gpu_cfg, check, mutate)
    assert problem.startswith("ClusterCheckError: `mlflow server") and "--prot" in problem


def test_ingress_allows_ssh_only():
    cfg = {"provider": {"security_group": {"IpPermissions": [
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp",
         "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}]}}}
    assert ingress_problems(cfg) == []
