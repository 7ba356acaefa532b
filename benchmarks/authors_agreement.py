"""Agreement of our ports (imported released weights) with the authors' own TF1 outputs.

For every case of ``tests/fixtures/authors_tf_outputs.json`` (made by
benchmarks/authors_reference under TensorFlow): the max abs difference of the raw generator
output on its two 16x16 crops and of its mean/std/min/max, the PSNR of the published 8-bit
crops (their scipy min-max stretch vs our ``output_stretch``), and the wall time of import and
of one fuse. Prints one table (markdown); no TensorFlow needed.

    python benchmarks/authors_agreement.py --shared ../shared [--eps 1e-5]

``--eps`` overrides the BN epsilon (default: the port's 1.001e-5, what TF1 ran with) to show
what the 1e-5 the authors wrote would give.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fusion_models.pretrained.authors_inputs import case_inputs
from fusion_models.pretrained.tf_import import import_release

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "authors_tf_outputs.json"


def _fuse(model, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta, tb = (torch.from_numpy(x.astype(np.float32) / 255.0)[None, None] for x in (a, b))
    return model.fuse(ta, tb)[0, 0].double().numpy()


def _row(case: dict, models: dict, shared: Path) -> dict:
    a, b = case_inputs(case["sources"], case["task"], shared)
    out = case["output"]
    start = time.perf_counter()
    raw = _fuse(models[case["checkpoint"]], a, b) * 2.0 - 1.0
    seconds = time.perf_counter() - start
    diff, sq = 0.0, []
    for key in ("crop_top_left", "crop_centre"):
        crop = out[key]
        values = np.asarray(crop["values"])
        ours = raw[crop["row"]:crop["row"] + 16, crop["col"]:crop["col"] + 16]
        diff = max(diff, float(np.abs(ours - values).max()))
        span = out["max"] - out["min"]
        theirs8 = np.floor((values - out["min"]) * 255.0 / span + 0.5)
        ours8 = np.floor((ours - raw.min()) * 255.0 / (raw.max() - raw.min()) + 0.5)
        sq.append(((ours8 - theirs8) ** 2).ravel())
    mse = float(np.concatenate(sq).mean())
    stats = max(abs(float(f(raw)) - out[k]) for k, f in
                (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)))
    return {"case": f"{case['checkpoint']} #{case['pair']}", "size": "x".join(
        map(str, out["shape"][::-1])), "crop_diff": diff, "stats_diff": stats,
        "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse), "fuse_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared", help="the shared folder")
    parser.add_argument("--eps", type=float, default=None, help="override the BN epsilon")
    args = parser.parse_args()
    shared = Path(args.shared)
    cases = json.loads(FIXTURE.read_text())["cases"]
    models, import_s = {}, {}
    for name in sorted({c["checkpoint"] for c in cases}):
        start = time.perf_counter()
        model, _ = import_release(shared / "weights", name, {"output_stretch": False})
        import_s[name] = time.perf_counter() - start
        if args.eps is not None:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eps = args.eps
        models[name] = model
    print("| case | size | max abs diff, crops | max abs diff, mean/std/min/max | "
          "8-bit PSNR (dB) | import s | fuse s |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        r = _row(case, models, shared)
        print(f"| {r['case']} | {r['size']} | {r['crop_diff']:.1e} | {r['stats_diff']:.1e} | "
              f"{r['psnr']:.1f} | {import_s[case['checkpoint']]:.2f} | {r['fuse_s']:.2f} |")


if __name__ == "__main__":
    main()
