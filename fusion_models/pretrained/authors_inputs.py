"""The released models' authors' own preprocessing of one source image to their grey input.

Pure numpy + PIL (no TensorFlow, no MATLAB), so tests can rebuild the exact 8-bit inputs the
authors' TF1 test scripts were fed when ``tests/fixtures/authors_tf_outputs.json`` was made
(``benchmarks/authors_reference``). Every function returns a ``uint8`` array of shape
``(H, W)``, values 0..255, for an image file of ``W x H`` pixels.

Rules of :func:`authors_grey` (``task`` as in :mod:`fusion_models.pretrained.released`):

- a grey image (PIL mode ``L``, or ``RGB``/``RGBA`` whose R, G and B are equal) is returned as it
  is, for every task;
- ``mff`` colour: Y of MFF-GAN's ``RGB2YCbCr/RGB2YCbCr.m`` + ``main.m``
  (``Y = 0.257*R + 0.504*G + 0.098*B + 16`` on the ``uint8`` image from ``imread``); MATLAB's
  mixed ``double * uint8`` arithmetic gives ``uint8`` results, so each product is rounded (half
  away from zero) and saturated before the saturating ``uint8`` sums. ``main.m`` then writes Y
  as JPEG (``imwrite(Y, '….jpg')``, lossy); we keep the exact Y (no JPEG round trip). PMGI's
  Multi-focus folder ships no conversion script, so PMGI multi-focus uses this rule too;
- ``mef`` colour: Y of PMGI's ``Code_PMGI/Multi-exp/RGB2YCbCr/RGB2YCbCr.m`` + ``main_shuru.m``,
  the same uint8 arithmetic but with the authors' coefficient ``0.564*G`` (sic; MFF-GAN and
  BT.601 use 0.504), saved losslessly as ``.bmp``;
- ``medical`` colour (PET): I of PMGI's ``Code_PMGI/Medical/RGB_IHS/rgb2ihs/{main,rgb2ihs}.m``:
  ``im2double`` (x/255), ``I = (r + g + b) / sqrt(3)`` (in [0, sqrt(3)]), ``imwrite`` of a double
  image = ``im2uint8``: values above 1 saturate to 255, others ``uint8(255*I + 0.5)``;
- ``ivif`` / ``pan`` colour: what the authors' test scripts themselves read from a colour file:
  ``scipy.misc.imread(path, flatten=True, mode='YCbCr')`` = PIL ``convert('YCbCr')`` (uint8),
  then ``convert('F')`` (which PIL does via RGB): ``(299*R' + 587*G' + 114*B') / 1000`` of the
  round-tripped R'G'B'. That is not an integer in general; we round it half up to ``uint8``
  (the authors would have fed the float; the fixture records our rounded input).

:func:`authors_pan_pair` makes the pansharpening pair (see its docstring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Task = Literal["ivif", "medical", "mff", "mef", "pan"]
TASKS: tuple[str, ...] = ("ivif", "medical", "mff", "mef", "pan")

#: (R, G, B) coefficients and offset of the authors' RGB2YCbCr.m, per task
_Y_COEFFS: dict[str, tuple[float, float, float]] = {
    "mff": (0.257, 0.504, 0.098),  # MFF-GAN RGB2YCbCr/RGB2YCbCr.m
    "mef": (0.257, 0.564, 0.098),  # PMGI Code_PMGI/Multi-exp/RGB2YCbCr/RGB2YCbCr.m
}


def _rgb(path: str | Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(grey HxW, None) for a grey file, else (None, RGB HxWx3), both uint8."""
    im = Image.open(path)
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8), None
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0].copy(), None
        return None, rgb
    raise ValueError(f"{path}: PIL mode {im.mode!r} is not handled (8-bit L/RGB/RGBA only)")


def _matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round`` (half away from zero) for non-negative ``x``, exact at ties."""
    floor = np.floor(x)
    return np.where(x - floor >= 0.5, floor + 1.0, floor)


def _matlab_y(rgb: np.ndarray, coeffs: tuple[float, float, float]) -> np.ndarray:
    """``c1*R + c2*G + c3*B + 16`` with MATLAB uint8 semantics (see the module docstring)."""
    y = np.full(rgb.shape[:2], 0.0)
    for channel, c in enumerate(coeffs):
        term = np.clip(_matlab_round(c * rgb[..., channel].astype(np.float64)), 0, 255)
        y = np.minimum(y + term, 255.0)
    return np.minimum(y + 16.0, 255.0).astype(np.uint8)


def _ihs_intensity(rgb: np.ndarray) -> np.ndarray:
    """PMGI rgb2ihs.m's I of ``im2double(rgb)``, written as ``imwrite`` writes a double."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    k = 1.0 / np.sqrt(3.0)
    intensity = k * r + k * g + k * b
    scaled = np.floor(255.0 * np.clip(intensity, 0.0, 1.0) + 0.5)
    return scaled.astype(np.uint8)


def _scipy_flatten_ycbcr(path: str | Path) -> np.ndarray:
    """``scipy.misc.imread(path, flatten=True, mode='YCbCr')`` (scipy <= 1.1), float32."""
    im = Image.open(path)
    if im.mode != "YCbCr":
        im = im.convert("YCbCr")
    return np.asarray(im.convert("F"), dtype=np.float32)


def authors_grey(path: str | Path, task: str) -> np.ndarray:
    """The authors' grey ``uint8`` (H, W) input made from the image file ``path`` for ``task``
    (one of :data:`TASKS`); rules and author files in the module docstring.

    Raises:
        ValueError: unknown ``task`` or an image mode other than 8-bit L/RGB/RGBA.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    grey, rgb = _rgb(path)
    if grey is not None:
        return grey
    assert rgb is not None
    if task in _Y_COEFFS:
        return _matlab_y(rgb, _Y_COEFFS[task])
    if task == "medical":
        return _ihs_intensity(rgb)
    luma = _scipy_flatten_ycbcr(path).astype(np.float64)
    return np.clip(np.floor(luma + 0.5), 0, 255).astype(np.uint8)


def authors_pan_pair(path: str | Path, band: int = 0,
                     factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A pansharpening test pair for PMGI ``Pan_shapening/{1,2}`` made from one colour image:
    ``(ms, pan)``, both ``uint8`` (H, W) at the full size.

    - ``pan`` (the scripts' ``Test_vi``, the gradient target of their loss in ``model.py``):
      ``authors_grey(path, "pan")``, the scripts' own luma of the colour file.
    - ``ms`` (``Test_ir``, the intensity target): channel ``band`` of the RGB image, shrunk by
      ``factor`` and enlarged back to (H, W) with PIL bicubic (a = -0.5, antialiased when
      shrinking, like MATLAB ``imresize``'s default). The authors' pipeline feeds ``Test_ir``
      and ``Test_vi`` images of the same size one MS band at a time (one output band per run,
      four runs for their 4-band data, then ``PMGI_pansharpening_match.m``) but ships neither
      the data nor the resampling code; the bicubic rule is our choice. H and W must be
      multiples of ``factor``.

    Raises:
        ValueError: a grey image, ``band`` not 0..2, or a size not divisible by ``factor``.
    """
    grey, rgb = _rgb(path)
    if rgb is None or band not in (0, 1, 2):
        raise ValueError(f"{path}: need a colour image and band 0..2 (got band {band})")
    h, w = rgb.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"{path}: size {w}x{h} is not a multiple of {factor}")
    channel = Image.fromarray(np.ascontiguousarray(rgb[..., band]))
    small = channel.resize((w // factor, h // factor), Image.Resampling.BICUBIC)
    ms = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    return ms, authors_grey(path, "pan")


def case_inputs(sources: list[str], task: str, shared: str | Path) -> list[np.ndarray]:
    """The uint8 inputs of one fixture case (``tests/fixtures/authors_tf_outputs.json``).

    ``sources`` entries: ``<set>/<folder>/<name>`` below ``<shared>/data``,
    ``weights:<path>`` below ``<shared>/weights`` (the authors' shipped test pairs), or
    ``pan:<set>/<folder>/<name>#ms|#pan`` (:func:`authors_pan_pair`).
    """
    shared = Path(shared)
    out = []
    for source in sources:
        if source.startswith("pan:"):
            rel, _, which = source[len("pan:"):].partition("#")
            ms, pan = authors_pan_pair(shared / "data" / rel)
            out.append(ms if which == "ms" else pan)
        elif source.startswith("weights:"):
            out.append(authors_grey(shared / "weights" / source[len("weights:"):], task))
        else:
            out.append(authors_grey(shared / "data" / source, task))
    return out
