"""Model references -> verified local checkpoint files, and the folders they are cached in.

A reference is a checkpoint path, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the
MLflow registry; :mod:`orchestrator.deploy.promote` registers them), ``runs:/RUN_ID[/PATH]``
(a run's artifact, ``checkpoints/best.pt`` by default) or ``pretrained:NAME`` (an authors'
release imported by ``orchestrator import-weights``). Downloaded and imported files are
checked by sha256 against the digest recorded when they were made, and refused (the file
named) when they differ; so is a local checkpoint file that has a ``<file>.sha256`` sidecar
(every checkpoint the orchestrator writes has one; a file without one is used as it is).
Used by every command that loads a model: train's ``init``, eval, fuse, compare, report and the
sweep's final evaluation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fusion_models.pretrained.released import CATALOGUE
from fusion_models.registry import verify_checkpoint_file
from orchestrator.common.tracking import mlflow_client, sha256_file

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where generated data and patch stores live (``FUSION_CACHE_DIR`` overrides)."""
    default = Path.home() / ".cache" / "fusion-orchestrator"
    return Path(os.environ.get("FUSION_CACHE_DIR", default))


CACHE_DIR = ".fusion_models"
BEST = "checkpoints/best.pt"
REF_FORMS = ("a checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID[/PATH] "
             "or pretrained:NAME")


PREFIX = "pretrained:"


def pretrained_dir() -> Path:
    """``$FUSION_PRETRAINED_DIR``, else ``<FUSION_CACHE_DIR or ~/.cache/...>/pretrained``."""
    if os.environ.get("FUSION_PRETRAINED_DIR"):
        return Path(os.environ["FUSION_PRETRAINED_DIR"])
    return cache_dir() / "pretrained"


def resolve_pretrained(ref: str) -> Path:
    """``pretrained:pmgi/ir_vi`` -> the imported file, checked against its ``.sha256``.

    Raises:
        ValueError: unknown name, file not imported yet (says how to import it), or a digest
            mismatch.
    """
    name = ref[len(PREFIX):].strip("/")
    if name.endswith(".pt"):
        name = name[:-3]
    if name not in CATALOGUE:
        raise ValueError(f"{ref}: unknown released checkpoint; known: "
                         + ", ".join(PREFIX + n for n in sorted(CATALOGUE)))
    path = pretrained_dir() / f"{name}.pt"
    if not path.is_file():
        raise ValueError(
            f"{ref}: {path} is not there; import it first with `orchestrator import-weights "
            f"<release folder, e.g. ../shared/weights> --all` (or set FUSION_PRETRAINED_DIR "
            "to the folder holding the imported files)")
    side = path.with_name(path.name + ".sha256")
    expected = (side.read_text().split() or [None])[0] if side.is_file() else None
    actual = sha256_file(path)
    if expected != actual:
        raise ValueError(f"{ref}: sha256 mismatch for {path}: file has {actual}, "
                         f"{side.name} says {expected}")
    return path


def _model_version(client: Any, spec: str) -> Any:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> the ModelVersion."""
    if "@" in spec:
        name, alias = spec.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = spec.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"models:/{spec}: expected {REF_FORMS}")
    return client.get_model_version(name, version)


def _download(ref: str, uri: str, dst: Path) -> tuple[Path, str, str]:
    """Fetch a models:/ or runs:/ ref into ``dst``: (file, expected sha256, its record)."""
    import mlflow.artifacts

    client = mlflow_client(uri)
    if ref.startswith("models:/"):
        mv = _model_version(client, ref[len("models:/"):])
        dst = dst / mv.name / str(mv.version)
        # not models:/ itself: mlflow 3.17 resolves it with the global registry URI
        src = client.get_model_version_download_uri(mv.name, mv.version)
        expected, what = mv.tags.get("sha256"), f"model version {mv.name}/{mv.version} tag sha256"
    else:
        run_id, _, path = ref[len("runs:/"):].partition("/")
        path = path.strip("/") or BEST
        stem = Path(path).stem if path.endswith(".pt") else "best"
        dst = dst / "runs" / run_id / path
        src = f"runs:/{run_id}/{path}"
        expected = client.get_run(run_id).data.tags.get(f"{stem}_sha256")
        what = f"run {run_id} tag {stem}_sha256"
    local = Path(mlflow.artifacts.download_artifacts(src, dst_path=str(dst), tracking_uri=uri,
                                                     registry_uri=uri))
    if local.is_dir():
        found = sorted(local.rglob("best.pt"))
        if not found:
            raise ValueError(f"{ref}: no best.pt in the downloaded artifacts ({local})")
        local = found[0]
    if not expected:
        raise ValueError(f"{ref}: cannot verify {local.name}: no {what}")
    return local, expected, what


def resolve_checkpoint(ref: str, tracking_uri: str, dst: Path | None = None) -> Path:
    """A local checkpoint file for ``ref`` (see :data:`REF_FORMS`), verified by sha256.

    ``models:/`` and ``runs:/`` refs are downloaded into ``dst`` (default ``./.fusion_models``)
    and checked against the model version's ``sha256`` tag or the run's ``best_sha256`` tag;
    ``pretrained:NAME`` is an imported released checkpoint (``orchestrator import-weights``),
    checked against its ``.sha256`` file; a plain path is checked against its ``.sha256``
    sidecar when it has one.

    Raises:
        ValueError: a missing local file, an unknown model/run/alias, or a digest mismatch.
    """
    if ref.startswith(PREFIX):
        return resolve_pretrained(ref)
    if not ref.startswith(("models:/", "runs:/")):
        path = Path(ref)
        if not path.is_file():
            raise ValueError(f"checkpoint {ref!r} not found (give {REF_FORMS})")
        if verify_checkpoint_file(path):
            log.info("%s: sha256 verified against its sidecar", path)
        return path
    from mlflow.exceptions import MlflowException

    try:
        local, expected, what = _download(ref, tracking_uri, Path(dst or CACHE_DIR))
    except (MlflowException, OSError) as exc:
        raise ValueError(f"cannot fetch {ref} from {tracking_uri}: {exc}") from exc
    actual = sha256_file(local)
    if actual != expected:
        raise ValueError(f"{ref}: sha256 mismatch for {local}: file has {actual}, "
                         f"{what} says {expected}")
    log.info("%s -> %s (sha256 %s verified)", ref, local, actual[:12])
    return local
