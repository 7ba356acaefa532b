"""`orchestrator split DEFINITION --out DIR`: named train/val/test splits of real sets.

A definition (YAML, read with ``yaml.safe_load``, aliases bounded) names the sets and, per
set, the pairs of the ``test`` and ``val`` roles; every other pair of the sets trains::

    sets:                       # name -> set folder (relative to this file)
      tno: ../../../shared/data/tno
      roadscene: ../../../shared/data/roadscene
    test: {tno: ["01", "02", "03", "04"], roadscene: [FLIR_00211, FLIR_00977]}
    val: {tno: ["05", "06", "07", "08"], roadscene: [FLIR_01000]}

The output ``DIR/train``, ``DIR/val`` and ``DIR/test`` are ordinary set folders (the first
set's two role folders) of symbolic links named ``<set>-<name>`` to the original files, so no
image is copied and every command takes them as ``--data``/``data.train``/``tune.test_data``.
``DIR/split.json`` records the definition, each role's pairs and the sha256 of every source.
A name that is not in its set, a pair in two roles, an empty role or sets whose role folders
differ is one error naming the definition file and the key; nothing is written then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fusion_models.data import open_pair_set
from fusion_models.data.patches import sha256_file
from orchestrator.common import atomic_write, load_yaml

ROLES = ("train", "val", "test")


def _names(definition: dict, role: str, sets: dict, where: str) -> dict[str, list[str]]:
    block = definition.get(role) or {}
    if not isinstance(block, dict):
        raise ValueError(f"{where}: {role}: expected a mapping set name -> list of pair names")
    out = {}
    for set_name, names in block.items():
        if set_name not in sets:
            raise ValueError(f"{where}: {role}.{set_name}: not one of sets {sorted(sets)}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: {role}.{set_name}: expected a list of quoted pair names "
                             f"(\"01\", not 01), got {names!r}")
        out[set_name] = names
    return out


def plan_split(path: str | Path) -> tuple[dict[str, list[tuple[str, Any]]], Any, dict]:
    """Read and check a definition: ({role: [(set name, Pair)]}, first PairSet, raw YAML)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read the split definition: {exc}") from None
    definition = load_yaml(text, where)
    if not isinstance(definition, dict) or not isinstance(definition.get("sets"), dict) \
            or not definition["sets"]:
        raise ValueError(f"{where}: expected a mapping with 'sets' (name -> set folder)")
    unknown = sorted(set(definition) - {"sets", "val", "test"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: sets, val, test")
    sets = {n: open_pair_set(path.parent / str(d)) for n, d in definition["sets"].items()}
    first = next(iter(sets.values()))
    for name, ps in sets.items():
        if (ps.dir_a.name, ps.dir_b.name) != (first.dir_a.name, first.dir_b.name):
            raise ValueError(f"{where}: sets.{name}: role folders {ps.dir_a.name}/"
                             f"{ps.dir_b.name} differ from {first.dir_a.name}/{first.dir_b.name}")
    taken: dict[tuple[str, str], str] = {}
    plan: dict[str, list[tuple[str, Any]]] = {r: [] for r in ROLES}
    for role in ("test", "val"):
        for set_name, names in _names(definition, role, sets, where).items():
            by_name = {p.name: p for p in sets[set_name].pairs}
            for n in names:
                if n not in by_name:
                    raise ValueError(f"{where}: {role}.{set_name}: no pair {n!r} in "
                                     f"{sets[set_name].root}")
                if (set_name, n) in taken:
                    raise ValueError(f"{where}: {role}.{set_name}: pair {n!r} is also in "
                                     f"{taken[(set_name, n)]}")
                taken[(set_name, n)] = role
                plan[role].append((set_name, by_name[n]))
    for set_name, ps in sets.items():
        plan["train"] += [(set_name, p) for p in ps.pairs if (set_name, p.name) not in taken]
    empty = [r for r in ROLES if not plan[r]]
    if empty:
        raise ValueError(f"{where}: role(s) {empty} have no pairs")
    return plan, first, definition


def write_split(definition: str | Path, out: str | Path) -> dict[str, int]:
    """Build ``out/{train,val,test}`` (symlink set folders) and ``out/split.json``; returns
    the pair count per role. A previous split in ``out`` is replaced as a whole."""
    plan, first, raw = plan_split(definition)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    record: dict[str, Any] = {"definition": raw, "roles": {}}
    for role, pairs in plan.items():
        for folder in (first.dir_a.name, first.dir_b.name):
            (tmp / role / folder).mkdir(parents=True)
        rows = []
        for set_name, pair in pairs:
            stem = f"{set_name}-{pair.name}"
            for src, folder in ((pair.path_a, first.dir_a.name), (pair.path_b, first.dir_b.name)):
                (tmp / role / folder / f"{stem}{src.suffix}").symlink_to(src.resolve())
            rows.append({"set": set_name, "name": pair.name, "sha256_a": sha256_file(pair.path_a),
                         "sha256_b": sha256_file(pair.path_b)})
        record["roles"][role] = rows
    atomic_write(tmp / "split.json", json.dumps(record, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return {role: len(pairs) for role, pairs in plan.items()}
