"""`orchestrator fuse` throughput: pairs/s of every registered model at 640x480 grey pairs,
plain eager PyTorch vs our inference path, against the FLOP-bound ceiling of this machine.

For each model (registry defaults, fresh random init) and batch size:

- eager: ``model.eval()``, ``torch.no_grad``, NCHW, nothing folded (``model.fuse``);
- ours: :func:`fusion_models.inference.prepare_for_inference` (parametrizations baked, BN
  folded into the convs, channels_last) under ``torch.inference_mode`` [+ ``torch.compile``
  with --compile] [+ bf16 autocast with --bf16], on CPU with the heap keeping freed memory
  (:func:`~fusion_models.inference.retain_freed_memory`, as ``orchestrator fuse``; --no-heap
  leaves it out). That setting is process-wide, so every model's eager times are taken first
  (phase 1, the process as started), then ours (phase 2);
- GFLOP/pair: 2 x the multiply-accumulates of every Conv2d / ConvTranspose2d / Linear call
  (forward hooks, one eager forward); functional convolutions (e.g. CNNCP's pyramid filters)
  are not counted;
- ceiling: peak FLOP/s (best large matmul of this run, fp32 or bf16 as ours runs, measured
  before and after the models) / FLOP per pair: what the convolutions alone would allow at
  matmul speed;
- max|d| grey: largest difference between ours and eager 8-bit outputs at batch 1.

Times are the best of --repeats calls after one warm-up call at batch 1. Larger batches run
only when the eager estimate fits --max-batch-seconds: eager one call (it pays the same page
faults on every call), ours the best of two (the first grows the kept heap to the new size).
A model whose eager forward of one pair is estimated (from a 320x240 call) above
--max-seconds is skipped.
On CUDA, --compile also captures the compiled forward as a CUDA graph and replays it
(:func:`fusion_models.inference.prepare_for_inference`).

    python benchmarks/fuse_speed.py
    python benchmarks/fuse_speed.py --bf16 --compile --models fusiongan,pmgi --json out.json
    python benchmarks/fuse_speed.py --device cuda --bf16 --compile --batch 1,8,32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models import registry  # noqa: E402
from fusion_models.inference import prepare_for_inference, retain_freed_memory  # noqa: E402
from fusion_models.models.base import FusionModel  # noqa: E402

log = logging.getLogger("fuse_speed")
H, W = 480, 640


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Achievable FLOP/s of this device: best of 3 (n x n) @ (n x n) matmuls after a warm-up."""
    n = 8192 if device.type == "cuda" else 4096
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    with torch.inference_mode():
        x @ x
        return 2 * n**3 / best_time(lambda: x @ x, 3, device)


def conv_flops(model: nn.Module, run: Callable[[], Tensor]) -> tuple[float, Tensor]:
    """FLOPs (2 x MACs) of the Conv2d / ConvTranspose2d / Linear calls made by ``run()``, and
    what ``run()`` returned."""
    total = [0]

    def hook(mod: nn.Module, inputs: tuple, out: Tensor) -> None:
        if isinstance(mod, nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += inputs[0].numel() * mod.out_channels // mod.groups * k
        elif isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out.numel() * mod.in_channels // mod.groups * k
        else:
            total[0] += out.numel() * mod.in_features

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return 2.0 * total[0], out


def _pairs(batch: int, device: torch.device, h: int = H, w: int = W) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(batch)
    a, b = torch.rand(2, batch, 1, h, w, generator=gen)
    return a.to(device), b.to(device)


def _runner(model: FusionModel, device: torch.device, batch: int, ours: bool
            ) -> Callable[[], Tensor]:
    a, b = _pairs(batch, device)

    def run() -> Tensor:
        if ours:
            with torch.inference_mode():
                return model.fuse(a, b)
        with torch.no_grad():
            return model.fuse(a, b)

    return run


def _build(name: str, device: torch.device) -> FusionModel:
    torch.manual_seed(0)
    return registry.build(name).to(device).eval()


def _batch_fits(row: dict, batch: int, args: argparse.Namespace) -> bool:
    """Batch 1 always; larger ones when the eager estimate fits --max-batch-seconds."""
    estimate = row["eager_s_per_pair"] * batch
    if batch == 1 or estimate <= args.max_batch_seconds:
        return True
    row["batches"][batch] = {"skipped": f"eager ~{estimate:.0f} s > {args.max_batch_seconds} s"}
    return False


def bench_eager(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Phase 1 (process as started): FLOPs and plain eager times of one model; the row."""
    eager = _build(name, device)
    small = _pairs(1, device, H // 2, W // 2)
    with torch.no_grad():
        estimate = 4 * best_time(lambda: eager.fuse(*small), 1, device)
    if estimate > args.max_seconds:
        return {"model": name, "skipped": f"eager ~{estimate:.0f} s/pair > {args.max_seconds} s"}
    run = _runner(eager, device, 1, False)
    flops, out = conv_flops(eager, run)  # also the warm-up
    row: dict = {"model": name, "batches": {}, "flop_per_pair": flops}
    row["reference"] = out.float().cpu()  # compared with ours in phase 2
    row["eager_s_per_pair"] = best_time(run, args.repeats, device)
    for batch in args.batch:
        if batch != 1 and _batch_fits(row, batch, args):
            t = best_time(_runner(eager, device, batch, False), 1, device)
            row["batches"][batch] = {"eager_pairs_s": batch / t}
    row["batches"].setdefault(1, {})["eager_pairs_s"] = 1 / row["eager_s_per_pair"]
    log.info("%s eager: %.3f s/pair", name, row["eager_s_per_pair"])
    return row


def bench_ours(row: dict, args: argparse.Namespace, device: torch.device) -> None:
    """Phase 2: our inference path of the same model (same seed), filled into ``row``."""
    t0 = time.perf_counter()
    ours = prepare_for_inference(_build(row["model"], device), compile=args.compile,
                                 precision="bf16" if args.bf16 else "fp32")
    row["prepare_s"] = time.perf_counter() - t0
    run = _runner(ours, device, 1, True)
    t0 = time.perf_counter()
    out = run().float().cpu()  # warm-up (compiles with --compile)
    row["first_call_s"] = time.perf_counter() - t0
    diff = ((row.pop("reference") * 255).round() - (out * 255).round()).abs()
    row["max_diff_grey"], row["mean_diff_grey"] = diff.max().item(), diff.mean().item()
    for batch, r in row["batches"].items():
        if "skipped" not in r:
            runner = run if batch == 1 else _runner(ours, device, batch, True)
            t = best_time(runner, args.repeats if batch == 1 else 2, device)
            r["ours_pairs_s"] = batch / t
    log.info("%s ours: %.3f s/pair", row["model"], 1 / row["batches"][1]["ours_pairs_s"])


def print_table(rows: list[dict], peaks: dict[str, float], args: argparse.Namespace) -> None:
    """The table of the module docstring (one line per model and batch size)."""
    peak = peaks["bf16" if args.bf16 else "fp32"]
    print(f"{'model':<14}{'batch':>6}{'GFLOP/pair':>11}{'eager p/s':>11}{'ours p/s':>10}"
          f"{'speed-up':>9}{'ceiling p/s':>12}{'% ceiling':>10}{'max|d| grey':>12}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['model']:<14}  skipped: {row['skipped']}")
            continue
        gflop = row["flop_per_pair"] / 1e9
        ceiling = peak / row["flop_per_pair"]
        for batch, r in sorted(row["batches"].items()):
            if "skipped" in r:
                print(f"{row['model']:<14}{batch:>6}  skipped: {r['skipped']}")
                continue
            e, o = r["eager_pairs_s"], r["ours_pairs_s"]
            r["ceiling_pairs_s"], r["pct_ceiling"] = ceiling, 100 * o / ceiling
            print(f"{row['model']:<14}{batch:>6}{gflop:>11.1f}{e:>11.3f}{o:>10.3f}{o / e:>8.2f}x"
                  f"{ceiling:>12.3f}{100 * o / ceiling:>9.1f}%{row['max_diff_grey']:>12.0f}")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="ours: bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile")
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls at batch 1")
    parser.add_argument("--max-seconds", type=float, default=10.0,
                        help="skip a model whose eager forward of one pair takes longer")
    parser.add_argument("--max-batch-seconds", type=float, default=20.0,
                        help="skip a larger batch whose eager forward would take longer")
    parser.add_argument("--no-heap", action="store_true",
                        help="ours: leave glibc's malloc as it is (no retain_freed_memory)")
    parser.add_argument("--json", dest="json_out", help="also write the rows here")
    args = parser.parse_args(argv)
    args.batch = [int(x) for x in args.batch.split(",")]
    args.models = [m for m in args.models.split(",") if m] or registry.list_models()
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write --json."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = _args(argv)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {k: peak_flops(device, dtype) for k, dtype in dtypes.items()}
    rows = [bench_eager(name, args, device) for name in args.models]
    heap = device.type == "cpu" and not args.no_heap and retain_freed_memory()
    for row in rows:
        if "skipped" not in row:
            bench_ours(row, args, device)
    peaks = {k: max(peaks[k], peak_flops(device, dtype)) for k, dtype in dtypes.items()}
    load = os.getloadavg()
    print(f"# fuse speed at {W}x{H} grey pairs, device {device} "
          f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, torch {torch.__version__}), "
          f"ours = folded BN + "
          f"channels_last + inference_mode{' + bf16' if args.bf16 else ''}"
          f"{' + compile' if args.compile else ''}{' + heap kept' if heap else ''}")
    print(f"# peak matmul: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
          f"{peaks['bf16'] / 1e9:.0f} GFLOP/s; loadavg {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; total {time.perf_counter() - t0:.0f} s")
    print_table(rows, peaks, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"device": str(device), "bf16": args.bf16, "compile": args.compile, "heap": heap,
             "peak_flops": peaks, "loadavg": load, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
