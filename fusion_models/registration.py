"""Misregistration guard: measure how far source B sits from source A, and warp B onto A.

Most fusion rules assume that pixel (x, y) shows the same scene point in both sources. This
module checks that assumption (:func:`measure`) and, on request, restores it (:func:`register`).

Method, chosen on the shared IR/VIS, MRI/PET, MRI/CT, multi-focus and multi-exposure sets (the
evidence is ``benchmarks/registration_accuracy.py``):

- **Normalised gradient orientation, not intensity.** IR/VIS and MRI/PET differ in intensity,
  often with inverted contrast, so intensity correlation (and ECC on intensities, which only
  absorbs a *linear* photometric change) peaks in the wrong place or diverges; raw gradient
  magnitude is dominated by edges only one modality has. Each image becomes three channels:
  the doubled-angle gradient orientation ``((gx^2 - gy^2), 2 gx gy) / (|g|^2 + eps)`` (blind to
  contrast polarity and strength; eps = 80th percentile of ``|g|^2``) and a zero channel
  (OpenCV's ECC takes 1 or 3 channels).
- **Border margin.** A's outer 5 % is left out of the match: several sets have black frame
  lines or borders in one source only, which otherwise pull the estimate by pixels.
- **Pyramid ECC.** :func:`cv2.findTransformECC` runs coarse to fine over levels halving down to
  48 px on the short side: rigid (rotation + shift) on every level, then the requested model
  (affine or homography) on the finest. At the coarsest level it starts from both the identity
  and the :func:`cv2.phaseCorrelate` shift and keeps the start with the higher ECC correlation.
- **A second opinion.** Where the sources share little structure (generated IR/VIS pairs, smoke
  in TNO 02) ECC can settle on a consistent but wrong warp. :func:`measure` therefore also
  reports whether undoing the estimate raises the mutual information of the pair
  (:func:`mi_gain`); the command line warns only about estimates it confirms.

Conventions: images are float32 (H, W) arrays in [0, 1] (grey or luma). A transform is a 3x3
float64 matrix ``M`` mapping pixel coordinates of A to those of B: the scene point at A's
pixel ``(x, y)`` is at B's ``M @ (x, y, 1)`` (pixel centres at integer coordinates). Warping
B with ``M`` and ``cv2.WARP_INVERSE_MAP`` lays B onto A (:func:`warp`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

MODELS = {"rigid": cv2.MOTION_EUCLIDEAN, "affine": cv2.MOTION_AFFINE,
          "homography": cv2.MOTION_HOMOGRAPHY}
MEASURE_MAX_SIDE = 256  # measure() works on copies at most this large (see its docstring)
_MIN_SIDE = 48  # the pyramid stops before a level's short side drops below this
_MARGIN = 0.05  # fraction of A's short side left out at each border
_EPS_PERCENTILE = 80
#: measure() calls an estimate confirmed when warping B by it raises the mutual information
#: with A by more than this fraction (see mi_gain); generated IR/VIS pairs, registered by
#: construction, stay below +0.01 while their estimates read 1-20 px.
MI_MARGIN = 0.02
_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)


@dataclass(frozen=True)
class Misalignment:
    """How B sits relative to A; lengths in pixels of the full-size images.

    Attributes:
        dx, dy: displacement of the image centre from A to B (x right, y down).
        rotation_deg: rotation of B relative to A, counter-clockwise as displayed (the sign of
            :func:`cv2.getRotationMatrix2D`).
        scale: isotropic scale of B relative to A (sqrt of the linear part's determinant).
        misalignment_px: the largest displacement of the four image corners under the
            transform, >= 0 (0 for a registered pair); NaN when the estimate failed.
        correlation: final ECC correlation coefficient in [-1, 1] (NaN when it failed).
        matrix: the 3x3 transform A -> B (see the module docstring).
        mi_gain: relative gain in mutual information from undoing the transform
            (:func:`mi_gain`; NaN when not computed). Only :func:`measure` fills it.
    """

    dx: float
    dy: float
    rotation_deg: float
    scale: float
    misalignment_px: float
    correlation: float
    matrix: np.ndarray
    mi_gain: float = math.nan

    @property
    def ok(self) -> bool:
        """True when the estimate converged (``misalignment_px`` is finite)."""
        return math.isfinite(self.misalignment_px)

    @property
    def confirmed(self) -> bool:
        """True when mutual information backs the estimate (``mi_gain`` > :data:`MI_MARGIN`)."""
        return self.mi_gain > MI_MARGIN

    def summary(self) -> dict[str, float]:
        """The scalar fields, rounded (JSON- and log-friendly)."""
        return {"dx": round(self.dx, 3), "dy": round(self.dy, 3),
                "rotation_deg": round(self.rotation_deg, 4), "scale": round(self.scale, 5),
                "misalignment_px": round(self.misalignment_px, 3),
                "correlation": round(self.correlation, 4), "mi_gain": round(self.mi_gain, 4)}


def luma01(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) RGB image -> (H, W) float32 luma in [0, 1].

    uint16 is read on 0..65535, anything else (uint8, float) on 0..255;
    luma = 0.299 R + 0.587 G + 0.114 B.
    """
    x = img.astype(np.float32) / np.float32(65535.0 if img.dtype == np.uint16 else 255.0)
    if x.ndim == 3:
        x = x[:, :, 0] if x.shape[2] == 1 else x[:, :, :3] @ np.float32([0.299, 0.587, 0.114])
    return np.ascontiguousarray(x, dtype=np.float32)


def _check(img: np.ndarray, name: str) -> np.ndarray:
    if img.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) grey image, got shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32)


def _features(img: np.ndarray) -> np.ndarray:
    """(H, W) float32 -> (H, W, 3) float32 doubled-angle gradient orientation (see module doc)."""
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    power = gx * gx + gy * gy
    den = power + np.float32(np.percentile(power, _EPS_PERCENTILE) + 1e-12)
    return np.dstack([(gx * gx - gy * gy) / den, 2 * gx * gy / den, np.zeros_like(den)])


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _scaling(small: tuple[int, int], big: tuple[int, int]) -> np.ndarray:
    """3x3 map of pixel coordinates from a (W, H) ``small`` image to a resized ``big`` one
    (cv2.resize's pixel-centre convention: x_big = k x_small + (k - 1) / 2)."""
    kx, ky = big[0] / small[0], big[1] / small[1]
    return np.array([[kx, 0, (kx - 1) / 2], [0, ky, (ky - 1) / 2], [0, 0, 1]])


def _rescale(matrix: np.ndarray, small: tuple[int, int], big: tuple[int, int]) -> np.ndarray:
    """A transform between ``small``-sized images, expressed between ``big``-sized ones."""
    s = _scaling(small, big)
    return s @ matrix @ np.linalg.inv(s)


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])


def _pyramid_sizes(shape: tuple[int, int], max_side: int | None) -> list[tuple[int, int]]:
    """(W, H) of each level, finest first: the working size, then halves down to _MIN_SIDE."""
    h, w = shape
    k = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    sizes = [(max(1, round(w * k)), max(1, round(h * k)))]
    while min(sizes[-1]) // 2 >= _MIN_SIDE:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class _Level:
    """One pyramid level: A's features without the border margin, B's features in full."""

    def __init__(self, a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> None:
        self.size = size
        self.m = max(2, round(_MARGIN * min(size)))
        fa = _features(_resize(a, size))
        self.fa = np.ascontiguousarray(fa[self.m:-self.m, self.m:-self.m])
        self.fb = _features(_resize(b, size))

    def ecc(self, warp: np.ndarray, motion: int) -> tuple[float, np.ndarray]:
        """Refine a 3x3 warp A -> B of this level; (NaN, input warp) when ECC fails (it raises
        when it diverges or an image is flat)."""
        crop = _translation(self.m, self.m)  # template pixel -> A pixel
        start = warp @ crop
        start = start if motion == cv2.MOTION_HOMOGRAPHY else start[:2]
        try:
            rho, out = cv2.findTransformECC(self.fa, self.fb, start.astype(np.float32), motion,
                                            _CRITERIA, None, 5)
        except cv2.error as exc:
            log.debug("ECC did not converge: %s", str(exc).strip().splitlines()[-1])
            return math.nan, warp
        out = np.vstack([out, [0, 0, 1]]) if out.shape[0] == 2 else out.astype(np.float64)
        return float(rho), out @ np.linalg.inv(crop)

    def phase_shift(self) -> np.ndarray:
        """Translation A -> B from phase correlation of the orientation energy (Hann window)."""
        energy = [np.hypot(f[:, :, 0], f[:, :, 1]).astype(np.float32) for f in (self.fa, self.fb)]
        fb = energy[1][self.m:-self.m, self.m:-self.m]
        window = cv2.createHanningWindow((fb.shape[1], fb.shape[0]), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(np.ascontiguousarray(energy[0]),
                                         np.ascontiguousarray(fb), window)
        return _translation(dx, dy)


def _coarse_start(level: _Level) -> tuple[float, np.ndarray]:
    """Rigid ECC at the coarsest level from the identity and from the phase-correlation shift;
    the result with the higher correlation (NaN, identity when both fail)."""
    best = (math.nan, np.eye(3))
    for start in (np.eye(3), level.phase_shift()):
        rho, warp = level.ecc(start, cv2.MOTION_EUCLIDEAN)
        if math.isfinite(rho) and (math.isnan(best[0]) or rho > best[0]):
            best = (rho, warp)
    return best


def estimate(a: np.ndarray, b: np.ndarray, model: str = "rigid",
             max_side: int | None = None) -> tuple[np.ndarray, float]:
    """Estimate the transform A -> B (see the module docstring for the method).

    Args:
        a, b: (H, W) float32 images in [0, 1] of equal size (grey or luma).
        model: ``rigid`` (rotation + shift), ``affine`` or ``homography``.
        max_side: work on copies at most this many pixels on the long side (None: full size).

    Returns:
        (3x3 float64 transform in full-size pixel coordinates, final ECC correlation in [-1, 1];
        NaN when the finest level did not converge).
    """
    a, b = _check(a, "a"), _check(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a is {a.shape} but b is {b.shape}; registration needs equal sizes")
    if model not in MODELS:
        raise ValueError(f"unknown registration model {model!r}; valid: {', '.join(MODELS)}")
    sizes = _pyramid_sizes(a.shape, max_side)
    level = _Level(a, b, sizes[-1])
    rho, warp = _coarse_start(level)
    for i in range(len(sizes) - 2, -1, -1):
        level = _Level(a, b, sizes[i])
        rho, warp = level.ecc(_rescale(warp, sizes[i + 1], sizes[i]), cv2.MOTION_EUCLIDEAN)
    if model != "rigid" and math.isfinite(rho):
        rho_model, refined = level.ecc(warp, MODELS[model])
        if math.isfinite(rho_model):
            rho, warp = rho_model, refined
    return _rescale(warp, sizes[0], (a.shape[1], a.shape[0])), rho


def describe(matrix: np.ndarray, shape: tuple[int, int], correlation: float) -> Misalignment:
    """Summarise a 3x3 transform A -> B between (H, W) images as a :class:`Misalignment`.

    A transform that folds the image or moves a corner by more than half the image size is
    reported as failed (``misalignment_px`` NaN), like a ``correlation`` of NaN.
    """
    h, w = shape
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float)
    moved = corners @ matrix.T
    with np.errstate(divide="ignore", invalid="ignore"):
        moved = moved[:, :2] / moved[:, 2:]
    centre = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    c = matrix @ centre
    lin = matrix[:2, :2]
    det = float(np.linalg.det(lin))
    worst = float(np.abs(moved - corners[:, :2]).max()) if np.isfinite(moved).all() else math.inf
    sane = math.isfinite(correlation) and det > 0 and worst <= max(h, w) / 2
    return Misalignment(
        dx=float(c[0] / c[2] - centre[0]), dy=float(c[1] / c[2] - centre[1]),
        rotation_deg=math.degrees(math.atan2(lin[0, 1] - lin[1, 0], lin[0, 0] + lin[1, 1])),
        scale=math.sqrt(abs(det)), misalignment_px=worst if sane else math.nan,
        correlation=correlation, matrix=matrix,
    )


def _mutual_information(x: np.ndarray, y: np.ndarray, bins: int = 32) -> float:
    """MI in nats of two same-shape float arrays in [0, 1] (``bins`` x ``bins`` histogram)."""
    xi = np.clip((x * bins).astype(np.int64), 0, bins - 1)
    yi = np.clip((y * bins).astype(np.int64), 0, bins - 1)
    joint = np.bincount((xi * bins + yi).ravel(), minlength=bins * bins).reshape(bins, bins)
    p = joint / joint.sum()
    outer = p.sum(axis=1, keepdims=True) @ p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def mi_gain(a: np.ndarray, b: np.ndarray, matrix: np.ndarray,
            max_side: int | None = MEASURE_MAX_SIDE) -> float:
    """Does undoing ``matrix`` make B explain A better? An independent check of an estimate.

    Mutual information does not care how the modalities map intensities, so it tests an ECC
    estimate without sharing its assumptions. Both images are downscaled (long side at most
    ``max_side``) and smoothed (Gaussian sigma 1 px, so that the bilinear resampling of the
    warp does not by itself change the statistics); A's 5 % border is left out.

    Args:
        a, b: (H, W) float32 images in [0, 1] of equal size.
        matrix: 3x3 transform A -> B in full-size pixels.

    Returns:
        (MI(A, B warped onto A) - MI(A, B)) / MI(A, B): > 0 when the warp helps (NaN when
        MI(A, B) is 0, e.g. a flat image).
    """
    size = _pyramid_sizes(a.shape, max_side)[0]
    small = _rescale(matrix, (a.shape[1], a.shape[0]), size)
    sa, sb = (cv2.GaussianBlur(_resize(_check(x, n), size), (0, 0), 1.0)
              for x, n in ((a, "a"), (b, "b")))
    m = max(2, round(_MARGIN * min(size)))
    inner = (slice(m, -m), slice(m, -m))
    before = _mutual_information(sa[inner], sb[inner])
    after = _mutual_information(sa[inner], warp(sb, small)[inner])
    return (after - before) / before if before > 0 else math.nan


def measure(a: np.ndarray, b: np.ndarray, max_side: int | None = MEASURE_MAX_SIDE,
            model: str = "rigid") -> Misalignment:
    """Residual misalignment of B relative to A (the cheap check).

    Args:
        a, b: (H, W) float32 images in [0, 1] of equal size.
        max_side: long side of the working copies: 256 px by default, which keeps a 640x480
            pair at a few tens of ms while staying within ~0.1 px of the full-size estimate on
            the shared sets; None measures at full size.
        model: ``rigid`` by default: on multi-modal pairs the scale and shear that ``affine``
            adds are poorly determined (MRI/PET: the skull in MRI vs the brain in PET) and
            would raise false alarms.

    Returns:
        A :class:`Misalignment` with ``mi_gain`` (:func:`mi_gain`; its ``confirmed`` says
        whether mutual information backs the estimate); ``misalignment_px`` is NaN when the
        estimate failed.
    """
    matrix, rho = estimate(a, b, model, max_side)
    found = describe(matrix, a.shape, rho)
    if not found.ok:
        return found
    return dataclasses.replace(found, mi_gain=mi_gain(a, b, matrix, max_side))


def warp(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Lay an image of B onto A's pixel grid (bilinear, borders replicated).

    Args:
        img: (H, W) or (H, W, C) array with C <= 4, uint8, uint16 or float32, any value range.
        matrix: 3x3 transform A -> B (:func:`estimate`, :func:`register`).

    Returns:
        An array of the same shape and dtype.
    """
    h, w = img.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if np.allclose(matrix[2], [0, 0, 1]):
        out = cv2.warpAffine(img, matrix[:2], (w, h), flags=flags,
                             borderMode=cv2.BORDER_REPLICATE)
    else:
        out = cv2.warpPerspective(img, matrix, (w, h), flags=flags,
                                  borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(img.shape)


def register(a: np.ndarray, b: np.ndarray, model: str = "affine",
             max_side: int | None = None) -> tuple[np.ndarray, Misalignment]:
    """Warp B onto A.

    Args:
        a, b: (H, W) float32 images in [0, 1] of equal size.
        model: ``rigid``, ``affine`` or ``homography``.
        max_side: as in :func:`estimate` (None: the finest level runs at full size).

    Returns:
        (B laid onto A: (H, W) float32 in [0, 1], the :class:`Misalignment` of the input B).
        When the estimate failed, B comes back unchanged and ``misalignment_px`` is NaN.
    """
    matrix, rho = estimate(a, b, model, max_side)
    found = describe(matrix, a.shape, rho)
    b = _check(b, "b")
    return (warp(b, matrix) if found.ok else b.copy()), found


def align_sources(a: np.ndarray, b: np.ndarray, model: str | None = None,
                  check: bool = True) -> tuple[np.ndarray, Misalignment | None]:
    """Measure (``check``) or register (``model``) a stored pair; colour B is warped as a whole.

    Args:
        a, b: (H, W) or (H, W, C) images of equal H and W, uint8/uint16 or float on 0..255;
            the estimate uses their luma (:func:`luma01`).
        model: ``rigid``/``affine``/``homography`` to warp B onto A (full-size estimate), or
            None to leave B as it is.
        check: without ``model``, measure the misalignment (:func:`measure`, downscaled).

    Returns:
        (B, aligned when ``model`` is given and the estimate succeeded, same shape and dtype;
        the :class:`Misalignment` of the input B, or None when neither was asked).
    """
    if model is None and not check:
        return b, None
    la, lb = luma01(a), luma01(b)
    if model is None:
        return b, measure(la, lb)
    matrix, rho = estimate(la, lb, model)
    found = describe(matrix, la.shape, rho)
    return (warp(b, matrix) if found.ok else b), found
