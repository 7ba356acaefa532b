"""Markdown table of an `orchestrator eval --json` file with several methods (one row each):
the mean of every metric over the pairs, SD/8 beside SD (the headline comparison's scale,
models.md §1.8) and the degenerate count.

    python benchmarks/cmp_table.py runs/cmp/eval.json
"""

from __future__ import annotations

import json
import sys

LABELS = {"model": "TarDAL (sweep best)", "models:/fusion-ufgan@ivif-cmp": "UFGAN (sweep best)"}


def main(path: str) -> None:
    data = json.load(open(path, encoding="utf-8"))
    methods = data["methods"]
    names = list(next(iter(methods.values()))["mean"])
    print("| method | " + " | ".join(names) + " | SD/8 | degenerate |")
    print("|---" * (len(names) + 3) + "|")
    for key, rep in methods.items():
        mean, pairs = rep["mean"], len(rep["per_pair"])
        cells = [f"{mean[n]:.4g}" for n in names] + [f"{mean['SD'] / 8:.3f}"]
        print(f"| {LABELS.get(key, key)} | " + " | ".join(cells)
              + f" | {len(rep['degenerate'])}/{pairs} |")


if __name__ == "__main__":
    main(sys.argv[1])
