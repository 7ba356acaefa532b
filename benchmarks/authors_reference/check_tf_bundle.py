"""Cross-check our TF-free bundle reader/writer against TensorFlow itself.

Needs a TensorFlow venv (see README.md); our module only needs numpy. Two checks:

(a) every released bundle under ``--weights``: ``tf.train.load_checkpoint(prefix)`` and our
    ``read_bundle(prefix)`` agree on names, shapes, dtypes and exact values;
(b) a bundle written by our ``write_bundle`` (float32/int64/other tensors of several shapes,
    a 0-d scalar among them) reads back identically with ``tf.train.load_checkpoint``.

Usage (from the repository root)::

    python benchmarks/authors_reference/check_tf_bundle.py --weights ../shared/weights \
        --work <scratch folder>

Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fusion_models.pretrained.tf_bundle import read_bundle, write_bundle  # noqa: E402

log = logging.getLogger("check_tf_bundle")


def _compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> list[str]:
    """Differences between two {name: array} maps (empty when identical)."""
    problems = []
    if set(ours) != set(theirs):
        problems.append(f"names differ: only ours {sorted(set(ours) - set(theirs))}, "
                        f"only TF {sorted(set(theirs) - set(ours))}")
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        if a.shape != b.shape:
            problems.append(f"{name}: shape ours {a.shape} vs TF {b.shape}")
        elif a.dtype != b.dtype:
            problems.append(f"{name}: dtype ours {a.dtype} vs TF {b.dtype}")
        elif a.tobytes() != b.tobytes():
            problems.append(f"{name}: values differ")
    return problems


def _tf_read(prefix: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0

    for index in sorted(args.weights.rglob("*.index")):
        prefix = index.with_suffix("")
        problems = _compare(read_bundle(prefix), _tf_read(prefix))
        rel = prefix.relative_to(args.weights)
        n = len(read_bundle(prefix))
        log.info("(a) %-40s %3d tensors: %s", rel, n, "PASS" if not problems else "FAIL")
        for p in problems:
            log.info("      %s", p)
        failed += bool(problems)

    rng = np.random.default_rng(0)
    cases: dict[str, np.ndarray] = {
        "scalar_f32": np.array(3.25, dtype=np.float32),
        "scalar_i64": np.array(-7, dtype=np.int64),
        "vec_f32": rng.standard_normal(5).astype(np.float32),
        "conv/w": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "counts_i64": np.arange(12, dtype=np.int64).reshape(3, 4),
        "empty_f32": np.zeros((0, 3), dtype=np.float32),
        "f64": rng.standard_normal((2, 3)),
        "i32": np.array([1, -2, 3], dtype=np.int32),
        "u8": np.array([[0, 255]], dtype=np.uint8),
        "flag": np.array([True, False]),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    prefix = args.work / "ours"
    write_bundle(prefix, cases)
    theirs = _tf_read(prefix)
    for name in sorted(cases):
        problems = _compare({name: cases[name]}, {name: theirs[name]} if name in theirs else {})
        log.info("(b) %-12s %-6s %-14s: %s", name, cases[name].dtype, str(cases[name].shape),
                 "PASS" if not problems else "FAIL " + "; ".join(problems))
        failed += bool(problems)
    extra = set(theirs) - set(cases)
    if extra:
        log.info("(b) TF sees extra tensors: %s", sorted(extra))
        failed += 1
    # and our reader round-trips our writer
    problems = _compare(read_bundle(prefix), {k: np.asarray(v) for k, v in cases.items()})
    log.info("(b) our read_bundle(write_bundle(x)) == x: %s", "PASS" if not problems
             else "FAIL " + "; ".join(problems))
    failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
