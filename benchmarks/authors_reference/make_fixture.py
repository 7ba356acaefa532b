"""Collect the authors' TF1 generator outputs (``run_authors_tf.py``) into a test fixture.

Reads ``<work>/manifest.json`` and the raw outputs the shim saved (``imsave``'s float array,
``tanh * 127.5 + 127.5``), and writes, per checkpoint x pair: the task, the source files
(relative to the data folder; ``weights:`` = relative to the weights folder; ``pan:<file>#ms``
/ ``#pan`` = :func:`fusion_models.pretrained.authors_inputs.authors_pan_pair` of that file), the
sha256 of each prepared uint8 input array's bytes (C order), the input shape, and for the RAW
generator output ``(saved - 127.5) / 127.5`` (float64 arithmetic on the saved float32): mean,
std (population), min, max over the whole image and two 16x16 crops (top-left corner
``[0:16, 0:16]``, and the centre ``[h//2-8 : h//2+8, w//2-8 : w//2+8]``). Floats carry 7
significant digits. Only numbers and relative names go into the file (no images, no paths of
this machine).

Usage (from the repository root, any python with numpy)::

    python benchmarks/authors_reference/make_fixture.py --work <scratch folder> \
        --out tests/fixtures/authors_tf_outputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("make_fixture")

#: the authors' code the checkouts came from (the commits ../shared/weights/README.md names)
AUTHORS_CODE = {"mffgan": "HaoZhang1018/MFF-GAN@2f674c8aa00613e4637b8b12c772323b872fa9b4",
                "pmgi": "HaoZhang1018/PMGI_AAAI2020@61a85e49a306f5e9cdb05479696ad7c66253f83d"}
CROP = 16


def _g(x: float) -> float:
    return float(f"{float(x):.7g}")


def _crop(a: np.ndarray) -> list[list[float]]:
    return [[_g(v) for v in row] for row in a.astype(np.float32)]


def output_record(raw: np.ndarray) -> dict[str, object]:
    """Summary of one raw generator output (H, W) on [-1, 1]."""
    h, w = raw.shape
    r0, c0 = h // 2 - CROP // 2, w // 2 - CROP // 2
    return {
        "shape": [h, w],
        "mean": _g(raw.mean()), "std": _g(raw.std()),
        "min": _g(raw.min()), "max": _g(raw.max()),
        "crop_top_left": {"row": 0, "col": 0, "values": _crop(raw[:CROP, :CROP])},
        "crop_centre": {"row": r0, "col": c0,
                        "values": _crop(raw[r0:r0 + CROP, c0:c0 + CROP])},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/authors_tf_outputs.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = json.loads((args.work / "manifest.json").read_text())

    cases = []
    for run in manifest["runs"]:
        for pair in run["pairs"]:
            saved = np.load(args.work / pair["output_npy"])
            if saved.ndim != 2:
                raise SystemExit(f"{pair['output_npy']}: expected a 2-D output, got {saved.shape}")
            for rel, sha in zip(pair["input_npy"], pair["input_sha256"], strict=True):
                if hashlib.sha256(np.load(args.work / rel).tobytes()).hexdigest() != sha:
                    raise SystemExit(f"{rel}: input changed since the run")
            raw = (saved.astype(np.float64) - 127.5) / 127.5
            if list(raw.shape) != pair["input_shape"]:
                raise SystemExit(f"{pair['output_npy']}: output {raw.shape} != input shape")
            cases.append({
                "checkpoint": run["checkpoint"], "task": run["task"], "pair": pair["index"],
                "sources": pair["sources"], "script_inputs": run["layout"]["inputs"],
                "input_sha256": pair["input_sha256"], "input_shape": pair["input_shape"],
                "output": output_record(raw),
            })
            out = cases[-1]["output"]
            log.info("%-22s %d  mean %.6f  std %.6f", run["checkpoint"], pair["index"],
                     out["mean"], out["std"])

    fixture = {
        "about": "The authors' own TF1 test scripts (unmodified, run under the compat shim of "
                 "benchmarks/authors_reference) on their released checkpoints: raw generator "
                 "outputs (tanh, [-1, 1]) for fixed 8-bit inputs "
                 "(fusion_models.pretrained.authors_inputs). Inputs: sources[0] is fed to "
                 "script_inputs[0] (PMGI 'ir' / MFF-GAN 'near' = path 0), sources[1] to "
                 "script_inputs[1].",
        "tensorflow": manifest["tensorflow"], "numpy": manifest["numpy"],
        "pillow": manifest["pillow"], "python": manifest["python"],
        "authors_code": AUTHORS_CODE,
        "commands": [manifest["command"],
                     "python benchmarks/authors_reference/make_fixture.py --work <scratch> "
                     "--out tests/fixtures/authors_tf_outputs.json"],
        "scripts": {r["checkpoint"]: {"script": r["script"], **r["layout"]}
                    for r in manifest["runs"]},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    log.info("wrote %s (%d cases, %d bytes)", args.out, len(cases), args.out.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
