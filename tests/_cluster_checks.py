"""The checkers behind tests/test_cluster_yaml.py: each reads a ``cluster/*.yaml`` (parsed)
and returns a list of problems (empty: fine). A problem that stops a checker from going on (a
command line the installed CLI rejects) raises :class:`ClusterCheckError`; any other exception
is a bug of the checker, never a finding."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
CLUSTER_FILES = sorted(CLUSTER_DIR.glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

CLOUD_SCHEMES = ("s3://", "gs://")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ANY_ADDRESS = {"0.0.0.0", "::", "[::]"}
#: A config binding a service to all interfaces must say so in these words (and keep it true).
VPC_ONLY_MARKER = "VPC-only"
#: Packages whose install on a node must name an exact version.
MUST_PIN = {"torch", "mlflow", "optuna", "ray", "fusion-orchestrator"}
SECRET_PATTERNS = [
    re.compile(r"aws_secret_access_key", re.I),
    re.compile(r"aws_access_key_id", re.I),
    re.compile(r"aws_session_token", re.I),
    re.compile(r"^\s*aws_credentials\s*:", re.M),  # provider key that embeds credentials
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),  # user:password@ in a URI
    re.compile(r"(?i)\b(?:password|passwd|secret|api[_-]?key|token)\s*[:=]\s*['\"]?[\w/+=-]{8,}"),
]
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


class ClusterCheckError(Exception):
    """The config is wrong in a way that stops a checker (e.g. ``mlflow server --prot``)."""


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def load(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    return yaml.safe_load(text), text



def fusion_meta(cfg: dict) -> dict:
    return (cfg.get("metadata") or {}).get("fusion_orchestrator") or {}


def head_type(cfg: dict) -> str:
    return cfg["head_node_type"]


def worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != head_type(cfg)}


def is_gpu_type(name: str, node_type: dict) -> bool:
    """A node type meant for GPUs: by name, by instance family (AWS g*/p*) or by resources."""
    instance = str(node_type.get("node_config", {}).get("InstanceType", ""))
    return ("gpu" in name.lower() or re.match(r"^(g|p)\d", instance) is not None
            or "GPU" in (node_type.get("resources") or {}))


def all_commands(cfg: dict) -> list[tuple[str, str]]:
    """(where, command) for every shell command the config runs, per-type lists included."""
    out = [(key, cmd) for key in COMMAND_KEYS for cmd in cfg.get(key) or []]
    for name, node_type in cfg["available_node_types"].items():
        for key in ("initialization_commands", "worker_setup_commands"):
            out += [(f"{name}.{key}", cmd) for cmd in node_type.get(key) or []]
    return out


def tokens(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""  # bash starts a comment only at a word's start; none in our commands
    return list(lex)


def _is_operator(tok: str) -> bool:
    return bool(tok) and all(c in "();<>|&" for c in tok)


def invocations(commands: list[str], *prefix: str) -> list[list[str]]:
    """The arguments of every ``prefix ...`` call in these commands, up to the next shell
    operator or redirection (a file-descriptor number before ``>`` is dropped)."""
    out = []
    n = len(prefix)
    for command in commands:
        toks = tokens(command)
        for i in range(len(toks) - n + 1):
            if tuple(toks[i:i + n]) != prefix:
                continue
            args = []
            for j in range(i + n, len(toks)):
                if _is_operator(toks[j]):
                    break
                if toks[j].isdigit() and j + 1 < len(toks) and toks[j + 1][:1] in "<>":
                    break
                args.append(toks[j])
            out.append(args)
    return out


def pip_requirements(cfg: dict) -> list[str]:
    """Every positional argument of every ``pip install`` (requirements, wheels, paths)."""
    cmds = [cmd for _, cmd in all_commands(cfg)]
    reqs = []
    for prefix in (("pip", "install"), ("pip3", "install"), ("-m", "pip", "install")):
        for args in invocations(cmds, *prefix):
            skip_next = False
            for arg in args:
                if skip_next:
                    skip_next = False
                elif arg in {"-r", "-c", "-i", "--index-url", "--extra-index-url", "-f",
                             "--find-links", "-e"}:
                    skip_next = arg != "-e"
                    if arg in {"-r", "-c"}:
                        reqs.append(f"<{arg} file>")
                elif not arg.startswith("-"):
                    reqs.append(arg)
    return reqs


def _exact_version(req: str) -> tuple[str, str | None]:
    """(canonical name, exact version or None) of one install argument."""
    wheel = re.match(r"(?:.*/)?([A-Za-z0-9_.]+)-([0-9][^-]*)-.*\.whl$", req)
    if wheel:
        return canonicalize_name(wheel.group(1)), wheel.group(2)
    try:
        parsed = Requirement(req)
    except InvalidRequirement:
        return req, None
    name = canonicalize_name(parsed.name)
    if parsed.url:
        ref = re.search(r"@v?([0-9][^@/#]*)(?:#.*)?$", parsed.url)
        return name, ref.group(1) if ref else None
    pins = [s.version for s in parsed.specifier if s.operator in ("==", "===")]
    return name, pins[0] if pins else None


def pyproject_pins() -> dict[str, str]:
    """name -> exact version for the dependencies pyproject.toml pins with ``==``."""
    out = {}
    for dep in PROJECT["dependencies"]:
        req = Requirement(dep)
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if pins:
            out[canonicalize_name(req.name)] = pins[0]
    return out


def images(cfg: dict) -> list[tuple[str, str]]:
    docker = cfg.get("docker") or {}
    out = [(f"docker.{k}", docker[k]) for k in ("image", "head_image", "worker_image")
           if docker.get(k)]
    for name, node_type in cfg["available_node_types"].items():
        img = (node_type.get("docker") or {}).get("worker_image")
        if img:
            out.append((f"{name}.docker.worker_image", img))
    return out


def head_start_commands(cfg: dict) -> list[str]:
    return list(cfg.get("head_start_ray_commands") or [])


def _parse(command, name: str, args: list[str]) -> dict:
    """``command``'s parsed options; a rejected command line is a :class:`ClusterCheckError`."""
    import click

    try:
        return command.make_context(name, list(args)).params
    except click.UsageError as exc:
        raise ClusterCheckError(f"`{name} {' '.join(args)}`: {exc.format_message()}") from exc


def mlflow_server_params(cfg: dict) -> list[dict]:
    """The parsed options of each ``mlflow server`` the head starts (installed mlflow CLI)."""
    from mlflow.cli import server

    return [_parse(server, "mlflow server", args)
            for args in invocations(head_start_commands(cfg), "mlflow", "server")]


def ray_start_params(cfg: dict, key: str) -> list[dict]:
    from ray.scripts.scripts import start

    return [_parse(start, "ray start", args)
            for args in invocations(list(cfg.get(key) or []), "ray", "start")]


# ------------------------------------------------------------------------------ checkers


def ray_validator_problems(cfg: dict) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except Exception as exc:  # noqa: BLE001 - jsonschema, ValueError, RuntimeError, ...
        return [f"ray validate_config: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
    return []


def storage_problems(cfg: dict) -> list[str]:
    meta = fusion_meta(cfg)
    storage = meta.get("storage")
    out = []
    if not storage:
        out.append("metadata.fusion_orchestrator.storage is missing (what --set storage= gets)")
    elif not str(storage).startswith(CLOUD_SCHEMES):
        out.append(f"storage {storage!r} is not shared cloud storage {CLOUD_SCHEMES}: "
                   "multi-node Tune/Train checkpointing fails on a local path")
    for params in mlflow_server_params(cfg):
        dest = params.get("artifacts_destination") or params.get("default_artifact_root")
        if not dest or not str(dest).startswith(CLOUD_SCHEMES):
            out.append(f"mlflow server artifacts {dest!r} are not on cloud storage")
        if meta.get("mlflow_artifacts") and dest != meta["mlflow_artifacts"]:
            out.append(f"mlflow server artifacts {dest!r} != metadata "
                       f"{meta['mlflow_artifacts']!r}")
    return out


def driver_resource_problems(cfg: dict) -> list[str]:
    name = fusion_meta(cfg).get("driver_resource")
    if not name:
        return ["metadata.fusion_orchestrator.driver_resource is missing"]
    out = []
    head = cfg["available_node_types"][head_type(cfg)].get("resources") or {}
    if head.get(name, 0) <= 0:
        out.append(f"head type {head_type(cfg)!r} offers no {name!r} resource: {head}")
    if head.get("GPU", 0) != 0:
        out.append(f"head type {head_type(cfg)!r} should be a CPU node, has {head}")
    for wname, node_type in worker_types(cfg).items():
        if (node_type.get("resources") or {}).get(name, 0) > 0:
            out.append(f"worker type {wname!r} offers the driver resource {name!r}")
    return out


def gpu_problems(cfg: dict, require_gpu_workers: bool = True) -> list[str]:
    gpu = {k: v for k, v in worker_types(cfg).items() if is_gpu_type(k, v)}
    out = ["no GPU worker type"] if require_gpu_workers and not gpu else []
    for name, node_type in gpu.items():
        res = node_type.get("resources") or {}
        if res.get("GPU", 0) <= 0:
            out.append(f"GPU worker type {name!r} declares no GPU resource: {res}")
        if node_type.get("min_workers", 0) != 0:
            out.append(f"GPU worker type {name!r}: min_workers should be 0 (scale from zero)")
    return out


def image_problems(cfg: dict, ray_version: str) -> list[str]:
    found = images(cfg)
    if not found:
        return ["no docker image"]
    out = []
    for where, image in found:
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)(-py3\d+)?(-gpu|-cu\d+|-cpu)?", image)
        if not m:
            out.append(f"{where}: {image!r} is not a pinned rayproject/ray:<version>[-py3xx]"
                       "[-gpu|-cuXXX] image (ray-ml images are no longer published)")
        elif m.group(1) != ray_version:
            out.append(f"{where}: {image!r} pins ray {m.group(1)}, installed ray is "
                       f"{ray_version}")
    gpu_types = [k for k, v in worker_types(cfg).items() if is_gpu_type(k, v)]
    worker_images = [img for where, img in found
                     if where in ("docker.image", "docker.worker_image")
                     or where.split(".")[0] in gpu_types]
    if gpu_types and not any(re.search(r"-(gpu|cu\d+)$", img) for img in worker_images):
        out.append(f"GPU workers {gpu_types} run no -gpu/-cuXXX image: {worker_images}")
    return out


def install_pin_problems(cfg: dict) -> list[str]:
    version = PROJECT["version"]
    pins = pyproject_pins()
    out = []
    seen: dict[str, str | None] = {}
    for req in pip_requirements(cfg):
        name, exact = _exact_version(req)
        seen[name] = exact
        if name in MUST_PIN and exact is None:
            out.append(f"pip install {req!r}: not pinned to an exact version")
        elif name == canonicalize_name(PROJECT["name"]) and exact != version:
            out.append(f"pip install {req!r}: pins {exact}, pyproject.toml has {version}")
        elif name in pins and exact is not None and exact != pins[name]:
            out.append(f"pip install {req!r}: pins {exact}, pyproject.toml pins {pins[name]}")
    if canonicalize_name(PROJECT["name"]) not in seen:
        out.append(f"setup commands do not install {PROJECT['name']} {version}")
    return out


def secret_problems(text: str) -> list[str]:
    return [f"looks like a secret: {m.group(0)[:40]!r}"
            for pattern in SECRET_PATTERNS for m in pattern.finditer(text)]


def binding_problems(cfg: dict, text: str) -> list[str]:
    out = []
    heads = ray_start_params(cfg, "head_start_ray_commands")
    if len(heads) != 1 or not heads[0]["head"]:
        out.append(f"head_start_ray_commands should run one `ray start --head`: {heads}")
    for params in heads:
        if params["dashboard_host"] not in LOOPBACK:
            out.append(f"dashboard bound to {params['dashboard_host']!r}; use 127.0.0.1 and "
                       "an SSH tunnel (ray dashboard)")
    servers = mlflow_server_params(cfg)
    if len(servers) != 1:
        out.append(f"head_start_ray_commands should start one MLflow server, found "
                   f"{len(servers)}")
    for params in servers:
        host = params["host"]
        if host in ANY_ADDRESS and VPC_ONLY_MARKER not in text:
            out.append(f"mlflow server bound to {host} without the {VPC_ONLY_MARKER!r} "
                       "documentation of who can reach it")
        if host in ANY_ADDRESS and ingress_problems(cfg):
            out.append(f"mlflow server bound to {host} is documented {VPC_ONLY_MARKER} but "
                       "a security group rule opens a port to the internet")
        if params.get("disable_security_middleware"):
            out.append("mlflow server --disable-security-middleware")
        if params.get("allowed_hosts") and "*" in params["allowed_hosts"].split(","):
            out.append("mlflow server --allowed-hosts '*'")
    return out


def ingress_problems(cfg: dict) -> list[str]:
    rules = ((cfg.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    out = []
    for rule in rules:
        public = ([r.get("CidrIp") for r in rule.get("IpRanges", [])
                   if r.get("CidrIp") == "0.0.0.0/0"]
                  + [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
                     if r.get("CidrIpv6") == "::/0"])
        ssh_only = (rule.get("FromPort") == 22 and rule.get("ToPort") == 22
                    and str(rule.get("IpProtocol", "")).lower() == "tcp")
        if public and not ssh_only:
            out.append(f"security group rule opens ports {rule.get('FromPort')}-"
                       f"{rule.get('ToPort')}/{rule.get('IpProtocol')} to {public}")
    return out


def shell_syntax_problems(cfg: dict) -> list[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    out = []
    for where, cmd in all_commands(cfg):
        res = subprocess.run([bash, "-n", "-c", cmd], capture_output=True, text=True,
                             timeout=10)
        if res.returncode:
            out.append(f"{where}: bash -n: {res.stderr.strip()} in {cmd[:60]!r}")
    return out


# ------------------------------------------------------------------------------ tests


