"""Run the authors' UNMODIFIED TF1 test scripts on their released checkpoints (reference outputs).

For every released generator (MFF-GAN Lytro / MFI-WHU, PMGI's six task folders) this lays out,
in its own folder below ``--work``, exactly what the authors' test script reads relative to its
working directory: ``checkpoint/<their sub-folder>/CGAN.model-N.*`` (symlinks to the bundle in
``--weights``) and ``Test_ir``/``Test_vi`` (PMGI) or ``Test_near``/``Test_far`` (MFF-GAN) holding
``1.bmp, 2.bmp, ...`` (``.tif`` for pansharpening, whose script globs only jpg/tif): the grey
8-bit inputs of :func:`fusion_models.pretrained.authors_inputs.authors_grey`, written losslessly
as mode-``L`` files (which the scripts' ``imread(flatten=True, mode='YCbCr')`` reads back
unchanged; checked). It then runs the script from ``--authors-repo`` with ``shim/`` on
``PYTHONPATH`` (see ``shim/sitecustomize.py``), so each ``imsave`` also leaves the raw float
output as ``<output>.npy``, and writes ``<work>/manifest.json`` for ``make_fixture.py``.

Run it with the TensorFlow venv's python (README.md); from the repository root::

    python benchmarks/authors_reference/run_authors_tf.py \
        --authors-repo <MFF-GAN checkout> --authors-repo <PMGI_AAAI2020 checkout> \
        --weights ../shared/weights --data ../shared/data --work <scratch folder>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fusion_models.pretrained.authors_inputs import (  # noqa: E402
    authors_grey,
    authors_pan_pair,
)

log = logging.getLogger("run_authors_tf")
SHIM = Path(__file__).resolve().parent / "shim"


@dataclass(frozen=True)
class Job:
    """One released checkpoint and how the authors' test script expects to find it."""

    name: str  # the checkpoint's folder below --weights
    repo: str  # "mffgan" or "pmgi"
    script: str  # the test script, relative to the authors' checkout
    ckpt_dir: str  # the folder the script reads the bundle from (relative to its cwd)
    prefix: str  # CGAN.model-N
    task: str  # authors_grey task
    inputs: tuple[str, str]  # the script's two input folders (first = path 0 / "ir" / "near")
    ext: str  # input file extension the script globs
    pairs: tuple[tuple[str, str], ...]  # (source A, source B) relative to --data / "weights:"


def _sorted_pairs(data: Path, set_: str, a: str, b: str, n: int) -> tuple[tuple[str, str], ...]:
    names = sorted(p.name for p in (data / set_ / a).iterdir() if p.is_file())[:n]
    return tuple((f"{set_}/{a}/{m}", f"{set_}/{b}/{m}") for m in names)


def jobs(data: Path) -> list[Job]:
    """Every checkpoint x its test pairs (the first names in sorted order of each set)."""
    shipped = tuple((f"weights:mffgan/test/near/{i}.jpg", f"weights:mffgan/test/far/{i}.jpg")
                    for i in (1, 2, 3))
    lytro1 = _sorted_pairs(data, "lytro", "a", "b", 1)
    pmgi = "Code_PMGI"
    pan = (("pan:lytro/a/lytro-01.jpg#ms", "pan:lytro/a/lytro-01.jpg#pan"),)
    common = {"repo": "pmgi", "inputs": ("Test_ir", "Test_vi")}
    return [
        Job("mffgan/lytro", "mffgan", "test.py", "checkpoint/Lytro_model", "CGAN.model-19",
            "mff", ("Test_near", "Test_far"), ".bmp", shipped + lytro1),
        # test.py hard-codes ./checkpoint/Lytro_model (its MFI-WHU line is commented out), so
        # the MFI-WHU bundle is laid out under that name in its own folder.
        Job("mffgan/mfi-whu", "mffgan", "test.py", "checkpoint/Lytro_model", "CGAN.model-19",
            "mff", ("Test_near", "Test_far"), ".bmp", shipped + lytro1),
        Job("pmgi/ir_vi", script=f"{pmgi}/IR_VI/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_120", prefix="CGAN.model-1", task="ivif", ext=".bmp",
            pairs=_sorted_pairs(data, "tno", "ir", "vi", 3)
            + _sorted_pairs(data, "roadscene", "ir", "vi", 2), **common),
        Job("pmgi/medical", script=f"{pmgi}/Medical/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_120", prefix="CGAN.model-29", task="medical", ext=".bmp",
            pairs=_sorted_pairs(data, "harvard_mri_pet", "pet", "mri", 2), **common),
        Job("pmgi/multi_exposure", script=f"{pmgi}/Multi-exp/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_120", prefix="CGAN.model-9", task="mef", ext=".bmp",
            pairs=_sorted_pairs(data, "mefb", "a", "b", 2), **common),
        Job("pmgi/multi_focus", script=f"{pmgi}/Multi-focus/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_60", prefix="CGAN.model-1", task="mff", ext=".bmp",
            pairs=_sorted_pairs(data, "lytro", "a", "b", 2), **common),
        Job("pmgi/pansharpening_1", script=f"{pmgi}/Pan_shapening/1/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_80", prefix="CGAN.model-9", task="pan", ext=".tif",
            pairs=pan, **common),
        Job("pmgi/pansharpening_2", script=f"{pmgi}/Pan_shapening/2/test_one_image.py",
            ckpt_dir="checkpoint/CGAN_80", prefix="CGAN.model-9", task="pan", ext=".tif",
            pairs=pan, **common),
    ]


def prepare(source: str, task: str, data: Path, weights: Path) -> np.ndarray:
    """The uint8 grey input for one source spec (see :func:`jobs`)."""
    if source.startswith("weights:"):
        return authors_grey(weights / source.removeprefix("weights:"), task)
    if source.startswith("pan:"):
        rel, role = source.removeprefix("pan:").split("#")
        ms, pan = authors_pan_pair(data / rel, band=0, factor=4)
        return ms if role == "ms" else pan
    return authors_grey(data / source, task)


def _find_repos(paths: list[Path]) -> dict[str, Path]:
    repos: dict[str, Path] = {}
    for p in paths:
        if (p / "test.py").is_file() and (p / "RGB2YCbCr").is_dir():
            repos["mffgan"] = p
        elif (p / "Code_PMGI").is_dir():
            repos["pmgi"] = p
        else:
            raise SystemExit(f"{p}: neither an MFF-GAN nor a PMGI_AAAI2020 checkout")
    return repos


def run_job(job: Job, repo: Path, weights: Path, data: Path, work: Path) -> dict[str, object]:
    folder = work / job.name.replace("/", "__")
    if folder.exists():
        shutil.rmtree(folder)
    ckpt = folder / job.ckpt_dir
    ckpt.mkdir(parents=True)
    bundle = sorted((weights / job.name).glob(f"{job.prefix}.*"))
    if not bundle:
        raise SystemExit(f"no {job.prefix}.* in {weights / job.name}")
    for f in bundle:
        (ckpt / f.name).symlink_to(f.resolve())
    pairs = []
    for d in (*job.inputs, "inputs"):
        (folder / d).mkdir()
    for i, (src_a, src_b) in enumerate(job.pairs, start=1):
        entry: dict[str, object] = {"index": i, "sources": [src_a, src_b]}
        arrays = []
        for d, src in zip(job.inputs, (src_a, src_b), strict=True):
            arr = prepare(src, job.task, data, weights)
            target = folder / d / f"{i}{job.ext}"
            Image.fromarray(arr).save(target)
            back = np.asarray(Image.open(target).convert("YCbCr").convert("F"))
            if not np.array_equal(back, arr.astype(np.float32)):
                raise SystemExit(f"{target}: the script would not read back our uint8 input")
            np.save(folder / "inputs" / f"{d}_{i}.npy", arr)
            arrays.append(arr)
        if arrays[0].shape != arrays[1].shape:
            raise SystemExit(f"{job.name} pair {i}: shapes {arrays[0].shape} != {arrays[1].shape}")
        entry["input_npy"] = [f"{folder.name}/inputs/{d}_{i}.npy" for d in job.inputs]
        entry["input_sha256"] = [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
        entry["input_shape"] = list(arrays[0].shape)
        pairs.append(entry)

    script = repo / job.script
    env = dict(os.environ, PYTHONPATH=str(SHIM), TF_CPP_MIN_LOG_LEVEL="2",
               TF_ENABLE_ONEDNN_OPTS="0",
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(script)]
    log.info("%s: %s (cwd %s)", job.name, " ".join(cmd), folder)
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    (folder / "script.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{job.name}: the authors' script failed (rc {proc.returncode}); "
                         f"see {folder / 'script.log'}:\n{proc.stderr[-3000:]}")
    outputs = sorted((folder / "result").rglob("*.npy"))
    if len(outputs) != len(pairs):
        raise SystemExit(f"{job.name}: {len(outputs)} outputs for {len(pairs)} pairs")
    epoch_dir = outputs[0].parent
    for k, entry in enumerate(pairs):
        if job.repo == "mffgan":  # test.py: result/epoch19/<i+1>.jpg
            out = epoch_dir / f"{k + 1}.jpg.npy"
        else:  # test_one_image.py: result/epochN/F9_0<i>.<ext> (i from 0)
            stem = f"F9_0{k}" if k <= 9 else f"F9_{k}"
            out = epoch_dir / f"{stem}{'.tif' if job.ext == '.tif' else '.bmp'}.npy"
        if not out.is_file():
            raise SystemExit(f"{job.name}: expected output {out}")
        entry["output_npy"] = str(out.relative_to(work))
    return {"checkpoint": job.name, "task": job.task, "script": job.script,
            "layout": {"checkpoint": f"{job.ckpt_dir}/{job.prefix}", "inputs": list(job.inputs),
                       "ext": job.ext},
            "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", type=Path, action="append", required=True,
                        help="plain checkout of MFF-GAN or PMGI_AAAI2020 (give both)")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="checkpoint names to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repos = _find_repos(args.authors_repo)
    args.work.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf  # the venv's version goes into the manifest

    manifest: dict[str, object] = {
        "tensorflow": tf.__version__, "numpy": np.__version__,
        "pillow": Image.__version__, "python": sys.version.split()[0],
        "command": "python benchmarks/authors_reference/run_authors_tf.py --authors-repo "
                   "<MFF-GAN checkout> --authors-repo <PMGI_AAAI2020 checkout> --weights "
                   "../shared/weights --data ../shared/data --work <scratch>",
        "runs": [],
    }
    runs: list[dict[str, object]] = []
    for job in jobs(args.data):
        if args.only and job.name not in args.only:
            continue
        if job.repo not in repos:
            raise SystemExit(f"{job.name} needs the {job.repo} checkout (--authors-repo)")
        runs.append(run_job(job, repos[job.repo], args.weights, args.data, args.work))
    manifest["runs"] = runs
    (args.work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("wrote %s", args.work / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
