"""Pansharpening table on the generated Wald-protocol test set (``generated:pan:test``).

Rows: the classical baselines (bicubic, Brovey, fast IHS), the authors' released PMGI
pansharpening weights (``pretrained:pmgi/pansharpening_1`` and ``_2``; raw network output
and with the authors' histogram-matching post-processing; skipped with a message when
$FUSION_PRETRAINED_DIR lacks them: ``orchestrator import-weights ../shared/weights --all``),
and PMGI (``task="pan"``) retrained briefly on ``generated:pan`` from its initial weights,
the checkpoint chosen on the ``pan:val`` split's ERGAS. Columns: SAM (degrees), ERGAS, Q4
(Q2n, 3 bands zero-padded to 4, 32 x 32 blocks) against the reference; D_lambda, D_s and QNR
without it (docs/pansharpening.md). Nothing is downloaded.

    python benchmarks/pansharpen_table.py            # ~4 min on 2 busy cores
    python benchmarks/pansharpen_table.py --steps 0  # no retraining row
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see metrics_speed.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusion_models.data.pansharpen import generated_pan_set  # noqa: E402
from fusion_models.pansharpen_eval import baseline_method, evaluate_pan  # noqa: E402
from fusion_models.pansharpen_pmgi import pmgi_method, train_pmgi_pan  # noqa: E402
from fusion_models.registry import build, load_checkpoint  # noqa: E402

COLUMNS = ("SAM", "ERGAS", "Q2n", "D_lambda", "D_s", "QNR")
HEADER = ("SAM°", "ERGAS", "Q4", "D_λ", "D_s", "QNR")


def _released(name: str):
    """The imported released model, or None after printing why it is skipped."""
    from orchestrator.common.model_refs import resolve_pretrained

    try:
        path = resolve_pretrained(f"pretrained:{name}")
    except ValueError as exc:
        print(f"skipping pretrained:{name}: {exc}")
        return None
    return load_checkpoint(path)[0]


def _retrained(args: argparse.Namespace, cache: Path) -> tuple[object, str]:
    """PMGI pan trained ``args.steps`` steps; returns (model, a note on what was kept)."""
    train = generated_pan_set("pan", cache, n=args.n, size=args.size)
    val = generated_pan_set("pan:val", cache, n=args.val_n, size=args.val_size)
    torch.manual_seed(args.seed)
    model = build("pmgi", {"task": "pan", "lr_g": args.lr})
    t0 = time.perf_counter()
    result = train_pmgi_pan(model, train, args.steps, val_set=val, eval_every=args.eval_every,
                            batch_size=args.batch, window=args.window, seed=args.seed)
    secs = time.perf_counter() - t0
    history = ", ".join(f"{int(h['step'])}: {h['ERGAS']:.3f}" for h in result.history)
    note = (f"retrained {args.steps} steps x {args.batch} crops of {args.window}px, Adam lr "
            f"{args.lr:g}, in {secs:.0f} s (validation included); val ERGAS by step: {history};"
            f" kept step {result.best_step}")
    return model, note


def _row(label: str, scores: dict[str, float]) -> str:
    cells = [f"{scores[c]:.4f}" if c != "SAM" else f"{scores[c]:.3f}" for c in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=".fusion_cache/generated")
    parser.add_argument("--n", type=int, default=8, help="train/test images")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--val-n", type=int, default=4)
    parser.add_argument("--val-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cache = Path(args.cache)
    test = generated_pan_set("pan:test", cache, n=args.n, size=args.size)
    rows, notes = [], []
    for name in ("bicubic", "brovey", "ihs"):
        rows.append(_row(name, evaluate_pan(baseline_method(name), test)))
    for name in ("pmgi/pansharpening_1", "pmgi/pansharpening_2"):
        model = _released(name)
        if model is None:
            continue
        rows.append(_row(f"{name} (raw)", evaluate_pan(pmgi_method(model), test)))
        rows.append(_row(f"{name} + authors' match",
                         evaluate_pan(pmgi_method(model, authors_match=True), test)))
    if args.steps > 0:
        model, note = _retrained(args, cache)
        rows.append(_row("pmgi retrained on generated:pan", evaluate_pan(pmgi_method(model),
                                                                         test)))
        notes.append(note)
    print(f"\ngenerated:pan:test, {len(test)} images {args.size}x{args.size}, ratio "
          f"{test.ratio}, RGB; CPU {torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| method | " + " | ".join(HEADER) + " |")
    print("|---|" + "---|" * len(HEADER))
    print("\n".join(rows))
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
