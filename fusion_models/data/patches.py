"""Training patches exactly as the original models cut them, and a cache that never cuts twice.

Window rule: a window starts at every row ``x`` and column ``y`` of ``range(0, L - patch + 1,
stride)`` (``end="inclusive"``: FusionGAN, MFF-GAN, PMGI) or ``range(0, L - patch, stride)``
(``end="exclusive"``: UFGAN, which can miss the last row/column of windows). Rows are the outer
loop, columns the inner. The label is the centred ``label x label`` crop of the input window
(offset ``(patch - label) // 2``: 6 for FusionGAN, 4 for UFGAN). See ../shared/docs/models.md
§1.5, §2.4, §3.4, §4.4, §5.3, §6.2.

:class:`PatchStore` extracts the grey channels of A and B (the colour plan's ``luma_a`` and
``luma_b``, :mod:`fusion_models.data.colour`) at the same windows and keeps them as ``.npy``
memmaps under ``cache_dir/<key>/`` with a ``manifest.json``. The key hashes the spec, the colour
rule, the task and the sha256 of every source, so trials with the same patch settings reuse one
entry, and a changed file or spec makes a new one. Entries are built in a temporary folder
(each file fsynced) and renamed into place, so a half-written entry is never loaded; a full
disk is one :class:`DiskFullError` naming the file. The manifest records each array file's
size and sha256; an entry whose files differ from it (bytes flipped, truncated) or whose
manifest is unreadable is rebuilt, with a warning naming the file, instead of being trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import Dataset

from .colour import default_rule, plan_colour
from .io import DataError, to_tensor255
from .pairs import PairSet, load_pair
from .store_files import DiskFullError, digest_file, discard, entry_problem, npy_chunks, write_file

logger = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: the manifest's "files" holds each array file's size and sha256
_ARRAYS = ("a_inputs.npy", "b_inputs.npy")
Scale = Literal["pm1", "unit", "raw"]
_SCALES = {
    "pm1": lambda x: (x - 127.5) / 127.5,  # Ma-group TF repos: [-1, 1]
    "unit": lambda x: x / 255.0,  # DDcGAN: [0, 1]
    "raw": lambda x: x,  # DenseFuse: 0..255
}


@dataclass(frozen=True)
class PatchSpec:
    """How to cut training windows.

    Attributes:
        patch: input window side in pixels.
        label: side of the centred label crop (<= patch, same parity).
        stride: step between window starts, rows and columns.
        end: ``inclusive`` (``range(0, L - patch + 1, stride)``) or ``exclusive``
            (``range(0, L - patch, stride)``).
        resize: if set, the whole image is first resized to ``resize x resize`` (nearest
            neighbour, as DenseFuse prepares COCO); None keeps the stored size.
    """

    patch: int
    label: int
    stride: int
    end: Literal["inclusive", "exclusive"] = "inclusive"
    resize: int | None = None

    def __post_init__(self) -> None:
        if min(self.patch, self.label, self.stride) < 1 or self.label > self.patch:
            raise ValueError(f"PatchSpec needs 1 <= label <= patch and stride >= 1: {self}")
        if (self.patch - self.label) % 2:
            raise ValueError(f"PatchSpec label must be centred: patch - label even: {self}")
        if self.end not in ("inclusive", "exclusive"):
            raise ValueError(f"PatchSpec end must be 'inclusive' or 'exclusive': {self}")

    @property
    def offset(self) -> int:
        """Offset of the label crop inside the input window."""
        return (self.patch - self.label) // 2

    def starts(self, length: int) -> range:
        """Window starts along one axis of ``length`` pixels."""
        stop = length - self.patch + (1 if self.end == "inclusive" else 0)
        return range(0, max(stop, 0), self.stride)

    def count(self, height: int, width: int) -> int:
        """Number of windows in an image of the given stored size (after ``resize``)."""
        if self.resize is not None:
            height = width = self.resize
        return len(self.starts(height)) * len(self.starts(width))


PATCH_PRESETS: dict[str, PatchSpec] = {
    "fusiongan": PatchSpec(132, 120, 14, "inclusive"),  # §2.4: 37,710 from the 41 pairs
    "ufgan": PatchSpec(160, 152, 60, "exclusive"),  # §1.5: 1,926 from the 41 pairs
    "mffgan": PatchSpec(60, 60, 10, "inclusive"),  # §4.4
    "pmgi_ivif": PatchSpec(132, 120, 14, "inclusive"),  # §5.3 (the net is fed the label crop)
    "pmgi_medical": PatchSpec(132, 120, 14, "inclusive"),
    "pmgi_mef": PatchSpec(132, 120, 14, "inclusive"),
    "pmgi_mff": PatchSpec(72, 60, 6, "inclusive"),
    # §3.4: 84x84 patches; the stride of the Baidu-only h5 is unknown, so windows do not overlap.
    "ddcgan": PatchSpec(84, 84, 84, "inclusive"),
    # §6.2: whole COCO images resized (nearest) to 256x256: one window per image.
    "densefuse": PatchSpec(256, 256, 256, "inclusive", resize=256),
}


def patch_preset(model: str, task: str | None = None) -> PatchSpec:
    """The preset of a model (``pmgi`` needs ``task``: ivif, medical, mef or mff)."""
    key = f"{model}_{task}" if model == "pmgi" else model
    if key not in PATCH_PRESETS:
        raise KeyError(f"no patch preset '{key}'; known presets: {', '.join(PATCH_PRESETS)}")
    return PATCH_PRESETS[key]


def extract_patches(img: np.ndarray, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """Cut every window of one grey image.

    Args:
        img: (H, W) array, any dtype (uint8 stays uint8).
        spec: the window rule.

    Returns:
        ``(inputs, labels)``: inputs (N, patch, patch) (a copy), labels (N, label, label), a
        view into ``inputs`` (the centred crop). N = ``spec.count(H, W)``, row-major order.
    """
    if img.ndim != 2:
        raise DataError(f"extract_patches expects an (H, W) image, got shape {img.shape}")
    if spec.resize is not None:
        img = cv2.resize(img, (spec.resize, spec.resize), interpolation=cv2.INTER_NEAREST)
    rows, cols = spec.starts(img.shape[0]), spec.starts(img.shape[1])
    if len(rows) == 0 or len(cols) == 0:
        empty = np.empty((0, spec.patch, spec.patch), img.dtype)
        return empty, empty[:, : spec.label, : spec.label]
    windows = sliding_window_view(img, (spec.patch, spec.patch))
    inputs = windows[rows.start : rows.stop : rows.step, cols.start : cols.stop : cols.step]
    inputs = inputs.reshape(-1, spec.patch, spec.patch).copy()
    o, n = spec.offset, spec.label
    return inputs, inputs[:, o : o + n, o : o + n]


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    return digest_file(path)


#: Digests of source files this process has read, by (path, size, mtime_ns, inode): a process
#: that opens the same sets' stores again (a reused sweep trial actor) does not re-hash them;
#: a rewritten file has a new key and is read again.
_SOURCE_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _source_sha256(path: Path) -> str:
    """:func:`sha256_file` of a source file, read once per process while it is unchanged."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SOURCE_DIGESTS:
        _SOURCE_DIGESTS[key] = sha256_file(Path(path))
    return _SOURCE_DIGESTS[key]


def _sha256_array(arr: np.ndarray) -> str:
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _as_hwc(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"source arrays must be (H, W[, 1|3]) uint8/uint16, got {arr.shape} {arr.dtype}"
        )
    return arr


class _Sources:
    """Named source pairs plus their hashes, from a PairSet or from arrays."""

    def __init__(self, source: PairSet | Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        if isinstance(source, PairSet):
            self.pair_set: PairSet | None = source
            self.names = [p.name for p in source.pairs]
            self.records = [
                {
                    "name": p.name,
                    "a": str(p.path_a),
                    "b": str(p.path_b),
                    "sha256_a": _source_sha256(p.path_a),
                    "sha256_b": _source_sha256(p.path_b),
                }
                for p in source.pairs
            ]
            self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        else:
            self.pair_set = None
            self.arrays = [(_as_hwc(np.asarray(a)), _as_hwc(np.asarray(b))) for a, b in source]
            self.names = [f"{i:05d}" for i in range(len(self.arrays))]
            self.records = [
                {"name": n, "sha256_a": _sha256_array(a), "sha256_b": _sha256_array(b)}
                for n, (a, b) in zip(self.names, self.arrays, strict=True)
            ]
        if not self.names:
            raise DataError("PatchStore needs at least one source pair")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pair_set is not None:
            return load_pair(self.pair_set.pairs[i])
        return self.arrays[i]


def _lumas(a: np.ndarray, b: np.ndarray, rule: str, task: str | None) -> tuple[np.ndarray, ...]:
    ta, tb = (to_tensor255(x)[None] for x in (a, b))
    plan = plan_colour(ta, tb, rule, task)
    return plan.luma_a[0, 0].numpy(), plan.luma_b[0, 0].numpy()


def _quantise(luma: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    return luma.astype(np.float32)


def _write_entry(tmp: Path, entry: Path, sources: _Sources, spec: PatchSpec, rule: str,
                 task: str | None) -> dict:
    """Extract every pair into ``tmp`` (to become ``entry``); returns the manifest's counts,
    dtype and ``files`` (each array file's size and sha256)."""
    pairs = [sources.load(i) for i in range(len(sources.names))]
    dtype = np.dtype(np.uint8 if all(x.dtype == np.uint8 for p in pairs for x in p) else np.float32)
    lumas = [tuple(_quantise(x, dtype) for x in _lumas(a, b, rule, task)) for a, b in pairs]
    counts = [spec.count(*la.shape) for la, _ in lumas]
    total = sum(counts)
    if total == 0:
        raise DataError(f"no {spec.patch}x{spec.patch} windows fit in any source image ({spec})")
    files = {}
    for side, name in enumerate(_ARRAYS):
        blocks = (extract_patches(luma_pair[side], spec)[0] for luma_pair in lumas)
        chunks = npy_chunks(dtype, (total, spec.patch, spec.patch), blocks)
        files[name] = write_file(tmp / name, chunks, entry / name)
    return {"count": total, "counts": dict(zip(sources.names, counts, strict=True)),
            "dtype": dtype.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}


class PatchStore:
    """A built cache entry: aligned luma patches of A and B as read-only memmaps.

    Attributes:
        path: the entry folder.
        manifest: the parsed ``manifest.json``.
        built: True when this object's construction extracted the patches (cache miss).
        a_inputs, b_inputs: (N, patch, patch) memmaps, uint8 for 8-bit sources (else float32),
            0..255 scale.
        a_labels, b_labels: (N, label, label) views (the centred crops of the inputs).
    """

    def __init__(self, path: Path, built: bool = False) -> None:
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        if self.manifest.get("version") != STORE_VERSION:
            raise DataError(
                f"patch store '{path}' has version {self.manifest.get('version')}, "
                f"expected {STORE_VERSION}"
            )
        self.built = built
        self.a_inputs = np.load(self.path / "a_inputs.npy", mmap_mode="r")
        self.b_inputs = np.load(self.path / "b_inputs.npy", mmap_mode="r")
        o, n = self.spec.offset, self.spec.label
        self.a_labels = self.a_inputs[:, o : o + n, o : o + n]
        self.b_labels = self.b_inputs[:, o : o + n, o : o + n]

    @property
    def spec(self) -> PatchSpec:
        """The :class:`PatchSpec` the entry was cut with."""
        return PatchSpec(**self.manifest["spec"])

    def __len__(self) -> int:
        return int(self.a_inputs.shape[0])

    def dataset(self, scale: Scale = "pm1") -> PatchDataset:
        """A torch Dataset view of this store (see :class:`PatchDataset`)."""
        return PatchDataset(self.path, self.spec, scale)

    @classmethod
    def build_or_load(
        cls,
        source: PairSet | Sequence[tuple[np.ndarray, np.ndarray]],
        spec: PatchSpec,
        cache_dir: str | Path,
        colour_rule: str = "auto",
        task: str | None = None,
    ) -> PatchStore:
        """Return the cached entry for these sources and settings, extracting it only if absent.

        Args:
            source: a :class:`PairSet`, or a sequence of ``(a, b)`` arrays, each (H, W) or
                (H, W, 1|3) uint8/uint16, the two of a pair the same size.
            spec: window rule.
            cache_dir: folder holding the entries (created if missing).
            colour_rule: rule of :func:`~fusion_models.data.colour.plan_colour` giving the grey
                channels (``auto`` resolves from the task).
            task: task for ``auto``; defaults to the pair set's task.

        Returns:
            The loaded :class:`PatchStore` (``built`` says whether it was extracted now).
        """
        sources = _Sources(source)
        task = task if task is not None or sources.pair_set is None else sources.pair_set.task
        rule = default_rule(task) if colour_rule == "auto" else colour_rule
        keyed = {
            "version": STORE_VERSION,
            "spec": asdict(spec),
            "colour_rule": rule,
            "task": task,
            "sources": [[r["name"], r["sha256_a"], r["sha256_b"]] for r in sources.records],
        }
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
        entry = Path(cache_dir) / key
        if entry.exists():
            problem = entry_problem(entry, STORE_VERSION, _ARRAYS)
            if problem is None:
                logger.info("patch store hit: %s", entry)
                return cls(entry)
            logger.warning("patch store %s is damaged, rebuilding it: %s", entry, problem)
            discard(entry)
        return cls._build(entry, keyed, sources, spec, rule, task)

    @classmethod
    def _build(cls, entry: Path, keyed: dict, sources: _Sources, spec: PatchSpec, rule: str,
               task: str | None) -> PatchStore:
        """Extract the entry in a temporary folder, then rename it into place."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
        try:
            manifest = {**keyed, "key": entry.name, "sources": sources.records}
            manifest.update(_write_entry(tmp, entry, sources, spec, rule, task))
            write_file(tmp / "manifest.json", [json.dumps(manifest, indent=1).encode()],
                        entry / "manifest.json")
            os.rename(tmp, entry)
        except OSError as exc:
            if isinstance(exc, DiskFullError) or not (entry / "manifest.json").is_file():
                raise  # (not a lost race with a twin build)
            logger.info("patch store %s was built concurrently; using that one", entry)
            return cls(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("patch store built: %s (%d patches)", entry, manifest["count"])
        return cls(entry, built=True)


class PatchDataset(Dataset):
    """Torch view of a :class:`PatchStore` entry; opens its memmaps lazily in each process.

    Items are ``{"a", "b"}`` (1, patch, patch) and ``{"a_label", "b_label"}`` (1, label, label)
    float32 tensors scaled by ``scale``: ``pm1`` -> (x - 127.5) / 127.5 in [-1, 1] (FusionGAN,
    MFF-GAN, PMGI, UFGAN), ``unit`` -> x / 255 in [0, 1] (DDcGAN), ``raw`` -> 0..255 (DenseFuse).
    """

    def __init__(self, path: str | Path, spec: PatchSpec, scale: Scale = "pm1") -> None:
        if scale not in _SCALES:
            raise ValueError(f"unknown scale '{scale}'; known scales: {', '.join(_SCALES)}")
        self.path, self.spec, self.scale = Path(path), spec, scale
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._len = int(np.load(self.path / "a_inputs.npy", mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # never pickle memmap contents to workers

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            self._arrays = tuple(
                np.load(self.path / f"{s}_inputs.npy", mmap_mode="r") for s in "ab"
            )
        o, n, fn = self.spec.offset, self.spec.label, _SCALES[self.scale]
        item = {}
        for side, arr in zip("ab", self._arrays, strict=True):
            x = torch.from_numpy(fn(np.asarray(arr[index], dtype=np.float32)))[None]
            item[side], item[f"{side}_label"] = x, x[:, o : o + n, o : o + n].clone()
        return item
