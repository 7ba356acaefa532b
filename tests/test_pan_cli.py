"""`orchestrator pan-eval`: pansharpening baselines and PMGI-pan checkpoints measured on a
generated Wald-protocol set through the CLI, the same numbers as the library, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fusion_models.pansharpen_eval import baseline_method, evaluate_pan
from fusion_models.registry import build
from orchestrator.cli import main
from orchestrator.evaluation.pansharpen import open_set

SET = ["--data", "generated:pan:test", "--n", "2", "--size", "128"]


def _run(tmp_path, *args: str):
    return CliRunner().invoke(main, ["pan-eval", *SET, "--cache-dir", str(tmp_path / "c"),
                                     *args], catch_exceptions=False)


def test_baselines_through_the_cli_equal_the_library(tmp_path):
    res = _run(tmp_path, "--method", "all", "--json", str(tmp_path / "t.json"))
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "t.json").read_text())["methods"]
    assert list(got) == ["bicubic", "brovey", "ihs"]
    pan_set = open_set("generated:pan:test", tmp_path / "c", 4, 2, 128)
    for name, values in got.items():
        assert set(values) == {"SAM", "ERGAS", "Q2n", "D_lambda", "D_s", "QNR"}
        assert values == pytest.approx(evaluate_pan(baseline_method(name), pan_set), abs=1e-12)
    # the component-substitution baselines inject the PAN's detail: closer to the reference
    assert got["brovey"]["ERGAS"] < got["bicubic"]["ERGAS"] and got["ihs"]["Q2n"] > got[
        "bicubic"]["Q2n"]
    assert "| brovey |" in res.output and "ERGAS ↓" in res.output


def test_a_pmgi_pan_checkpoint_is_a_row_with_and_without_the_authors_match(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "pan.pt"
    torch.save(build("pmgi", {"task": "pan"}).checkpoint(epoch=1), path)
    raw = _run(tmp_path, "--model", str(path), "--json", str(tmp_path / "raw.json"))
    matched = _run(tmp_path, "--model", str(path), "--authors-match",
                   "--json", str(tmp_path / "m.json"))
    assert raw.exit_code == 0 and matched.exit_code == 0, raw.output + matched.output
    r = json.loads((tmp_path / "raw.json").read_text())["methods"][str(path)]
    m = json.loads((tmp_path / "m.json").read_text())["methods"][f"{path} + authors' match"]
    print(f"untrained PMGI pan: ERGAS raw {r['ERGAS']:.3f}, with the authors' match "
          f"{m['ERGAS']:.3f}")
    assert all(v == v for v in (*r.values(), *m.values()))  # finite, not NaN
    assert r["ERGAS"] != pytest.approx(m["ERGAS"])


def test_bad_input_gives_one_clear_error(tmp_path):
    ivif = tmp_path / "ivif.pt"
    torch.save(build("pmgi", {"task": "ivif"}).checkpoint(epoch=1), ivif)
    res = _run(tmp_path, "--model", str(ivif))
    assert res.exit_code == 2 and "task 'ivif'" in res.output and "task: pan" in res.output
    res = _run(tmp_path, "--method", "sharpest")
    assert res.exit_code == 2 and "unknown pansharpening baseline(s) ['sharpest']" in res.output
    res = _run(tmp_path)
    assert res.exit_code == 2 and "--method" in res.output
    res = CliRunner().invoke(main, ["pan-eval", "--data", str(tmp_path / "nowhere"),
                                    "--method", "all"])
    assert res.exit_code == 1 and "is not a pansharpening set" in res.output
    assert not (tmp_path / "t.json").exists()
