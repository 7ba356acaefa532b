"""Paired-folder image sets: ``<set>/<role_a>/<name>`` pairs with ``<set>/<role_b>/<name>``.

A set is a folder holding exactly two source sub-folders (plus, optionally, a ``gt/`` folder of
ground-truth images, as written by :func:`fusion_models.data.synthetic.make_multifocus`). Files
pair by stem, whatever their extensions: ``ir/01.png`` pairs with ``vi/01.bmp``. Hidden files and
folders (names starting with ``.``) are ignored.

Recognised role names (case-insensitive) fix which source is A (first) and which is B (second):

=========  =========  ==========  ===================================================
A          B          task        meaning
=========  =========  ==========  ===================================================
``ir``     ``vi``     ``ivif``    infrared first, visible second
``ct``     ``mri``    ``medical`` CT first, MRI second
``pet``    ``mri``    ``medical`` functional (colour) image first, MRI second
``spect``  ``mri``    ``medical`` functional (colour) image first, MRI second
``a``      ``b``      caller's    generic: MFF near/far focus, MEF under/over exposure
=========  =========  ==========  ===================================================

Any other folder names need explicit folders: ``open_pair_set(a_dir=..., b_dir=...)`` (the CLI's
``--a``/``--b``). Every problem is found at :func:`open_pair_set` time from file headers (no pixel
decoding) and reported in one :class:`~fusion_models.data.io.DataError`; :func:`validate` also
decodes every file, for callers that want to fail before any work starts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .io import IMAGE_EXTENSIONS, DataError, ImageReadError, probe_image, read_image, to_tensor255

logger = logging.getLogger(__name__)

ROLE_PAIRS: dict[tuple[str, str], str | None] = {
    ("ir", "vi"): "ivif",
    ("ct", "mri"): "medical",
    ("pet", "mri"): "medical",
    ("spect", "mri"): "medical",
    ("a", "b"): None,
}
TASKS: tuple[str, ...] = ("ivif", "medical", "mff", "mef")
GT_FOLDER = "gt"
_MAX_LISTED = 10


@dataclass(frozen=True)
class Pair:
    """One registered source pair.

    Attributes:
        name: the shared file stem (``"01"`` for ``ir/01.png`` + ``vi/01.bmp``).
        path_a: source A file.
        path_b: source B file.
        path_gt: ground-truth file when the set has a ``gt/`` folder, else None.
    """

    name: str
    path_a: Path
    path_b: Path
    path_gt: Path | None = None


@dataclass(frozen=True)
class PairSet:
    """A checked paired-folder set (see the module docstring for the folder rules).

    Attributes:
        root: the set folder (for explicit folders: their common parent).
        dir_a: folder of source A.
        dir_b: folder of source B.
        role_a: role of A, lower case (``ir``, ``ct``, ``pet``, ``spect``, ``a``, or for explicit
            folders with unknown names ``a``).
        role_b: role of B (``vi``, ``mri``, ``b``).
        task: ``ivif``, ``medical``, ``mff``, ``mef`` or None (unknown).
        pairs: pairs in natural name order (``2`` before ``10``).
        dir_gt: ground-truth folder, or None.
    """

    root: Path
    dir_a: Path
    dir_b: Path
    role_a: str
    role_b: str
    task: str | None
    pairs: list[Pair] = field(default_factory=list)
    dir_gt: Path | None = None

    def __len__(self) -> int:
        return len(self.pairs)


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _known_pairs_text() -> str:
    return ", ".join(f"{a}/+{b}/" for a, b in ROLE_PAIRS)


def _index_folder(folder: Path) -> dict[str, Path]:
    """Map stem -> file for one source folder, rejecting everything that cannot pair cleanly."""
    if not folder.is_dir():
        raise DataError(f"source folder '{folder}' does not exist or is not a folder")
    entries = _visible(folder)
    files = [p for p in entries if p.is_file()]
    for sub in (p for p in entries if p.is_dir()):
        logger.warning("ignoring sub-folder '%s' inside source folder '%s'", sub.name, folder)
    if not files:
        raise DataError(
            f"source folder '{folder}' is empty: expected image files "
            f"({', '.join(IMAGE_EXTENSIONS)}) named like its partner folder's files"
        )
    bad = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if bad:
        raise DataError(
            f"source folder '{folder}' holds files with unknown extensions: {_listing(bad)}; "
            f"accepted extensions (any case): {', '.join(IMAGE_EXTENSIONS)}"
        )
    index: dict[str, Path] = {}
    for path in files:
        if path.stem in index:
            raise DataError(
                f"source folder '{folder}' holds two files with the stem '{path.stem}': "
                f"'{index[path.stem].name}' and '{path.name}'; pairs match by stem, keep one"
            )
        index[path.stem] = path
    return index


def _match(dir_a: Path, dir_b: Path, dir_gt: Path | None) -> list[Pair]:
    idx_a, idx_b = _index_folder(dir_a), _index_folder(dir_b)
    only_a = sorted(set(idx_a) - set(idx_b), key=_natural_key)
    only_b = sorted(set(idx_b) - set(idx_a), key=_natural_key)
    if only_a or only_b:
        raise DataError(
            f"files without a partner: in '{dir_a}' but not in '{dir_b}': "
            f"[{_listing(only_a)}]; in '{dir_b}' but not in '{dir_a}': [{_listing(only_b)}] "
            "(files pair by stem: a/01.png pairs with b/01.bmp)"
        )
    idx_gt = _index_folder(dir_gt) if dir_gt is not None else {}
    missing_gt = sorted(set(idx_a) - set(idx_gt), key=_natural_key) if dir_gt else []
    if missing_gt:
        raise DataError(f"ground-truth folder '{dir_gt}' lacks: [{_listing(missing_gt)}]")
    names = sorted(idx_a, key=_natural_key)
    return [Pair(n, idx_a[n], idx_b[n], idx_gt.get(n)) for n in names]


def _check_headers(pairs: list[Pair], *, decode: bool) -> None:
    """Probe (or fully decode) every file; raise one DataError listing every problem found."""
    problems: list[str] = []
    for pair in pairs:
        sizes = {}
        for path in (pair.path_a, pair.path_b, pair.path_gt):
            if path is None:
                continue
            try:
                if decode:
                    h, w = read_image(path).shape[:2]
                    sizes[path] = (w, h)
                else:
                    sizes[path] = probe_image(path)
            except ImageReadError as exc:
                problems.append(str(exc))
        if len(set(sizes.values())) > 1:
            desc = " vs ".join(f"'{p}' is {w}x{h}" for p, (w, h) in sizes.items())
            problems.append(f"size mismatch in pair '{pair.name}': {desc} (W x H; must be equal)")
    if problems:
        more = (
            f"\n  ... ({len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        )
        raise DataError(
            f"{len(problems)} problem(s) in the pair set:\n  "
            + "\n  ".join(problems[:_MAX_LISTED])
            + more
        )


def _roles_from_set_dir(set_dir: Path) -> tuple[Path, Path, Path | None, str, str, str | None]:
    if not set_dir.is_dir():
        raise DataError(f"pair-set folder '{set_dir}' does not exist or is not a folder")
    entries = _visible(set_dir)
    subdirs = [p for p in entries if p.is_dir()]
    images = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    gt = next((p for p in subdirs if p.name.lower() == GT_FOLDER), None)
    sources = [p for p in subdirs if p is not gt]
    if len(sources) != 2:
        holds = f"{len(sources)} source sub-folder(s) [{_listing(p.name + '/' for p in sources)}]"
        if images:
            holds += f" and {len(images)} image file(s) [{_listing(images)}]"
        raise DataError(
            f"'{set_dir}' is not a pair of folders: it holds {holds}; expected exactly two source "
            f"sub-folders ({_known_pairs_text()}) and optionally gt/; if this is one source "
            "folder, pass its parent; for other layouts give the folders (--a DIR --b DIR)"
        )
    by_name = {p.name.lower(): p for p in sources}
    for (ra, rb), task in ROLE_PAIRS.items():
        if set(by_name) == {ra, rb}:
            return by_name[ra], by_name[rb], gt, ra, rb, task
    raise DataError(
        f"'{set_dir}' holds sub-folders {sorted(p.name for p in sources)} whose roles are unknown; "
        f"known pairs (A first, B second): {_known_pairs_text()}; for other names give the "
        "folders explicitly (--a DIR --b DIR, or open_pair_set(a_dir=..., b_dir=...))"
    )


def _check_task(task: str | None, implied: str | None, where: Path) -> str | None:
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task '{task}' for '{where}'; known tasks: {', '.join(TASKS)}")
    if implied is not None and task is not None and task != implied:
        raise DataError(f"'{where}' holds a {implied} set by its folder names, not a {task} set")
    return task if task is not None else implied


def open_pair_set(
    set_dir: str | Path | None = None,
    *,
    a_dir: str | Path | None = None,
    b_dir: str | Path | None = None,
    task: str | None = None,
) -> PairSet:
    """Open and check a paired-folder set.

    Args:
        set_dir: folder holding two known role sub-folders (module docstring), or None when
            ``a_dir`` and ``b_dir`` are given.
        a_dir: explicit folder of source A (needs ``b_dir``; excludes ``set_dir``).
        b_dir: explicit folder of source B.
        task: ``ivif``, ``medical``, ``mff``, ``mef`` or None; must agree with the task implied
            by the folder names (``ir``/``vi`` is ``ivif``; ``a``/``b`` implies none).

    Returns:
        The :class:`PairSet`, every file's header and size already checked.

    Raises:
        DataError: one error naming the folders/files and what was expected (see module doc).
    """
    if set_dir is not None and (a_dir is not None or b_dir is not None):
        raise DataError("give either set_dir or a_dir + b_dir, not both")
    if set_dir is not None:
        root = Path(set_dir)
        dir_a, dir_b, dir_gt, role_a, role_b, implied = _roles_from_set_dir(root)
    elif a_dir is not None and b_dir is not None:
        dir_a, dir_b, dir_gt = Path(a_dir), Path(b_dir), None
        if dir_a.resolve() == dir_b.resolve():
            raise DataError(f"a_dir and b_dir are the same folder '{dir_a}'")
        pair = (dir_a.name.lower(), dir_b.name.lower())
        role_a, role_b = pair if pair in ROLE_PAIRS else ("a", "b")
        implied = ROLE_PAIRS.get(pair)
        if pair[::-1] in ROLE_PAIRS and pair[::-1] != pair:
            logger.warning(
                "a_dir is '%s' and b_dir '%s': the usual order is the reverse",
                dir_a.name,
                dir_b.name,
            )
        root = Path(os.path.commonpath([dir_a.resolve(), dir_b.resolve()]))
    else:
        raise DataError("open_pair_set needs set_dir, or both a_dir and b_dir (--a DIR --b DIR)")
    resolved_task = _check_task(task, implied, root)
    pairs = _match(dir_a, dir_b, dir_gt)
    _check_headers(pairs, decode=False)
    logger.info(
        "opened %d pairs from '%s' (%s/%s, task %s)",
        len(pairs),
        root,
        role_a,
        role_b,
        resolved_task,
    )
    return PairSet(root, dir_a, dir_b, role_a, role_b, resolved_task, pairs, dir_gt)


def validate(pair_set: PairSet) -> None:
    """Fully decode every file of the set and check pair sizes again.

    Raises:
        DataError: one error listing every undecodable file and size mismatch.
    """
    _check_headers(pair_set.pairs, decode=True)


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair.

    Returns:
        ``(a, b)``, each (H, W, C) with C in {1, 3}, ``uint8``/``uint16`` (see
        :func:`~fusion_models.data.io.read_image`); same H and W.

    Raises:
        DataError: a file became unreadable or the sizes differ (files changed since opening).
    """
    a, b = read_image(pair.path_a), read_image(pair.path_b)
    if a.shape[:2] != b.shape[:2]:
        raise DataError(
            f"size mismatch in pair '{pair.name}': '{pair.path_a}' is {a.shape[1]}x{a.shape[0]}"
            f" vs '{pair.path_b}' is {b.shape[1]}x{b.shape[0]} (W x H; must be equal)"
        )
    return a, b


class PairDataset(Dataset):
    """Map-style dataset over a :class:`PairSet`.

    Items are ``{"name": str, "a": Tensor, "b": Tensor}`` (plus ``"gt"`` when the set has a
    ground-truth folder), tensors of shape (C, H, W), float32 on the 0..255 scale. Pairs of a set
    may differ in size, so batch with ``batch_size=1`` unless the set has one size.
    """

    def __init__(self, pair_set: PairSet) -> None:
        self.pair_set = pair_set

    def __len__(self) -> int:
        return len(self.pair_set.pairs)

    def __getitem__(self, index: int) -> dict[str, object]:
        pair = self.pair_set.pairs[index]
        a, b = load_pair(pair)
        item: dict[str, object] = {"name": pair.name, "a": to_tensor255(a), "b": to_tensor255(b)}
        if pair.path_gt is not None:
            item["gt"] = to_tensor255(read_image(pair.path_gt))
        return item
