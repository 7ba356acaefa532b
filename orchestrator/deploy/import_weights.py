"""`orchestrator import-weights`: the authors' released TF1 checkpoints as our checkpoints, and
the ``pretrained:<name>`` references that find them.

- ``import-weights SRC --release pmgi/ir_vi`` imports one bundle with the catalogue's model and
  settings into the pretrained folder (``pretrained/pmgi/ir_vi.pt``);
- ``import-weights SRC --all`` imports every catalogue entry found in a folder laid out like
  the authors' release (``../shared/weights``: ``pmgi/ir_vi/CGAN.model-1.index`` ...);
- ``import-weights SRC --model pmgi --set task=ivif --out FILE`` imports any bundle of an
  importable model with explicit Config fields.

The pretrained folder is ``$FUSION_PRETRAINED_DIR``, else ``<cache>/pretrained`` (cache:
``$FUSION_CACHE_DIR`` or ``~/.cache/fusion-orchestrator``). Each ``<name>.pt`` has a
``<name>.pt.sha256`` beside it; :func:`orchestrator.common.resolve_pretrained` checks the
file against it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fusion_models.pretrained.released import CATALOGUE
from fusion_models.pretrained.tf_import import import_bundle
from orchestrator.common import pretrained_dir
from orchestrator.common.atomic import save_checkpoint_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Imported:
    """One written checkpoint: its file, sha256, variable count and import seconds."""

    name: str
    path: Path
    sha256: str
    variables: int
    seconds: float


def save_checkpoint(ckpt: dict, out: str | Path) -> tuple[Path, str]:
    """Write ``ckpt`` atomically with a ``.sha256`` file beside it; (path, digest).

    Raises:
        DiskFullError: (a ValueError) the disk filled up; the file named, the previous file
            and its ``.sha256`` as they were.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, save_checkpoint_file(ckpt, out)


def import_one(src: str | Path, release: str | None, model: str | None,
               params: dict[str, object], out: str | None) -> Imported:
    """Import one bundle (``--release`` or ``--model``) to ``out`` (default: pretrained folder)."""
    start = time.perf_counter()
    if release:
        if model or params:
            raise ValueError("--release takes its model and settings from the catalogue; "
                             "give --model/--set without --release")
        if release not in CATALOGUE:
            raise ValueError(f"unknown release {release!r}; known: {sorted(CATALOGUE)}")
        entry = CATALOGUE[release]
        _, ckpt = import_bundle(src, entry.model, entry.params, entry.epoch, release)
        target = Path(out) if out else pretrained_dir() / f"{release}.pt"
    else:
        if not model or not out:
            raise ValueError("give --release NAME, or --model NAME with --out FILE")
        _, ckpt = import_bundle(src, model, params)
        target = Path(out)
    path, digest = save_checkpoint(ckpt, target)
    return Imported(release or model or "", path, digest, len(ckpt["source"]["variables"]),
                    time.perf_counter() - start)


def import_all(weights_dir: str | Path, out_dir: str | None = None) -> list[Imported]:
    """Import every catalogue entry present under ``weights_dir`` (release layout) with
    :func:`import_one`, each to ``<out_dir or the pretrained folder>/<name>.pt``.

    Raises:
        ValueError: none of the catalogue's bundles is there (the message lists what was
            looked for).
    """
    root, dest = Path(weights_dir), Path(out_dir) if out_dir else pretrained_dir()
    present = [n for n, e in CATALOGUE.items()
               if (root / e.folder / f"{e.prefix}.index").is_file()]
    if not present:
        wanted = [f"{e.folder}/{e.prefix}.index" for e in CATALOGUE.values()]
        raise ValueError(f"{root}: none of the released checkpoints is there (looked for "
                         f"{wanted})")
    return [import_one(root / CATALOGUE[n].folder / CATALOGUE[n].prefix, n, None, {},
                       str(dest / f"{n}.pt")) for n in present]
