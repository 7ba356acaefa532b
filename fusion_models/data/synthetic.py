"""Generated pair sets for runs that must work anywhere: no downloads, deterministic by seed.

The content comes from real photos that scikit-image ships inside its package folder
(``skimage/data/*.png|jpg``, read directly from disk, so the network fetcher is never used).
The same seed gives bit-identical PNG files (with the same OpenCV and scikit-image versions).

* :func:`make_multifocus`: the MFIF-GAN recipe (../shared/docs/models.md §8) with a random smooth
  blob mask in place of VOC segmentation masks: ``A = I*M + BI*(1-M)`` (foreground sharp),
  ``B = BI*M~ + I*(1-M~)`` (background sharp; ``M~`` is the mask blurred with the same sigma),
  ``gt = I``. Written as ``a/``, ``b/``, ``gt/``.
* :func:`make_ivif`: ``ir/`` shows bright "hot" people/vehicle shapes on a smooth, low-contrast
  background (the photo blurred away); ``vi/`` shows the photo's full texture with the same shapes
  only slightly darker. Both grey.
* :func:`generated_set`: a cached, atomically written folder per (kind, split, n, size, seed).

Splits (``generated:<kind>[:<split>]``): ``train`` (the default) and ``val`` crop the training
photos (:data:`PHOTOS`) with different seeds; ``test`` crops photos no other split uses
(:data:`TEST_PHOTOS`), with another seed, so a test score never saw a training scene.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage

from .io import DataError, read_image, write_image
from .pairs import PairSet, open_pair_set

logger = logging.getLogger(__name__)

SYNTH_VERSION = 1
PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "coins.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)
#: Photos only the ``test`` split crops (held out from ``train`` and ``val``).
TEST_PHOTOS: tuple[str, ...] = (
    "motorcycle_left.png",
    "moon.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "cell.png",
    "clock_motion.png",
)
#: split -> (added to the seed, photo pool).
SPLITS: dict[str, tuple[int, tuple[str, ...]]] = {
    "train": (0, PHOTOS),
    "val": (1000, PHOTOS),
    "test": (2000, TEST_PHOTOS),
}
_GRAY = np.array([0.299, 0.587, 0.114])


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        raise DataError(f"scikit-image {skimage.__version__} does not ship '{path}'")
    return read_image(path)


def _crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """Random rescale (short side 1.0-1.6 x size) and random size x size crop; float64 (H,W,C)."""
    h, w = photo.shape[:2]
    scale = size * rng.uniform(1.0, 1.6) / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = cv2.resize(photo, (nw, nh), interpolation=interp).reshape(nh, nw, -1)
    y, x = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
    return img[y : y + size, x : x + size].astype(np.float64)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return out.reshape(img.shape)


def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Binary (size, size, 1) focus mask of smooth random blobs covering 35-65 % of the image."""
    coarse = rng.standard_normal((max(size // 16, 2), max(size // 16, 2)))
    field = _blur(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), size / 32)
    threshold = np.quantile(field, rng.uniform(0.35, 0.65))
    return (field > threshold).astype(np.float64)[:, :, None]


def _prepare(out_dir: Path, folders: tuple[str, ...]) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"output folder '{out_dir}' is not empty; generated sets need a new folder")
    for folder in folders:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)


def _save(path: Path, img: np.ndarray) -> None:
    write_image(path, np.clip(np.rint(img), 0, 255).astype(np.uint8))


def make_multifocus(
    out_dir: str | Path, n: int = 8, size: int = 256, sigma: float = 2.0, seed: int = 0,
    photos: tuple[str, ...] = PHOTOS,
) -> PairSet:
    """Write ``n`` multi-focus pairs with ground truth (MFIF-GAN recipe, models.md §8).

    Args:
        out_dir: new or empty folder; receives ``a/`` (near focus: blob foreground sharp),
            ``b/`` (far focus: background sharp), ``gt/`` (all in focus), ``NNN.png`` each,
            RGB where the photo is colour, else grey; uint8.
        n: number of pairs.
        size: side of the square images in pixels.
        sigma: Gaussian blur sigma for both the defocus blur and the mask blur (MFIF-GAN used 1
            and lists 0.5-5).
        seed: random seed (photo order, crops, masks).
        photos: the scikit-image photos to crop (file names in ``skimage/data``).

    Returns:
        The opened :class:`PairSet` (task ``mff``, ``dir_gt`` set).
    """
    out_dir = Path(out_dir)
    _prepare(out_dir, ("a", "b", "gt"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    for i in range(n):
        image = _crop(rng, _photo(photos[order[i % len(photos)]]), size)
        mask = _blob_mask(rng, size)
        blurred, soft = _blur(image, sigma), _blur(mask, sigma)
        name = f"{i:03d}.png"
        _save(out_dir / "a" / name, image * mask + blurred * (1 - mask))
        _save(out_dir / "b" / name, blurred * soft + image * (1 - soft))
        _save(out_dir / "gt" / name, image)
    logger.info("wrote %d multi-focus pairs to %s", n, out_dir)
    return open_pair_set(out_dir, task="mff")


def _targets(rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """2-4 soft (size, size) masks in [0, 1]: upright people (body + head) or vehicles."""
    masks = []
    for _ in range(int(rng.integers(2, 5))):
        canvas = np.zeros((size, size), np.float64)
        cy, cx = (int(v) for v in rng.uniform(0.25 * size, 0.75 * size, 2))
        if rng.uniform() < 0.6:  # person: elliptic body and a head above it
            height = rng.uniform(0.15, 0.3) * size
            axes = (max(int(0.18 * height), 2), max(int(0.4 * height), 3))
            cv2.ellipse(canvas, (cx, cy), axes, 0, 0, 360, 1.0, -1)
            cv2.circle(canvas, (cx, cy - axes[1] - int(0.1 * height)), int(0.12 * height), 1.0, -1)
        else:  # vehicle: a low box with a cabin on top
            width = rng.uniform(0.15, 0.3) * size
            half_w, half_h = int(width / 2), int(0.2 * width)
            cv2.rectangle(canvas, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), 1.0, -1)
            cabin = (cx - half_w // 2, cy - 2 * half_h), (cx + half_w // 2, cy - half_h)
            cv2.rectangle(canvas, *cabin, 1.0, -1)
        masks.append(np.clip(_blur(canvas, 1.0), 0.0, 1.0))
    return masks


def make_ivif(out_dir: str | Path, n: int = 8, size: int = 256, seed: int = 0,
              photos: tuple[str, ...] = PHOTOS) -> PairSet:
    """Write ``n`` IVIF-like grey pairs whose two sources carry complementary information.

    ``ir/NNN.png`` (A): the photo blurred with sigma = size/24 and squeezed to about 60 +- 20
    grey levels, plus 2-4 hot targets at 200-240 and sensor noise (sigma 1).
    ``vi/NNN.png`` (B): the photo's grey luma with all its texture; the same targets only 15
    levels darker than their surroundings; noise sigma 1.5.

    Args:
        out_dir: new or empty folder.
        n: number of pairs.
        size: side of the square images in pixels.
        seed: random seed.
        photos: the scikit-image photos to crop (file names in ``skimage/data``).

    Returns:
        The opened :class:`PairSet` (roles ``ir``/``vi``, task ``ivif``).
    """
    out_dir = Path(out_dir)
    _prepare(out_dir, ("ir", "vi"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    for i in range(n):
        image = _crop(rng, _photo(photos[order[i % len(photos)]]), size)
        grey = image[:, :, 0] if image.shape[2] == 1 else image @ _GRAY
        smooth = _blur(grey, size / 24)
        infrared = 60.0 + 0.35 * (smooth - smooth.mean())
        visible = grey.copy()
        for mask in _targets(rng, size):
            infrared = infrared * (1 - mask) + rng.uniform(200, 240) * mask
            visible = visible - 15.0 * mask
        name = f"{i:03d}.png"
        _save(out_dir / "ir" / name, infrared + rng.normal(0, 1.0, infrared.shape))
        _save(out_dir / "vi" / name, visible + rng.normal(0, 1.5, visible.shape))
    logger.info("wrote %d IVIF pairs to %s", n, out_dir)
    return open_pair_set(out_dir)


_MAKERS = {"mff": (make_multifocus, "mff"), "ivif": (make_ivif, "ivif")}


def parse_generated(name: str) -> tuple[str, str]:
    """``ivif`` -> ("ivif", "train"); ``mff:test`` -> ("mff", "test"); unknown -> ValueError."""
    kind, _, split = name.partition(":")
    split = split or "train"
    if kind not in _MAKERS:
        hint = " (pansharpening: data.pansharpen.generated_pan_set)" if kind == "pan" else ""
        raise ValueError(f"unknown generated set kind '{kind}'; known kinds: {', '.join(_MAKERS)}"
                         + hint)
    if split not in SPLITS:
        raise ValueError(f"generated:{name}: unknown split '{split}'; known splits: "
                         f"{', '.join(SPLITS)}")
    return kind, split


def generated_set(
    kind: str, root: str | Path, n: int = 8, size: int = 256, seed: int = 0
) -> PairSet:
    """A generated set, cached as ``root/<kind>[-<split>]-n<n>-s<size>-seed<seed>-v<version>/``.

    The folder is reused when it exists (it was renamed into place complete, with a hidden
    ``.generated.json`` recording the parameters); otherwise it is written to a temporary
    folder under ``root`` and renamed, so a crash never leaves a half set behind.

    Args:
        kind: ``mff`` (:func:`make_multifocus`, default sigma) or ``ivif`` (:func:`make_ivif`),
            optionally with a split: ``ivif:val``, ``mff:test`` (see :data:`SPLITS`; the
            split's seed offset is added to ``seed``).
        root: cache folder (created if missing).
        n: number of pairs.
        size: image side in pixels.
        seed: random seed.

    Returns:
        The opened :class:`PairSet`.
    """
    kind, split = parse_generated(kind)
    maker, task = _MAKERS[kind]
    offset, photos = SPLITS[split]
    seed += offset
    root = Path(root)
    tag = kind if split == "train" else f"{kind}-{split}"
    folder = root / f"{tag}-n{n}-s{size}-seed{seed}-v{SYNTH_VERSION}"
    params = {
        "kind": kind,
        "split": split,
        "n": n,
        "size": size,
        "seed": seed,
        "version": SYNTH_VERSION,
        "skimage": skimage.__version__,
        "opencv": cv2.__version__,
    }
    build_generated_folder(folder, params,
                           lambda tmp: maker(tmp, n=n, size=size, seed=seed, photos=photos))
    return open_pair_set(folder, task=task)


def build_generated_folder(folder: Path, params: dict, make: Callable[[Path], object]) -> None:
    """Create ``folder`` atomically with ``make(tmp_folder)`` and a ``.generated.json`` marker
    holding ``params`` (built in a sibling temporary folder, then renamed), or reuse it.

    Raises:
        DataError: ``folder`` exists without the marker (not a generated set).
    """
    marker = folder / ".generated.json"
    if folder.exists():
        if not marker.is_file():
            raise DataError(f"'{folder}' exists but is not a generated set (no {marker.name})")
        logger.info("reusing generated set %s", folder)
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        make(tmp)
        (tmp / marker.name).write_text(json.dumps(params, indent=1))
        os.rename(tmp, folder)
    except OSError:
        if not marker.is_file():  # a twin process finished first: use its folder
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
