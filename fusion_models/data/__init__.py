"""Data for fusion models: image I/O, paired-folder sets, colour plans, patches, generated sets.

Pure PyTorch/numpy/OpenCV; nothing here imports Ray, MLflow or Optuna. See docs/data.md.
"""

from __future__ import annotations

from .colour import (
    RULES,
    ColourPlan,
    default_rule,
    fuse_chroma,
    ihs_to_rgb,
    plan_colour,
    rgb_to_gray,
    rgb_to_ihs,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from .io import (
    IMAGE_EXTENSIONS,
    DataError,
    ImageReadError,
    probe_image,
    read_image,
    to_float255,
    to_tensor255,
    write_image,
)
from .pairs import (
    ROLE_PAIRS,
    TASKS,
    Pair,
    PairDataset,
    PairSet,
    load_pair,
    open_pair_set,
    validate,
)
from .pansharpen import PanSet, generated_pan_set, load_pan_sample, open_pan_set, upsample_ms
from .patches import (
    PATCH_PRESETS,
    PatchDataset,
    PatchSpec,
    PatchStore,
    extract_patches,
    patch_preset,
)
from .synthetic import generated_set, make_ivif, make_multifocus, parse_generated

__all__ = [
    "IMAGE_EXTENSIONS",
    "PATCH_PRESETS",
    "ROLE_PAIRS",
    "RULES",
    "TASKS",
    "ColourPlan",
    "DataError",
    "ImageReadError",
    "Pair",
    "PairDataset",
    "PairSet",
    "PanSet",
    "PatchDataset",
    "PatchSpec",
    "PatchStore",
    "default_rule",
    "extract_patches",
    "fuse_chroma",
    "generated_pan_set",
    "generated_set",
    "ihs_to_rgb",
    "load_pair",
    "load_pan_sample",
    "make_ivif",
    "make_multifocus",
    "open_pair_set",
    "open_pan_set",
    "parse_generated",
    "patch_preset",
    "plan_colour",
    "probe_image",
    "read_image",
    "rgb_to_gray",
    "rgb_to_ihs",
    "rgb_to_ycbcr",
    "to_float255",
    "to_tensor255",
    "upsample_ms",
    "validate",
    "write_image",
    "ycbcr_to_rgb",
]
