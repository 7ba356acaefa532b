"""Paper-budget training of FusionGAN and UFGAN on the real IVIF training split, then the held-out
test pairs fused and measured: one GPU run of a few minutes gives a real model.

Pure PyTorch (the one training loop, ``orchestrator.training.loop.run_training``, with no
reporter and no tracking; no Ray, no MLflow), so it runs on the GPU machine; on CPU use ``--smoke``.

The data: an ``orchestrator split search_spaces/splits/ivif.yaml`` folder (``train``/``val``/
``test`` link sets). Each model is built from its ``search_spaces/<model>.yaml`` at the
paper's settings (its Config defaults: epochs, batch, patch, loss weights), trains on
``train``, selects best.pt on ``val`` (val/Qabf), then fuses every ``test`` pair. Written under
``--out``: ``<model>/fused/*.png``, ``<model>/best.pt``, and ``results.json`` (per model and for
the four baselines: the mean of each metric, cdd and vifb conventions, the degenerate count,
training wall time); a table is printed.

    python benchmarks/gpu_paper_train.py --split splits/ivif --device cuda --out /tmp/paper
    python benchmarks/gpu_paper_train.py --split splits/ivif --smoke --out /tmp/paper  # CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models.baselines import BASELINES  # noqa: E402
from fusion_models.data import open_pair_set  # noqa: E402
from orchestrator.common.config import load_spec  # noqa: E402
from orchestrator.evaluation.local import evaluate_local, make_settings, plan_items  # noqa: E402
from orchestrator.training.loop import colour_rule, run_training  # noqa: E402

METRICS = ("EN", "MI", "Qabf", "SF", "AG", "SD", "SSIM", "PSNR", "VIF")
CONVENTIONS = ("cdd", "vifb")


def train_one(model: str, split: Path, args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    """Train ``model`` at its paper settings; returns (best.pt copy, wall seconds)."""
    sets = [f"data.train={(split / 'train').resolve()}", f"data.val={(split / 'val').resolve()}",
            "data.task=ivif", f"train.device={args.device}", "train.select_metric=val/Qabf",
            "train.select_mode=max", "train.val_metrics=[Qabf, SF, EN, SSIM]"]
    if args.epochs:
        sets.append(f"fixed.epochs={args.epochs}")
    if args.steps:
        sets.append(f"train.max_steps_per_epoch={args.steps}")
    spec = load_spec(REPO / "search_spaces" / f"{model}.yaml", sets, smoke=args.smoke)
    t0 = time.perf_counter()
    result = run_training(spec, None, out / model / "run", out / "cache")
    wall = time.perf_counter() - t0
    best = out / model / "best.pt"
    shutil.copy(result.best_checkpoint, best)
    logging.info("%s: %d epochs in %.0f s, best val/Qabf %.4f (epoch %s)", model,
                 result.epochs_run, wall, result.best_value, result.best_epoch)
    return best, wall


def measure(items: list, rule: str, device: str, model: str | None, baseline: str | None,
            fused_dir: Path | None) -> dict[str, dict]:
    """Per convention: mean metrics and the degenerate-flagged pair names."""
    out = {}
    for conv in CONVENTIONS:
        settings = make_settings(METRICS, conv, baseline, rule, device,
                                 out_dir=str(fused_dir) if fused_dir and conv == "cdd" else None,
                                 model=model)
        report = evaluate_local(items, settings).to_dict()
        out[conv] = {"mean": report["mean"], "degenerate": report["degenerate"]}
    return out


def table(results: dict[str, dict]) -> str:
    lines = []
    for conv in CONVENTIONS:
        lines.append(f"{conv:<10}" + "".join(f"{m:>8}" for m in METRICS) + "  degenerate  train_s")
        for name, r in results.items():
            mean = r[conv]["mean"]
            lines.append(f"{name:<10}" + "".join(f"{mean[m]:8.3f}" for m in METRICS)
                         + f"  {len(r[conv]['degenerate']):>10}  {r.get('train_s', 0):7.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, help="an `orchestrator split` folder (ivif)")
    ap.add_argument("--models", default="fusiongan,ufgan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=None, help="default: the paper's")
    ap.add_argument("--steps", type=int, default=None, help="cap per epoch (default: all)")
    ap.add_argument("--smoke", action="store_true", help="the YAMLs' smoke settings (CPU)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    split, out = Path(args.split), Path(args.out)
    test = open_pair_set(split / "test", task="ivif")
    spec = load_spec(REPO / "search_spaces" / "fusiongan.yaml", ["data.task=ivif"])
    rule, items = colour_rule(spec, test), plan_items(test, None)
    results: dict[str, dict] = {}
    for model in args.models.split(","):
        best, wall = train_one(model, split, args, out)
        results[model] = {**measure(items, rule, args.device, str(best), None,
                                    out / model / "fused"), "train_s": wall}
    for name in BASELINES:
        results[name] = measure(items, rule, "cpu", None, name, None)
    (out / "results.json").write_text(json.dumps(
        {"test_pairs": [i.name for i in items], "device": args.device, "results": results},
        indent=1, allow_nan=True))
    logging.info("%d test pairs\n%s", len(items), table(results))


if __name__ == "__main__":
    main()
