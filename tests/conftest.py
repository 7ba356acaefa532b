"""Shared test fixtures: where ../shared lives, and small helpers to read its images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# torch's OpenMP threads spin while waiting; on a loaded 2-core machine that makes some ops
# 10-100x slower. Passive waiting must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the repo (real public test sets and golden values)."""
    if not (SHARED / "data").is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set FUSION_SHARED_DIR")
    return SHARED


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def golden(shared_dir: Path) -> dict:
    """../shared/golden/metrics_reference_public.json, parsed."""
    return json.loads((shared_dir / "golden" / "metrics_reference_public.json").read_text())


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (start-up costs ~10 s here)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    try:
        yield ray
    finally:
        ray.shutdown()
