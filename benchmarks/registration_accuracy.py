"""How well :mod:`fusion_models.registration` recovers known misalignments on the shared sets.

For each shared set, the first ``--pairs`` pairs (A, B) are read as luma. The pair's own
transform ``M0 = estimate(A, B)`` is measured first ("own px": the pair as published is not
always registered). B is then moved by a known transform T about the image centre (bilinear,
borders replicated) and estimated again, giving ``M``. The recovered perturbation is
``M @ inv(M0)``; the residual is the largest distance between ``M p`` and ``T @ M0 p`` over the
four corners of the image interior (10 % inset), in full-size pixels: how far the registration
leaves B from where it sat before it was moved.

    python benchmarks/registration_accuracy.py [--pairs 2] [--model rigid|affine|homography]
        [--max-side N] [--sets tno,lytro]

Then the guard as ``eval``/``fuse`` run it on every pair of each set as published
(:func:`measure`, 256 px working copies): pairs that read > 1 px, how many of those mutual
information confirms (the ones the command line warns about), and ms per pair; and the time of
:func:`measure` on the 640x480 TNO pair 10, the median of 10 runs. Times depend on how busy
the machine is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED_DIR", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

from fusion_models.data import read_image  # noqa: E402
from fusion_models.registration import describe, estimate, luma01, measure  # noqa: E402

SETS = ["tno", "roadscene", "harvard_mri_pet", "harvard_mri_ct", "lytro", "mefb"]
PERTURBATIONS = {  # name: (dx, dy, rotation_deg, scale)
    "shift": (3.5, -2.25, 0.0, 1.0),
    "rotate": (0.0, 0.0, 1.5, 1.0),
    "combined": (3.5, -2.25, 1.5, 1.0),
    "large": (-12.0, 7.0, 0.0, 1.0),
    "scale": (0.0, 0.0, 0.0, 1.02),  # non-rigid models only
}


def known(shape: tuple[int, int], dx: float, dy: float, rot: float, scale: float) -> np.ndarray:
    """3x3 transform A -> moved B: rotate/scale about the centre, then shift."""
    h, w = shape
    t = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rot, scale), [0, 0, 1]])
    t[:2, 2] += (dx, dy)
    return t


def move(img: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The image content moved by t (a scene point at p goes to t p)."""
    h, w = img.shape
    return cv2.warpAffine(img, t[:2], (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def interior_error(m: np.ndarray, t: np.ndarray, shape: tuple[int, int],
                   inset: float = 0.1) -> float:
    """Max distance between m p and t p over the corners of the inset interior box (px)."""
    h, w = shape
    xs, ys = (inset * (w - 1), (1 - inset) * (w - 1)), (inset * (h - 1), (1 - inset) * (h - 1))
    p = np.array([[x, y, 1.0] for x in xs for y in ys])
    pm, pt = p @ m.T, p @ t.T
    return float(np.abs(pm[:, :2] / pm[:, 2:] - pt[:, :2] / pt[:, 2:]).max())


def pairs(name: str, limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    dir_a, dir_b = sorted(p for p in (SHARED / "data" / name).iterdir() if p.is_dir())
    files = sorted(dir_a.iterdir())[:limit]
    return [(f.stem, luma01(read_image(f)), luma01(read_image(dir_b / f.name))) for f in files]


def rows_for(name: str, stem: str, a: np.ndarray, b: np.ndarray, args) -> list[list[str]]:
    m0, rho0 = estimate(a, b, args.model, args.max_side)
    own = describe(m0, a.shape, rho0).misalignment_px
    rows = []
    for label, (dx, dy, rot, scale) in PERTURBATIONS.items():
        if label == "scale" and args.model == "rigid":
            continue
        t = known(a.shape, dx, dy, rot, scale)
        start = time.perf_counter()
        m, rho = estimate(a, move(b, t), args.model, args.max_side)
        ms = 1000 * (time.perf_counter() - start)
        got = describe(m @ np.linalg.inv(m0), a.shape, rho)
        err = interior_error(m, t @ m0, a.shape)
        rows.append([f"{name}/{stem}", f"{a.shape[1]}x{a.shape[0]}", f"{own:.2f}", label,
                     f"{dx:+.2f},{dy:+.2f},{rot:+.2f},{scale:.3f}",
                     f"{got.dx:+.2f},{got.dy:+.2f},{got.rotation_deg:+.2f},{got.scale:.3f}",
                     f"{err:.3f}", f"{ms:.0f}"])
    return rows


def guard_table(sets: list[str]) -> None:
    """The misregistration guard on every published pair of each set."""
    print("\nguard on the published pairs (measure(), threshold 1 px):")
    for name in sets:
        found, times = [], []
        for _, a, b in pairs(name, 10_000):
            start = time.perf_counter()
            found.append(measure(a, b))
            times.append(1000 * (time.perf_counter() - start))
        over = [f for f in found if f.ok and f.misalignment_px > 1.0]
        print(f"  {name:16s} {len(found):3d} pairs: {sum(not f.ok for f in found)} not measured,"
              f" {len(over):2d} read > 1 px, {sum(f.confirmed for f in over):2d} of them confirmed"
              f" by MI (warned); median {statistics.median(times):.0f} ms per pair")


def check_time() -> str:
    a, b = (luma01(read_image(SHARED / "data" / "tno" / s / "10.png")) for s in ("ir", "vi"))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        found = measure(a, b)
        times.append(1000 * (time.perf_counter() - start))
    return (f"measure() on tno/10 ({a.shape[1]}x{a.shape[0]}): median "
            f"{statistics.median(times):.1f} ms, best {min(times):.1f} ms over 10 runs; "
            f"it reads {found.misalignment_px:.2f} px")


def summary(rows: list[list[str]], args) -> None:
    """Per set and overall: cases with residual <= 0.5 px, median and worst residual, ms."""
    print(f"\nmodel {args.model}, max side {args.max_side or 'full'}:")
    groups = {name: [r for r in rows if r[0].split("/")[0] == name]
              for name in dict.fromkeys(r[0].split("/")[0] for r in rows)}
    for name, group in [*groups.items(), ("all", rows)]:
        errors = [float(r[6]) for r in group]
        print(f"  {name:16s} {sum(e <= 0.5 for e in errors):3d}/{len(errors):3d} cases <= 0.5 px,"
              f" median {statistics.median(errors):.3f} px, worst {max(errors):8.3f} px, median "
              f"{statistics.median(float(r[7]) for r in group):4.0f} ms per estimate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs per set (the first N)")
    parser.add_argument("--model", default="rigid", choices=["rigid", "affine", "homography"])
    parser.add_argument("--max-side", type=int, default=None,
                        help="working size (default: full size, as --register uses)")
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    head = ["pair", "size", "own px", "perturbation", "true dx,dy,rot,scale",
            "recovered dx,dy,rot,scale", "residual px", "ms"]
    rows = [r for name in args.sets.split(",") for stem, a, b in pairs(name, args.pairs)
            for r in rows_for(name, stem, a, b, args)]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    summary(rows, args)
    guard_table(args.sets.split(","))
    print(check_time())


if __name__ == "__main__":
    main()
