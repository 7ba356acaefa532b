"""Eval and report outputs are written atomically: when the disk fills up part-way through a
write (simulated: every file opened for writing takes N more bytes, then raises ENOSPC like a
full disk) or a value fails to serialise half-way, the previous file stays as it was and no
temporary file is left beside it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from _full_disk import FullDisk
from mlflow.tracking import MlflowClient

from fusion_models.metrics import get_convention
from orchestrator.common.atomic import atomic_open, atomic_write
from orchestrator.evaluation import command as eval_cmd
from orchestrator.evaluation.local import EvalReport, PairResult
from orchestrator.reporting.images import Method, metric_table
from orchestrator.reporting.report import _write_files
from orchestrator.search.record import log_table


def _report(value: float) -> EvalReport:
    results = [PairResult(f"pair{i}", {"EN": value + i, "SF": 2.0 * value + i},
                          {"verdict": ""}) for i in range(30)]
    return EvalReport(get_convention("cdd"), "average", results)


def _eval_args(tmp_path: Path) -> eval_cmd.EvalArgs:
    return eval_cmd.EvalArgs(
        data=None, a_dir=None, b_dir=None, fused_dir=None, method="average", metrics="EN,SF",
        convention="cdd", options=(), task=None, colour_rule="gray", out_dir=None,
        json_out=str(tmp_path / "eval.json"), csv_out=str(tmp_path / "eval.csv"),
        device="cpu", use_ray=False, address=None, ray_threshold=500, quiet=True)


def _report_files(out: Path, value: float) -> None:
    methods = [Method(f"baseline_{i}", f"baseline {i}", "baseline", report=_report(value + i))
               for i in range(3)]
    table = metric_table(methods, ["EN", "SF"])
    _write_files(out, f"<html>{'x' * 500} {value}</html>", {"importances": {"v": value}},
                 table, methods)


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory) -> tuple[MlflowClient, str]:
    """A run on a real sqlite store for ``log_table``."""
    root = tmp_path_factory.mktemp("store")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("atomic", artifact_location=(root / "art").as_uri())
    return client, client.create_run(exp).info.run_id


def _table(run: tuple[MlflowClient, str], path: Path, value: float) -> None:
    rows = [{"trial_id": f"t{i}", "value": value + i} for i in range(50)]
    log_table(*run, rows, ["trial_id", "value"], path)


WRITERS: dict[str, Callable[[Path, float], None]] = {
    "EvalReport.write_json": lambda d, v: _report(v).write_json(d / "eval.json"),
    "EvalReport.write_csv": lambda d, v: _report(v).write_csv(d / "eval.csv"),
    "orchestrator eval --json/--csv": lambda d, v: eval_cmd._emit(
        {"average": _report(v)}, None, _eval_args(d)),
    "orchestrator report files": _report_files,
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fill", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("writer", [*sorted(WRITERS), "sweep trials.csv"])
def test_a_full_disk_leaves_the_previous_output(tmp_path, monkeypatch, writer, fill,
                                                 mlflow_run):
    """The disk fills after ``fill`` of what the writer wrote the first time (in a writer of
    several files: in the first, the second or the last). Every file is then either its
    previous or its complete new version, and no temporary file is left."""
    write = WRITERS.get(writer) or (lambda d, v: _table(mlflow_run, d / "trials.csv", v))
    out, reference = tmp_path / "out", tmp_path / "reference"
    out.mkdir()
    reference.mkdir()
    write(reference, 2.0)
    new = _snapshot(reference)
    write(out, 1.0)
    before = _snapshot(out)
    assert set(before) == set(new) and all(before.values())
    FullDisk(monkeypatch).free = int(fill * sum(map(len, before.values())))
    with pytest.raises(OSError, match="No space left"):
        write(out, 2.0)
    monkeypatch.undo()
    after = _snapshot(out)
    assert set(after) == set(before), "a temporary file is left"
    for name, content in after.items():
        assert content in (before[name], new[name]), f"{name} was cut short"
    if fill == 0:
        assert after == before


def test_a_value_that_fails_to_serialise_leaves_the_previous_csv(tmp_path):
    class Unprintable(float):
        def __str__(self) -> str:
            raise ValueError("cannot print this value")

        __repr__ = __str__

    _report(1.0).write_csv(tmp_path / "eval.csv")
    before = _snapshot(tmp_path)
    report = _report(2.0)
    report.results[20].metrics["EN"] = Unprintable(3.0)  # row 21 of 30
    with pytest.raises(ValueError, match="cannot print"):
        report.write_csv(tmp_path / "eval.csv")
    assert _snapshot(tmp_path) == before


def test_atomic_write_replaces_with_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write(tmp_path / "a.json", json.dumps({"v": 1}))
    atomic_write(tmp_path / "a.json", json.dumps({"v": 2}))
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 2}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin", "plain.txt"]
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(tmp_path / "c.txt", "a"):
            pass
