"""Image reading shared by the metric tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def grey_cdd(path: Path) -> np.ndarray:
    """CDD's reading (the golden values' input convention): cv2, BGR->GRAY on float32, rounded;
    1-channel files as they are. Returns (H, W) float64 grey values 0..255."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    if img.ndim == 3:
        img = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return np.round(img).astype(np.float64)
