"""Evidence that every model learns to fuse: short training runs on a real set, compared with
the average baseline on held-out full-size pairs.

The set's pairs (sorted by name) are split three ways: the first ``--report-pairs`` are only
measured (the table), the next ``--select-pairs`` are the validation pairs that choose the
best checkpoint, the rest train. No reported pair is trained on or selects anything.
For each model (built from search_spaces/<model>.yaml): ``run_training`` for ``--epochs`` x
``--steps`` steps (batch ``--batch``), then its best checkpoint on the report pairs next to
the average rule, the degenerate-fusion flags, and whether it beats averaging on at least one
gradient metric (SF, AG or Qabf). Pure PyTorch (no Ray/MLflow): runs on GPU machines.

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models import registry  # noqa: E402
from fusion_models.baselines import average  # noqa: E402
from fusion_models.data import open_pair_set  # noqa: E402
from fusion_models.metrics import compute_metrics  # noqa: E402
from orchestrator.common.config import load_spec  # noqa: E402
from orchestrator.training.loop import colour_rule, run_training  # noqa: E402
from orchestrator.training.validation import evaluate_model, load_val_pairs  # noqa: E402

GRADIENT = ("SF", "AG", "Qabf")


def baseline_metrics(val_pairs, names) -> dict[str, float]:
    sums = {n: 0.0 for n in names}
    for p in val_pairs:
        fused = average(p.luma_a, p.luma_b).round()
        for n, v in compute_metrics(fused, p.luma_a, p.luma_b, names).items():
            sums[n] += float(v[0]) / len(val_pairs)
    return {f"val/{n}": v for n, v in sums.items()}


def split_set(data: Path, report: int, select: int, out: Path) -> dict[str, Path]:
    """Symlinked ``report`` / ``select`` / ``train`` copies of a set folder (pairs sorted by
    name: the first ``report``, the next ``select``, the rest), under ``out``."""
    pairs = open_pair_set(data).pairs
    if len(pairs) < report + select + 1:
        raise SystemExit(f"{data}: {len(pairs)} pairs; need more than {report} + {select}")
    parts = {"report": pairs[:report], "select": pairs[report:report + select],
             "train": pairs[report + select:]}
    folders = {}
    for name, chosen in parts.items():
        root = out / "splits" / data.name / name
        for pair in chosen:
            for path in (Path(pair.path_a), Path(pair.path_b)):
                link = root / path.parent.name / path.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(path.resolve())
        folders[name] = root
    return folders


def run_one(name: str, args: argparse.Namespace, out: Path, split: dict[str, Path]) -> dict:
    overrides = [f"data.train={split['train']}", f"data.val={split['select']}",
                 f"data.val_pairs={args.select_pairs}", f"data.task={args.task or 'null'}",
                 f"train.device={args.device}", f"train.max_steps_per_epoch={args.steps}",
                 f"fixed.epochs={args.epochs}", "train.sample_pairs=0",
                 f"train.val_metrics=[{','.join(GRADIENT)},SSIM,MI]", *args.set]
    if args.batch or not args.smoke:
        overrides.append(f"fixed.batch_size={args.batch or 8}")
    spec = load_spec(REPO / "search_spaces" / f"{name}.yaml", overrides, smoke=args.smoke)
    t0 = time.perf_counter()
    result = run_training(spec, None, out / name, out / "cache")
    seconds = time.perf_counter() - t0
    report_set = open_pair_set(split["report"], task=spec.data.task)
    pairs = load_val_pairs(report_set, colour_rule(spec, report_set), args.report_pairs)
    base = baseline_metrics(pairs, list(GRADIENT))
    best: dict[str, float] = {}
    if result.best_checkpoint:
        model, _ = registry.load_checkpoint(result.best_checkpoint, map_location=args.device)
        best, _ = evaluate_model(model, pairs, [*GRADIENT, "SSIM", "MI"])
    beats = [g for g in GRADIENT if best.get(f"val/{g}", float("nan")) > base[f"val/{g}"]]
    return {"model": name, "status": result.status, "seconds": seconds,
            "epochs": result.epochs_run, "best_epoch": result.best_epoch,
            **{k.replace("val/", "report/"): best.get(k) for k in
               ("val/SF", "val/AG", "val/Qabf", "val/SSIM_A", "val/SSIM_B", "val/degenerate")},
            **{f"average {k.replace('val/', 'report/')}": v for k, v in base.items()},
            "beats_average_on": beats}


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
    parser.add_argument("--report-pairs", type=int, default=4,
                        help="the first N pairs: measured only (the table)")
    parser.add_argument("--select-pairs", type=int, default=4,
                        help="the next N pairs: validation, choose the best checkpoint")
    parser.add_argument("--out", type=Path, default=Path("/tmp/train_evidence"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra spec overrides for every model (e.g. lr_g=1e-3)")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else registry.list_models()
    rows = []
    split = split_set(Path(args.data).resolve(), args.report_pairs, args.select_pairs, args.out)
    print(f"report pairs {split['report']}, selection pairs {split['select']}, "
          f"training pairs {split['train']}")
    print(f"{'model':<10} {'status':<9} {'s':>6} {'SF':>7} {'avg SF':>7} {'AG':>6} {'avg AG':>6} "
          f"{'Qabf':>6} {'avg':>6} {'SSIM_A':>6} {'SSIM_B':>6} {'degen':>5}  beats avg on")
    for name in names:
        r = run_one(name, args, args.out, split)
        rows.append(r)
        f = {k: (v if isinstance(v, float) else float("nan")) for k, v in r.items()}
        print(f"{name:<10} {r['status']:<9} {r['seconds']:>6.0f} {f['report/SF']:>7.2f} "
              f"{f['average report/SF']:>7.2f} {f['report/AG']:>6.2f} "
              f"{f['average report/AG']:>6.2f} {f['report/Qabf']:>6.3f} "
              f"{f['average report/Qabf']:>6.3f} {f['report/SSIM_A']:>6.3f} "
              f"{f['report/SSIM_B']:>6.3f} {f['report/degenerate']:>5.2f}  "
              f"{','.join(r['beats_average_on']) or '-'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
