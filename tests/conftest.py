"""Shared test fixtures: where ../shared lives, and small helpers to read its images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
