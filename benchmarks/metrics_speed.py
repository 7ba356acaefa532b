"""Speed and agreement of the batched torch metrics against the per-image CDD-style reference.

Runs the 12 CDD metrics on all ../shared/data/tno pairs with mean-rule fused images
(F = round((ir + vi) / 2), half to even), once with ``benchmarks/_reference_cdd.py`` (numpy,
scipy, scikit-learn, scikit-image; one image at a time) and once with ours (same-size pairs
grouped into batches, on ``--device``), checks every value agrees (rel. 1e-5, abs. 1e-5 near
zero) and prints per-metric seconds and the speed-up. Then the path a user takes: the fused
images are written as PNGs and ``orchestrator eval --fused ... --json`` runs in a fresh process
(``--cli-repeat`` times, best kept); its ``timing.metrics_s`` (every metric and the degenerate
diagnostics), ``timing.by_metric_s`` and the process's wall time are set against the same
reference run, and its per-pair values are checked against the reference too. On the CPU
``orchestrator eval`` scores in forked single-threaded workers, one per core
(orchestrator/evaluation/workers.py); the library rows are one process with torch's threads.

    python benchmarks/metrics_speed.py [--device cuda] [--json out.json] [--limit 5] [--no-cli]

Exit status 1 if any value disagrees.

Timings depend on how busy the machine is. On a shared 2-core machine, OpenMP threads that
spin-wait between parallel regions (libgomp's default) compete with other processes, and each
small torch op can then wait for a time slice (measured here: a 0.2 ms op took 20-24 ms under
a load of 3); there ``OMP_WAIT_POLICY=PASSIVE`` helps, while on an idle machine it costs ~2x
(threads sleep and must be woken for every op). The script leaves the policy alone and prints
it with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference_cdd as reference  # noqa: E402

from fusion_models.metrics import basic, qabf, ssim, vif  # noqa: E402
from fusion_models.metrics._spec import PRESETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED_DIR", REPO.parent / "shared"))
OURS = {spec.name: spec.fn for m in (basic, vif, qabf, ssim) for spec in m.SPECS}
RTOL = ATOL = 1e-5


def _omp_policy() -> str:
    return os.environ.get("OMP_WAIT_POLICY", "default")


def read_grey(path: Path) -> np.ndarray:
    """CDD's reading: cv2 BGR -> GRAY on float32, rounded."""
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    return np.round(cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY))


def load_pairs(limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, fused, ir, vi) float32 arrays for the tno pairs, mean-rule fused."""
    names = sorted(p.name for p in (SHARED / "data" / "tno" / "ir").glob("*.png"))[:limit]
    out = []
    for name in names:
        ir = read_grey(SHARED / "data" / "tno" / "ir" / name)
        vi = read_grey(SHARED / "data" / "tno" / "vi" / name)
        fused = np.round((ir.astype(np.float64) + vi) / 2).astype(np.float32)
        out.append((name, fused, ir, vi))
    return out


def time_reference(name: str, pairs) -> tuple[float, list[float]]:
    """Seconds for one pass of the per-image reference over all pairs, and its values."""
    values = []
    t0 = time.perf_counter()
    for _, f, a, b in pairs:
        values.append(reference.compute(name, f, a, b))
    return time.perf_counter() - t0, values


def make_batches(pairs, device: torch.device) -> list[tuple[list[int], tuple[torch.Tensor, ...]]]:
    """Group same-size pairs: [(pair indices, (fused, a, b) each (B, 1, H, W) float32)]."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_, f, _, _) in enumerate(pairs):
        groups[f.shape].append(i)
    batches = []
    for idx in groups.values():
        stacked = tuple(
            torch.from_numpy(np.stack([pairs[i][k] for i in idx]))[:, None].to(device)
            for k in (1, 2, 3)
        )
        batches.append((idx, stacked))
    return batches


def time_ours(name: str, batches, n_pairs: int, device: torch.device, repeat: int):
    """Best-of-``repeat`` seconds of ours over all batches (after one warm-up), and values."""
    fn, cdd = OURS[name], PRESETS["cdd"]
    best = float("inf")
    for rep in range(repeat + 1):
        t0 = time.perf_counter()
        results = [(idx, fn(f, a, b, cdd)) for idx, (f, a, b) in batches]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if rep:
            best = min(best, time.perf_counter() - t0)
    values = [0.0] * n_pairs
    for idx, res in results:
        for i, v in zip(idx, res.cpu().tolist(), strict=True):
            values[i] = v
    return best, values


def max_rel_error(ours: list[float], ref: list[float]) -> tuple[float, bool]:
    """Largest |ours - ref| / max(|ref|, 1e-5), and whether all agree (rel 1e-5, abs 1e-5)."""
    o, r = np.asarray(ours), np.asarray(ref)
    err = np.abs(o - r)
    ok = bool(np.all(err <= np.maximum(ATOL, RTOL * np.abs(r))))
    return float(np.max(err / np.maximum(np.abs(r), ATOL))), ok


def report(ref_s, our_s, ref_v, our_v) -> tuple[list[dict], bool]:
    """Print the per-metric table; return its rows (for --json) and whether all values agree."""
    rows, all_ok = [], True
    print(f"{'metric':<6} {'reference s':>12} {'ours s':>10} {'speed-up':>9} {'max rel err':>12}")
    for name in reference.NAMES:
        err, ok = max_rel_error(our_v[name], ref_v[name])
        all_ok &= ok
        speed = ref_s[name] / our_s[name]
        rows.append({"metric": name, "reference_s": ref_s[name], "ours_s": our_s[name],
                     "speedup": speed, "max_rel_err": err, "ok": ok})
        flag = "" if ok else "  MISMATCH"
        print(f"{name:<6} {ref_s[name]:>12.3f} {our_s[name]:>10.4f} {speed:>8.1f}x {err:>12.2e}"
              f"{flag}")
    tr, to = sum(ref_s.values()), sum(our_s.values())
    print(f"{'total':<6} {tr:>12.3f} {to:>10.4f} {tr / to:>8.1f}x")
    return rows, all_ok


def run_cli(pairs, ref_v: dict[str, list[float]], repeat: int, device: str) -> dict:
    """Best-of-``repeat`` ``orchestrator eval`` on the pairs as files; timings and agreement."""
    with tempfile.TemporaryDirectory(prefix="metrics-speed-") as tmp:
        fused_dir = Path(tmp) / "fused"
        fused_dir.mkdir()
        for name, f, _, _ in pairs:
            cv2.imwrite(str(fused_dir / name), f.astype(np.uint8))
        set_dir = _set_of(pairs, Path(tmp) / "set")
        best = None
        for _ in range(repeat):
            out = Path(tmp) / "report.json"
            cmd = [sys.executable, "-m", "orchestrator.cli", "eval", "--quiet", "--data",
                   str(set_dir), "--fused", str(fused_dir), "--metrics", ",".join(reference.NAMES),
                   "--device", device, "--json", str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            report = json.loads(out.read_text())
            if best is None or report["timing"]["metrics_s"] < best["timing"]["metrics_s"]:
                best = {**report, "wall_s": wall}
    order = [p[0].rsplit(".", 1)[0] for p in pairs]
    agree = all(max_rel_error([best["per_pair"][s][m] for s in order], ref_v[m])[1]
                for m in reference.NAMES)
    return {"timing": best["timing"], "wall_s": best["wall_s"], "values_agree": agree}


def _set_of(pairs, root: Path) -> Path:
    """A set folder (ir/, vi/) of links to the shared pairs used (all of them, or --limit)."""
    for role in ("ir", "vi"):
        (root / role).mkdir(parents=True)
        for name, *_ in pairs:
            os.symlink(SHARED / "data" / "tno" / role / name, root / role / name)
    return root


def report_cli(cli: dict, ref_s: dict[str, float]) -> list[dict]:
    """Print the CLI table (per metric, diagnostics, metrics_s, wall) against the reference."""
    timing, total_ref = cli["timing"], sum(ref_s.values())
    print(f"\norchestrator eval (fresh process), load {os.getloadavg()[0]:.1f}")
    print(f"{'metric':<12} {'reference s':>12} {'CLI s':>10} {'speed-up':>9}")
    rows = []
    for name, sec in timing["by_metric_s"].items():
        ref = ref_s.get(name)
        speed = f"{ref / sec:>8.1f}x" if ref and sec else f"{'':>9}"
        print(f"{name:<12} {ref if ref else 0:>12.3f} {sec:>10.4f} {speed}")
        rows.append({"metric": name, "reference_s": ref, "cli_s": sec})
    m = timing["metrics_s"]
    print(f"{'metrics_s':<12} {total_ref:>12.3f} {m:>10.4f} {total_ref / m:>8.1f}x"
          "   (every metric + diagnostics: what the CLI reports)")
    print(f"{'wall':<12} {total_ref:>12.3f} {cli['wall_s']:>10.4f} "
          f"{total_ref / cli['wall_s']:>8.1f}x   (process: start-up, reading "
          f"{timing['read_s']:.2f} s, alignment check {timing['align_s']:.2f} s, metrics)")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when every value agrees with the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device for ours (cpu, cuda)")
    parser.add_argument("--json", type=Path, default=None, help="write results to this file")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats of ours (best)")
    parser.add_argument("--cli-repeat", type=int, default=2, help="CLI runs (best)")
    parser.add_argument("--no-cli", action="store_true", help="skip the orchestrator eval run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    pairs = load_pairs(args.limit)
    pixels = sum(p[1].size for p in pairs)
    load_before = os.getloadavg()[0]
    print(f"{len(pairs)} tno pairs, {pixels / 1e6:.2f} Mpixel; ours on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={_omp_policy()}, load {os.getloadavg()[0]:.1f})")
    batches = make_batches(pairs, device)
    ref_s, ref_v, our_s, our_v = {}, {}, {}, {}
    for name in reference.NAMES:  # interleaved, so both sides see the same machine load
        our_s[name], our_v[name] = time_ours(name, batches, len(pairs), device, args.repeat)
        ref_s[name], ref_v[name] = time_reference(name, pairs)
    rows, ok = report(ref_s, our_s, ref_v, our_v)
    cli = None if args.no_cli else run_cli(pairs, ref_v, args.cli_repeat, args.device)
    if cli is not None:
        cli["rows"] = report_cli(cli, ref_s)
        ok &= cli["values_agree"]
    if args.json:
        total_ref, total_ours = sum(ref_s.values()), sum(our_s.values())
        args.json.write_text(json.dumps({
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": _omp_policy(), "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "pairs": len(pairs), "batches": len(batches), "megapixels": pixels / 1e6,
            "metrics": rows, "total_reference_s": total_ref, "total_ours_s": total_ours,
            "speedup": total_ref / total_ours, "values_agree": ok,
            "cli": cli and {**cli, "speedup_metrics_s": total_ref / cli["timing"]["metrics_s"]},
        }, indent=2))
    if not ok:
        print("values disagree with the reference (see MISMATCH rows)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
