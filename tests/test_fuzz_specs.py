"""Fuzz pass over the spec YAMLs and ``--set`` values a user hands us.

Every leaf of every ``search_spaces/*.yaml`` gets every hostile value (wrong types, NaN/inf,
negative, huge, empty); the sweep loader either accepts the result or raises ValueError naming
the file; never another exception. Alias bombs, unknown models and paths outside the YAML's
folder are covered one by one, and the CLI shows one error line with exit status != 0.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.search.space import load_sweep

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "search_spaces").glob("*.yaml"))
HOSTILE = ["abc", [], {}, True, None, math.nan, math.inf, -math.inf, -1, 0, 10**30, 1e-300,
           [1, "x"], {"type": "nope"}]


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def _replaced(raw: dict, path: tuple, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(raw))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _accepted_sanely(spec) -> None:
    """An accepted spec has finite numbers where it searches (no NaN/inf ranges)."""
    for name, entry in spec.space.items():
        for end in (getattr(entry, "low", None), getattr(entry, "high", None)):
            assert end is None or (isinstance(end, int | float) and math.isfinite(end)), name


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_every_key_with_every_hostile_value(tmp_path, spec_path):
    raw = yaml.safe_load(spec_path.read_text())
    outcomes: Counter = Counter()
    bugs = []
    for path in _leaves(raw):
        if path[0] == "model":
            continue  # covered by test_unknown_model_is_named
        for value in HOSTILE:
            target = tmp_path / "spec.yaml"
            target.write_text(yaml.safe_dump(_replaced(raw, path, value)))
            try:
                spec = load_sweep(target)
                _accepted_sanely(spec)
                outcomes["accepted"] += 1
            except ValueError as exc:
                outcomes["refused"] += 1
                if str(target) not in str(exc):
                    bugs.append((".".join(map(str, path)), value, f"unnamed: {exc}"))
            except Exception as exc:  # noqa: BLE001 - any other exception is the bug we hunt
                bugs.append((".".join(map(str, path)), value, f"{type(exc).__name__}: {exc}"))
    assert not bugs, "\n".join(map(str, bugs[:40])) + f"\n({len(bugs)} in all)"
    assert outcomes["refused"] > outcomes["accepted"]  # most hostile values are refused


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["model: pmgi", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="bomb.yaml") as info:
        load_sweep(bomb)
    assert "alias" in str(info.value)


def test_unknown_model_is_named(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text((REPO / "search_spaces" / "pmgi.yaml").read_text()
                    .replace("model: pmgi", "model: fusiongann"))
    with pytest.raises(ValueError, match="fusiongann") as info:
        load_sweep(spec)
    assert str(spec) in str(info.value) and "fusiongan" in str(info.value)  # the valid ones


@pytest.mark.parametrize("entry", ["{type: loguniform, low: .nan, high: 10}",
                                   "{type: uniform, low: 0, high: .inf}",
                                   "{type: loguniform, low: -1, high: 10}",
                                   "{type: int, low: 5, high: 1}",
                                   "{type: choice, values: []}"])
def test_bad_ranges_are_refused(tmp_path, entry):
    spec = tmp_path / "s.yaml"
    text = (REPO / "search_spaces" / "pmgi.yaml").read_text()
    spec.write_text(text.replace("w_int_a: {type: loguniform, low: 0.1, high: 10}",
                                 f"w_int_a: {entry}"))
    with pytest.raises(ValueError, match="w_int_a"):
        load_sweep(spec)


@pytest.mark.parametrize("value", ["lr_g=abc", "lr_g=.nan", "epochs=-3", "nosuchkey=1",
                                   "data.train=[1, 2]", "tune.num_samples=[]", "=3", "lr_g",
                                   "tune.metric={a: 1}", "batch_size=1e400"])
def test_bad_set_values_give_one_error_line(tmp_path, value):
    result = CliRunner().invoke(main, ["sweep", str(REPO / "search_spaces" / "pmgi.yaml"),
                                       "--set", value, "--name", "fuzz"],
                                catch_exceptions=False)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and result.output.count("Error") == 1, result.output
    assert not (tmp_path / "ray_results").exists()


def test_paths_outside_the_yaml_folder_are_named_and_nothing_is_written(tmp_path, monkeypatch):
    """A data folder above the YAML's folder resolves against it; a missing one is one error
    naming the resolved folder, before any run folder, store or database is written."""
    spec = tmp_path / "deep" / "s.yaml"
    spec.parent.mkdir()
    spec.write_text((REPO / "search_spaces" / "pmgi.yaml").read_text()
                    .replace("train: generated:ivif ", "train: ../no/such/set "))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    assert load_sweep(spec).run.resolve_path("../no/such/set") == str(tmp_path / "no/such/set")
    result = CliRunner().invoke(main, ["train", str(spec), "--smoke", "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert str(tmp_path / "no" / "such" / "set") in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
