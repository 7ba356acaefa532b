"""Evidence that every model learns to fuse: short training runs on a real set, compared with
the average baseline on the same full-size validation pairs.

For each model (built from search_spaces/<model>.yaml): ``run_training`` for ``--epochs`` x
``--steps`` steps (batch ``--batch``), then the validation metrics of its best checkpoint next
to those of the average rule, the degenerate-fusion flags, and whether it beats averaging on at
least one gradient metric (SF, AG or Qabf). Pure PyTorch (no Ray/MLflow): runs on GPU machines.

    python benchmarks/train_evidence.py --data ../shared/data/tno            # CPU, all models
    python benchmarks/train_evidence.py --data ../shared/data/tno --smoke --epochs 6 --steps 30
    python benchmarks/train_evidence.py --data DIR --device cuda --models ufgan,fusiongan
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models import registry  # noqa: E402
from fusion_models.baselines import average  # noqa: E402
from fusion_models.metrics import compute_metrics  # noqa: E402
from orchestrator.config import load_spec  # noqa: E402
from orchestrator.train import run_training  # noqa: E402

GRADIENT = ("SF", "AG", "Qabf")


def baseline_metrics(val_pairs, names) -> dict[str, float]:
    sums = {n: 0.0 for n in names}
    for p in val_pairs:
        fused = average(p.luma_a, p.luma_b).round()
        for n, v in compute_metrics(fused, p.luma_a, p.luma_b, names).items():
            sums[n] += float(v[0]) / len(val_pairs)
    return {f"val/{n}": v for n, v in sums.items()}


def run_one(name: str, args: argparse.Namespace, out: Path) -> dict:
    data = str(Path(args.data).resolve())
    overrides = [f"data.train={data}", f"data.val={data}", f"data.val_pairs={args.val_pairs}",
                 f"data.task={args.task or 'null'}",
                 f"train.device={args.device}", f"train.max_steps_per_epoch={args.steps}",
                 f"fixed.epochs={args.epochs}", "train.sample_pairs=0",
                 f"train.val_metrics=[{','.join(GRADIENT)},SSIM,MI]", *args.set]
    if args.batch or not args.smoke:
        overrides.append(f"fixed.batch_size={args.batch or 8}")
    spec = load_spec(REPO / "search_spaces" / f"{name}.yaml", overrides, smoke=args.smoke)
    t0 = time.perf_counter()
    result = run_training(spec, None, out / name, out / "cache")
    seconds = time.perf_counter() - t0
    from orchestrator.train import _setup  # the same validation pairs the run used

    run = _setup(spec, out / "tmp", out / "cache")
    base = baseline_metrics(run.val_pairs, list(GRADIENT))
    best = next((h for h in reversed(result.history) if "val/Qabf" in h), {})
    if result.best_checkpoint:
        best = torch.load(result.best_checkpoint, weights_only=True)["metrics"]
    beats = [g for g in GRADIENT if best.get(f"val/{g}", float("nan")) > base[f"val/{g}"]]
    return {"model": name, "status": result.status, "seconds": seconds,
            "epochs": result.epochs_run, **{k: best.get(k) for k in
            ("val/SF", "val/AG", "val/Qabf", "val/SSIM_A", "val/SSIM_B", "val/degenerate")},
            **{f"average {k}": v for k, v in base.items()}, "beats_average_on": beats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a paired set folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--task", default=None, help="default: from the set's folder names")
    parser.add_argument("--models", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=None,
                        help="default: the YAML's smoke batch with --smoke, else 8")
    parser.add_argument("--smoke", action="store_true",
                        help="start from the YAML's --smoke settings (smoke: block)")
    parser.add_argument("--val-pairs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/train_evidence"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra spec overrides for every model (e.g. lr_g=1e-3)")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else registry.list_models()
    rows = []
    print(f"{'model':<10} {'status':<9} {'s':>6} {'SF':>7} {'avg SF':>7} {'AG':>6} {'avg AG':>6} "
          f"{'Qabf':>6} {'avg':>6} {'SSIM_A':>6} {'SSIM_B':>6} {'degen':>5}  beats avg on")
    for name in names:
        r = run_one(name, args, args.out)
        rows.append(r)
        f = {k: (v if isinstance(v, float) else float("nan")) for k, v in r.items()}
        print(f"{name:<10} {r['status']:<9} {r['seconds']:>6.0f} {f['val/SF']:>7.2f} "
              f"{f['average val/SF']:>7.2f} {f['val/AG']:>6.2f} {f['average val/AG']:>6.2f} "
              f"{f['val/Qabf']:>6.3f} {f['average val/Qabf']:>6.3f} {f['val/SSIM_A']:>6.3f} "
              f"{f['val/SSIM_B']:>6.3f} {f['val/degenerate']:>5.2f}  "
              f"{','.join(r['beats_average_on']) or '-'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
