"""The package layout holds: which layer may import which at module level, each package's
public names exist, and the pure-PyTorch paths import no Ray, Optuna or MLflow."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "training", "evaluation", "deploy", "search", "reporting")
#: What each orchestrator package may import at module level (lazy, in-function imports may
#: reach further: they load only when that command runs).
ALLOWED = {
    "common": set(),
    "training": {"common"},
    "evaluation": {"common"},
    "deploy": {"common", "training", "evaluation"},
    "search": {"common", "training", "evaluation", "deploy"},
    "reporting": {"common", "training", "evaluation", "deploy", "search"},
}
HEAVY = ("ray", "mlflow", "optuna")


def _module_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _all_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_orchestrator_is_packages_and_a_cli():
    top = sorted(p.name for p in (REPO / "orchestrator").glob("*.py"))
    assert top == ["__init__.py", "cli.py"]
    for pkg in PACKAGES:
        assert (REPO / "orchestrator" / pkg / "__init__.py").is_file(), pkg


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_import_only_lower_layers_at_module_level(pkg):
    wrong = []
    for path in sorted((REPO / "orchestrator" / pkg).glob("*.py")):
        for module in _module_level_imports(path):
            parts = module.split(".")
            if parts[0] == "orchestrator" and len(parts) > 1 and parts[1] != pkg \
                    and parts[1] not in ALLOWED[pkg]:
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
            if parts[0] in HEAVY:
                wrong.append(f"{path.relative_to(REPO)} imports {module} at module level")
    assert not wrong, wrong


def test_fusion_models_imports_no_orchestration():
    wrong = [f"{p.relative_to(REPO)}: {m}" for p in sorted((REPO / "fusion_models").rglob("*.py"))
             for m in _all_imports(p) if m.split(".")[0] in ("orchestrator", *HEAVY)]
    assert not wrong, wrong


@pytest.mark.parametrize("pkg", PACKAGES)
def test_public_names_exist(pkg):
    module = importlib.import_module(f"orchestrator.{pkg}")
    assert len(set(module.__all__)) == len(module.__all__)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, missing
    assert module.__doc__ and len(module.__doc__) > 100


def test_training_loop_and_eval_import_without_ray_mlflow_optuna():
    code = ("import sys, orchestrator.training, orchestrator.evaluation, orchestrator.deploy, "
            "orchestrator.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
