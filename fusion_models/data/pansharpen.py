"""Pansharpening data: panchromatic (PAN) + multispectral (MS) sets at two resolutions.

Layout of a set folder (files pair by stem, as in :mod:`fusion_models.data.pairs`)::

    <set>/pan/<name>.png   PAN, grey, H x W
    <set>/ms/<name>.png    MS, C bands at H/ratio x W/ratio (RGB image file, or ``.npy``
                           (h, w, C) array for any band count: uint8/uint16 scaled as
                           images are, floats taken as 0..255 values)
    <set>/ref/<name>.png   optional reference MS at H x W (reduced-resolution / Wald
                           protocol evaluation); same band count as ms/

``ratio`` (PAN pixels per MS pixel along each axis) is 4 by default; a PAN whose size is not
exactly ``ratio`` times its MS size is one :class:`~fusion_models.data.io.DataError` naming
both files and the size expected.

**Upsampling rule** (every method and metric that needs the MS at PAN size uses
:func:`upsample_ms`): bicubic, ``torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)`` (Keys kernel a = -0.75, pixel centres at half-integer coordinates:
low-res pixel k covers high-res pixels ``ratio*k .. ratio*k + ratio - 1``), result clamped to
0..255.

**Generated Wald-protocol set** (``generated:pan[:val|:test]``, :func:`make_pan`): the
reference is an RGB crop of a colour photo that scikit-image ships (the splits' photo pools of
:mod:`fusion_models.data.synthetic`, colour photos only); MS = MTF-like Gaussian blur of the
reference (gain ``gnyq`` = 0.3 at the MS Nyquist frequency 1/(2 ratio) cycles/pixel, so
sigma = ratio * sqrt(-2 ln gnyq) / pi = 1.98 px for ratio 4), then decimation at the centre of
every ratio x ratio block (the mean of the central 2 x 2 pixels for even ratios, which is where
:func:`upsample_ms` puts the low-res pixel centre); PAN = BT.601 luma of the reference
(0.299 R + 0.587 G + 0.114 B) at full resolution. See docs/pansharpening.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import skimage
import torch
import torch.nn.functional as F
from torch import Tensor

from . import synthetic
from .io import IMAGE_EXTENSIONS, DataError, ImageReadError, probe_image, read_image, to_float255
from .pairs import _listing, _natural_key

logger = logging.getLogger(__name__)

PAN_VERSION = 1
DEFAULT_RATIO = 4
#: PAN spectral weights of the generated set (BT.601 luma of the RGB reference)
PAN_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: MTF gain at the MS Nyquist frequency of the generated set's blur (a generic sensor value)
GNYQ = 0.3
#: excluded from the generated pan pools: a nearly black sky (band means ~19 of 255), on
#: which ERGAS (error relative to each band's mean) measures noise, not fusion
_TOO_DARK = frozenset({"hubble_deep_field.jpg"})
_MIN_BAND_MEAN = 24.0
_CROP_TRIES = 8


@dataclass(frozen=True)
class PanSample:
    """One PAN/MS (and optional reference) triple of a :class:`PanSet`."""

    name: str
    path_pan: Path
    path_ms: Path
    path_ref: Path | None = None


@dataclass(frozen=True)
class PanSet:
    """A checked pansharpening set (module docstring for the layout).

    Attributes:
        root: the set folder.
        ratio: PAN pixels per MS pixel along each axis.
        samples: in natural name order.
        has_ref: every sample has a ``ref/`` reference (Wald protocol evaluation possible).
    """

    root: Path
    ratio: int
    samples: list[PanSample] = field(default_factory=list)
    has_ref: bool = False

    def __len__(self) -> int:
        return len(self.samples)


def _size(path: Path) -> tuple[int, int]:
    """(W, H) from the header, or from an ``.npy`` array's shape."""
    if path.suffix.lower() == ".npy":
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            raise ImageReadError(f"cannot read array '{path}': {exc}") from None
        if len(shape) not in (2, 3):
            raise ImageReadError(f"'{path}' has shape {shape}; expected (H, W) or (H, W, C)")
        return int(shape[1]), int(shape[0])
    return probe_image(path)


def _index(folder: Path) -> dict[str, Path]:
    """Stem -> file of one folder: image files, or ``.npy`` arrays (any band count)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    bad = [p.name for p in files if p.suffix.lower() not in (*IMAGE_EXTENSIONS, ".npy")]
    if bad or not files:
        raise DataError(f"'{folder}' " + (f"holds files with unknown extensions: [{_listing(bad)}]"
                        if bad else "is empty") + f"; expected {', '.join(IMAGE_EXTENSIONS)} "
                        "or .npy files")
    index: dict[str, Path] = {}
    for path in files:
        if path.stem in index:
            raise DataError(f"'{folder}' holds two files with the stem '{path.stem}': "
                            f"'{index[path.stem].name}' and '{path.name}'; keep one")
        index[path.stem] = path
    return index


def _check_sizes(sample: PanSample, ratio: int) -> str | None:
    """A problem of one triple's sizes, naming the files, or None."""
    pw, ph = _size(sample.path_pan)
    mw, mh = _size(sample.path_ms)
    if (pw, ph) != (mw * ratio, mh * ratio):
        want = f"{pw / ratio:g}x{ph / ratio:g}"
        return (f"'{sample.path_ms}' is {mw}x{mh} but '{sample.path_pan}' is {pw}x{ph}: with "
                f"ratio {ratio} the MS must be {want} (PAN size / ratio, W x H)")
    if sample.path_ref is not None and _size(sample.path_ref) != (pw, ph):
        rw, rh = _size(sample.path_ref)
        return (f"'{sample.path_ref}' is {rw}x{rh} but '{sample.path_pan}' is {pw}x{ph}: the "
                "reference must have the PAN size")
    return None


def open_pan_set(set_dir: str | Path, ratio: int = DEFAULT_RATIO) -> PanSet:
    """Open and check a ``pan/`` + ``ms/`` (+ optional ``ref/``) set (module docstring).

    Raises:
        DataError: a missing folder, unpaired files, unreadable headers or sizes that do not
            match ``ratio``; one error listing every problem, each naming its file.
    """
    if ratio < 1:
        raise DataError(f"ratio must be a positive integer, got {ratio}")
    root = Path(set_dir)
    dirs = {k: root / k for k in ("pan", "ms", "ref")}
    for key in ("pan", "ms"):
        if not dirs[key].is_dir():
            raise DataError(f"'{root}' is not a pansharpening set: no '{key}/' folder "
                            "(expected pan/ and ms/, optionally ref/)")
    idx = {k: _index(d) for k, d in dirs.items() if d.is_dir()}
    names = set(idx["pan"]) | set(idx["ms"])
    for key in idx:
        missing = sorted(names - set(idx[key]), key=_natural_key)
        if missing:
            raise DataError(f"'{dirs[key]}' lacks files for: [{_listing(missing)}] "
                            "(pan/, ms/ and ref/ files pair by stem)")
    samples = [PanSample(n, idx["pan"][n], idx["ms"][n], idx.get("ref", {}).get(n))
               for n in sorted(names, key=_natural_key)]
    problems = []
    for sample in samples:
        try:
            problem = _check_sizes(sample, ratio)
        except ImageReadError as exc:
            problem = str(exc)
        if problem:
            problems.append(problem)
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the pansharpening set '{root}':\n  "
                        + "\n  ".join(problems[:10]))
    logger.info("opened %d PAN/MS samples from '%s' (ratio %d, ref %s)", len(samples), root,
                ratio, "ref" in idx)
    return PanSet(root, ratio, samples, "ref" in idx)


def _read(path: Path) -> Tensor:
    """(C, H, W) float32 0..255 from an image file or a ``.npy`` (H, W[, C]) array."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        data = arr.astype(np.float32) if arr.dtype.kind == "f" else to_float255(arr)
    else:
        data = to_float255(read_image(path))
    return torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))


def upsample_ms(ms: Tensor, ratio: int = DEFAULT_RATIO) -> Tensor:
    """The project's one MS upsampling rule (module docstring).

    Args:
        ms: (B, C, h, w) or (C, h, w) MS on the 0..255 scale.
        ratio: integer scale factor.

    Returns:
        (B, C, h*ratio, w*ratio) (or without B), bicubic, ``align_corners=False``, clamped
        to 0..255.
    """
    batched = ms if ms.ndim == 4 else ms.unsqueeze(0)
    size = (batched.shape[-2] * ratio, batched.shape[-1] * ratio)
    out = F.interpolate(batched.float(), size=size, mode="bicubic", align_corners=False)
    out = out.clamp(0.0, 255.0)
    return out if ms.ndim == 4 else out[0]


def load_pan_sample(sample: PanSample, ratio: int = DEFAULT_RATIO) -> dict[str, Tensor]:
    """Decode one triple.

    Returns:
        ``pan`` (1, H, W), ``ms`` (C, H/ratio, W/ratio), ``ms_up`` (C, H, W) (by
        :func:`upsample_ms`) and, when the set has it, ``ref`` (C, H, W); float32, 0..255.

    Raises:
        DataError: PAN not grey, or the reference's band count differs from the MS's.
    """
    pan, ms = _read(sample.path_pan), _read(sample.path_ms)
    if pan.shape[0] != 1:
        raise DataError(f"'{sample.path_pan}' has {pan.shape[0]} channels; PAN must be grey")
    out = {"pan": pan, "ms": ms, "ms_up": upsample_ms(ms, ratio)}
    if sample.path_ref is not None:
        ref = _read(sample.path_ref)
        if ref.shape[0] != ms.shape[0]:
            raise DataError(f"'{sample.path_ref}' has {ref.shape[0]} bands but "
                            f"'{sample.path_ms}' has {ms.shape[0]}")
        out["ref"] = ref
    return out


# -- the generated Wald-protocol set ---------------------------------------------------------
def mtf_sigma(ratio: int = DEFAULT_RATIO, gnyq: float = GNYQ) -> float:
    """Std (PAN pixels) of the Gaussian whose frequency response exp(-2 pi^2 s^2 f^2) equals
    ``gnyq`` at the MS Nyquist frequency f = 1 / (2 ratio)."""
    return ratio * math.sqrt(-2.0 * math.log(gnyq)) / math.pi


def degrade(ref: np.ndarray, ratio: int = DEFAULT_RATIO, gnyq: float = GNYQ) -> np.ndarray:
    """Wald-protocol MS from a reference: MTF-like blur, then one sample per block centre.

    Args:
        ref: (H, W, C) float on 0..255; H and W multiples of ``ratio``.

    Returns:
        (H/ratio, W/ratio, C) float64; for even ``ratio`` each value is the mean of the
        central 2 x 2 pixels of its ratio x ratio block of the blurred image (odd: the centre).
    """
    h, w = ref.shape[:2]
    if h % ratio or w % ratio:
        raise ValueError(f"reference size {w}x{h} is not a multiple of ratio {ratio}")
    blurred = cv2.GaussianBlur(ref.astype(np.float64), (0, 0), sigmaX=mtf_sigma(ratio, gnyq),
                               borderType=cv2.BORDER_REFLECT).reshape(ref.shape)
    c = ratio // 2
    if ratio % 2:
        return blurred[c::ratio, c::ratio]
    quads = [blurred[c - 1 + dy::ratio, c - 1 + dx::ratio] for dy in (0, 1) for dx in (0, 1)]
    return sum(quads) / 4.0


def synthesize_pan(ref: np.ndarray, weights: tuple[float, ...] = PAN_WEIGHTS) -> np.ndarray:
    """PAN = sum_k weights[k] * ref[..., k]: (H, W, C) -> (H, W) float64."""
    return ref.astype(np.float64) @ np.asarray(weights, dtype=np.float64)


def pan_photos(pool: tuple[str, ...]) -> tuple[str, ...]:
    """The colour photos of a split's pool (grey photos have no spectral content; ``read_image``
    returns grey stored as RGB with one channel), less the too-dark ones."""
    return tuple(n for n in pool if n not in _TOO_DARK and synthetic._photo(n).shape[2] == 3)


def _bright_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """A crop whose darkest band mean is >= 24 (first of 8 draws), else the brightest draw."""
    best = None
    for _ in range(_CROP_TRIES):
        crop = synthetic._crop(rng, photo, size)
        if best is None or crop.mean((0, 1)).min() > best.mean((0, 1)).min():
            best = crop
        if best.mean((0, 1)).min() >= _MIN_BAND_MEAN:
            break
    return np.clip(np.rint(best), 0, 255)


def make_pan(out_dir: str | Path, n: int = 8, size: int = 256, seed: int = 0,
             photos: tuple[str, ...] = synthetic.PHOTOS, ratio: int = DEFAULT_RATIO,
             gnyq: float = GNYQ) -> PanSet:
    """Write ``n`` Wald-protocol triples (module docstring): ``ref/`` (RGB, size x size),
    ``ms/`` (RGB, size/ratio), ``pan/`` (grey, size x size), ``NNN.png``, uint8.

    Args:
        photos: the pool; its colour photos are used (:func:`pan_photos`).
        size: a multiple of ``ratio``.
    """
    if size % ratio:
        raise ValueError(f"size {size} is not a multiple of ratio {ratio}")
    pool = pan_photos(photos)
    if not pool:
        raise DataError(f"no colour photo among {photos}")
    out_dir = Path(out_dir)
    synthetic._prepare(out_dir, ("pan", "ms", "ref"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    for i in range(n):
        ref = _bright_crop(rng, synthetic._photo(pool[order[i % len(pool)]]), size)
        name = f"{i:03d}.png"
        synthetic._save(out_dir / "ref" / name, ref)
        synthetic._save(out_dir / "ms" / name, degrade(ref, ratio, gnyq))
        synthetic._save(out_dir / "pan" / name, synthesize_pan(ref))
    logger.info("wrote %d pansharpening triples to %s", n, out_dir)
    return open_pan_set(out_dir, ratio)


def generated_pan_set(name: str, root: str | Path, n: int = 8, size: int = 256, seed: int = 0,
                      ratio: int = DEFAULT_RATIO) -> PanSet:
    """``pan``, ``pan:val`` or ``pan:test`` (splits and seeds of
    :data:`fusion_models.data.synthetic.SPLITS`), cached as
    ``root/pan[-<split>]-n<n>-s<size>-r<ratio>-seed<seed>-v<version>/`` and written atomically
    like :func:`fusion_models.data.synthetic.generated_set`."""
    kind, _, split = name.partition(":")
    split = split or "train"
    if kind != "pan" or split not in synthetic.SPLITS:
        raise ValueError(f"unknown generated pansharpening set '{name}'; known: pan, "
                         + ", ".join(f"pan:{s}" for s in synthetic.SPLITS if s != "train"))
    offset, photos = synthetic.SPLITS[split]
    seed += offset
    tag = "pan" if split == "train" else f"pan-{split}"
    folder = Path(root) / f"{tag}-n{n}-s{size}-r{ratio}-seed{seed}-v{PAN_VERSION}"
    params = {"kind": "pan", "split": split, "n": n, "size": size, "ratio": ratio,
              "seed": seed, "version": PAN_VERSION, "skimage": skimage.__version__,
              "opencv": cv2.__version__}
    synthetic.build_generated_folder(folder, params, lambda tmp: make_pan(
        tmp, n=n, size=size, seed=seed, photos=photos, ratio=ratio))
    return open_pan_set(folder, ratio)

