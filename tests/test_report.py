"""`orchestrator sweep --reseed-best` and `orchestrator report` on a real sweep: a real local
Ray, Optuna, MLflow (sqlite, then served by the real `orchestrator ui`), and the page checked
in a real headless Chromium."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _chromium import check_page, image_stats
from _procs import free_port, stop_group, wait_healthy
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fusion_models.registry import get_model_class
from orchestrator.cli import main
from orchestrator.deploy.import_weights import import_all
from orchestrator.reporting.compare import COMPARE_METRICS
from orchestrator.search.final_eval import final_eval
from orchestrator.search.reseed import CONTROL
from orchestrator.search.space import load_sweep
from orchestrator.search.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "search_spaces" / "mffgan.yaml"
SAMPLES, TOP, SEEDS = 4, 2, 2
#: the authors' released MFF-GAN models: one from the YAML's tune.references (final evaluation
#: and report), one from the report's --reference
REFS = ["pretrained:mffgan/lytro", "pretrained:mffgan/mfi-whu"]
OBJECTIVES = ["val/Qabf", "val/SF"]

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_local, shared_dir):
    """A 4-trial two-objective MFF-GAN sweep (final evaluation of the best trial and the
    authors' released Lytro model), its 2 best configs re-seeded twice, a report."""
    work = tmp_path_factory.mktemp("report")
    cache = str(tmp_path_factory.mktemp("report-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("FUSION_PRETRAINED_DIR", str(work / "pretrained"))
        import_all(shared_dir / "weights")
        spec = load_sweep(SPEC, ["tune.metric=[val/Qabf, val/SF]", "tune.mode=[max, max]",
                                 "train.max_steps_per_epoch=8", "tune.final_eval_top_k=1",
                                 f"tune.references=[{REFS[0]}]"],
                          smoke=True, num_samples=SAMPLES)
        out = run_sweep(spec, name="mff-report", cache_dir=cache, verbose=0)
        out.final_eval = final_eval(spec, out, cache)
        reseed = _cli("sweep", str(SPEC), "--reseed-best", str(TOP), "--seeds", str(SEEDS),
                      "--with-default", "--name", out.name, "--cache-dir", cache, "--quiet")
        promoted = _cli("promote", out.name)
        compared = _cli("compare", out.name, "--out", str(work / "compare"), "--cache-dir",
                        cache)
        port = free_port()
        report = _cli("report", out.name, "--out", str(work / "report"), "--top", str(TOP),
                      "--pairs", "3", "--grid-pairs", "2", "--ui-url", f"http://127.0.0.1:{port}",
                      "--cache-dir", cache, "--reference", REFS[1])
    return {"work": work, "out": out, "uri": out.tracking_uri, "port": port,
            "reseed_output": reseed, "report_output": report, "promote_output": promoted,
            "compare_output": compared, "cache": cache, "spec": spec,
            "page": work / "report" / "index.html"}


def registry_default(key: str) -> object:
    """MFF-GAN's Config default of a searched parameter (the paper's value)."""
    return get_model_class("mffgan").Config.model_fields[key].default


def _children(uri: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def test_reseed_trains_the_best_configs_again_and_logs_the_spread(swept):
    out, uri = swept["out"], swept["uri"]
    client = MlflowClient(uri)
    kids = _children(uri, out.parent_run_id)
    reseeds = [r for r in kids if r.data.tags.get("reseed_of", CONTROL) != CONTROL]
    assert len(reseeds) == TOP * SEEDS and {r.info.status for r in reseeds} == {"FINISHED"}
    control = [r for r in kids if r.data.tags.get("reseed_of") == CONTROL]
    assert sorted(r.data.tags["seed"] for r in control) == ["1", "2"]
    spec = swept["spec"]
    fixed = spec.run.model_params()
    for run in control:  # the paper defaults: no searched parameter set, the same budget
        for key in spec.space:
            want = fixed.get(key, registry_default(key))
            got = run.data.params[key]
            if isinstance(want, float):
                assert float(got) == pytest.approx(want), key
            else:
                assert got == str(want), key
    best = [r["trial_id"] for r in sorted(
        [r for r in out.trials if r["status"] == "finished"],
        key=lambda r: -r[OBJECTIVES[0]])][:TOP]
    assert {r.data.tags["reseed_of"] for r in reseeds} == set(best)
    assert sorted(r.data.tags["seed"] for r in reseeds) == ["1", "1", "2", "2"]
    by_trial = {r["trial_id"]: r for r in out.trials}
    for run in reseeds:  # the same configuration as the trial it re-seeds
        original = by_trial[run.data.tags["reseed_of"]]
        for key, value in run.data.params.items():
            if f"param.{key}" in original:
                want = original[f"param.{key}"]
                if isinstance(want, float):
                    assert float(value) == pytest.approx(want), key
                else:
                    assert value == str(want), key
    path = client.download_artifacts(out.parent_run_id, "seed_variance.json", str(swept["work"]))
    stats = json.loads(Path(path).read_text())["stats"]
    assert [s["trial_id"] for s in stats] == [*best, CONTROL]
    for s in stats[:-1]:
        mine = [r for r in reseeds if r.data.tags["reseed_of"] == s["trial_id"]]
        for m in OBJECTIVES:
            values = [r.data.metrics[m] for r in mine]
            assert s[f"{m}/std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert s[m] == pytest.approx(by_trial[s["trial_id"]][m])
    assert f"trial {best[0]} (seeds [1, 2])" in swept["reseed_output"]
    assert "paper-default control (seeds [1, 2])" in swept["reseed_output"]
    assert "trial paper-default" not in swept["reseed_output"]


def test_compare_sets_the_promoted_model_against_the_control_refs_and_baselines(swept):
    """`orchestrator compare`: the promoted version, each re-seeded configuration and the
    paper-default control as mean ± std over their seeds, the reference and the 4 baselines,
    all on the sweep's 8 generated test pairs; a baseline row equals `orchestrator eval`; the
    verdict counts exactly the metrics the promoted row wins."""
    from orchestrator.evaluation.local import metric_direction

    out, work = swept["out"], swept["work"]
    data = json.loads((work / "compare" / "comparison.json").read_text())
    assert [(t["set"], t["convention"]) for t in data["tables"]] == [("mff-test", "cdd")]
    rows = data["tables"][0]["rows"]
    assert [r["kind"] for r in rows] == ["promoted"] + ["seeds"] * (TOP + 1) + [
        "reference"] + ["baseline"] * 4
    assert "fusion-mffgan v1" in rows[0]["label"] and "version: 1" in swept["promote_output"]
    assert [r["detail"] for r in rows[TOP + 1:TOP + 3]] == [CONTROL, REFS[0]]
    for r in rows:
        assert r["pairs"] == 8 and r["n"] == (SEEDS if r["kind"] == "seeds" else 1)
        for m in COMPARE_METRICS:
            assert math.isfinite(r[m]), (r["label"], m)
            if r["kind"] == "seeds":
                assert r[m] == pytest.approx(np.mean(r[f"{m}/values"]))
                assert r[f"{m}/std"] == pytest.approx(np.std(r[f"{m}/values"], ddof=1))
    lap = next(r for r in rows if r["label"] == "laplacian")
    res = CliRunner().invoke(main, ["eval", "--data", "generated:mff:test", "--method",
                                    "laplacian", "--metrics", ",".join(COMPARE_METRICS),
                                    "--json", str(work / "lap.json")],
                           env={"FUSION_CACHE_DIR": swept["cache"]})
    assert res.exit_code == 0, res.output
    mean = json.loads((work / "lap.json").read_text())["mean"]
    want = {m: mean[m] for m in COMPARE_METRICS}
    assert {m: lap[m] for m in COMPARE_METRICS} == pytest.approx(want, rel=1e-9)
    rivals = [r for r in rows if r["kind"] == "baseline" or r["detail"] == CONTROL]
    won = [m for m in COMPARE_METRICS if all(
        (rows[0][m] - o[m]) * (1 if metric_direction(m) else -1) > 0 for o in rivals)]
    verdict = data["tables"][0]["verdict"]
    assert verdict["won"] == won
    assert verdict["goal_met"] == (len(won) >= 6 and rows[0]["degenerate"] == 0)
    assert f"on {len(won)}/9 metrics" in swept["compare_output"]
    md = (work / "compare" / "comparison.md").read_text()
    assert md.count("\n| ") == 1 + len(rows) and "± " in md
    client = MlflowClient(swept["uri"])
    logged = {a.path for a in client.list_artifacts(out.parent_run_id, "comparison")}
    assert logged == {f"comparison/comparison.{x}" for x in ("json", "csv", "md")}


def test_report_files_are_logged_on_the_parent_run(swept):
    out, uri = swept["out"], swept["uri"]
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(out.parent_run_id, "report")}
    assert names == {"report/index.html", "report/sensitivity.json", "report/metrics.csv"}
    parent = client.get_run(out.parent_run_id)
    assert "report/index.html" in parent.data.tags["mlflow.note.content"]
    logged = {k for k in parent.data.metrics if k.startswith("importance/")}
    assert {k.rsplit("/", 1)[0] for k in logged} == {
        f"importance/{kind}/{m}" for kind in ("fanova", "mdi") for m in OBJECTIVES}
    sens = json.loads((swept["page"].parent / "sensitivity.json").read_text())
    spec = load_sweep(SPEC)
    assert set(sens["importances"]) == set(OBJECTIVES)
    for per in sens["importances"].values():
        for kind in ("fanova", "mdi"):
            assert set(per[kind]) <= set(spec.space) and len(per[kind]) >= 2
            assert sum(per[kind].values()) == pytest.approx(1.0)
    rows = (swept["page"].parent / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["method", "kind", "EN"]
    assert len(rows) == 1 + 2 + 4 + len(REFS) + TOP
    assert [r.split(",")[:2] for r in rows[7:9]] == [[ref, "reference"] for ref in REFS]


def test_final_evaluation_measures_the_references_on_the_same_test_pairs(swept):
    rows = swept["out"].final_eval
    assert [(r["trial_id"], r["split"], r["set"]) for r in rows] == [
        (REFS[0], "test", "mff-test"), (swept["out"].best["trial_id"], "test", "mff-test")]
    ref, trial = rows
    assert ref["run_id"] == "" and ref["pairs"] == trial["pairs"] == 8
    assert 0.3 < ref["Qabf"] < 1.0  # the authors' trained model, not an untrained net


def test_report_renders_in_headless_chromium(swept):
    out = swept["out"]
    n_trials = len(out.trials)
    result = check_page(swept["page"].as_uri(), {
        "metric_rows": "document.querySelectorAll('#metric-table tbody tr').length",
        "kinds": "[...document.querySelectorAll('#metric-table tbody tr')].map(r => r.className)",
        "best_cells": "document.querySelectorAll('#metric-table td.best').length",
        "headers": "[...document.querySelectorAll('#metric-table th')].map(t => t.textContent)",
        "trial_rows": "document.querySelectorAll('#trial-table tbody tr').length",
        "figures": "[...document.querySelectorAll('img.fig')].map(i => [i.id, i.naturalWidth])",
        "grid_images": "[...document.querySelectorAll('#image-grid img')].map(i => i.naturalWidth)",
        "links": "[...document.querySelectorAll('a')].map(a => a.href)",
        "marginals": "[...document.querySelectorAll('#marginals details')].map(d => "
                     "[d.querySelector('summary').textContent, d.open])",
        "comparison": "[...document.querySelectorAll('table.comparison tbody tr')].map("
                      "r => r.className)",
    }, ["#image-grid", "#metric-table"])
    assert result.errors == [], result.errors
    v = result.values
    assert v["metric_rows"] == 2 + 4 + len(REFS) + TOP
    assert v["kinds"] == (["source"] * 2 + ["baseline"] * 4 + ["reference"] * len(REFS)
                          + ["trial"] * TOP)
    assert "SF ↑" in v["headers"] and "Qabf ↑" in v["headers"]
    assert v["best_cells"] >= 9, "each of the 9 metric columns has a best value"
    assert v["comparison"] == ["promoted"] + ["seeds"] * (TOP + 1) + ["reference"] + [
        "baseline"] * 4
    assert v["trial_rows"] == n_trials
    assert {f[0] for f in v["figures"]} == {"pareto", "importances", "seeds", "curves", ""}
    assert v["marginals"][:2] == [["val/Qabf (objective)", True], ["val/SF (objective)", True]]
    assert {m for m, is_open in v["marginals"][2:] if not is_open} >= {"val/EN", "val/SSIM",
                                                                       "val/VIF"}
    assert all(w > 100 for _, w in v["figures"]), v["figures"]
    assert len(v["grid_images"]) == 2 * 2 * (2 + 4 + len(REFS) + TOP)
    assert min(v["grid_images"]) > 50
    grid = image_stats(result.shots["#image-grid"])
    assert grid["height"] > 400 and grid["std"] > 20 and grid["colours"] > 200, grid
    run_ids = {r["run_id"] for r in out.trials}
    linked = {m.group(1) for link in v["links"]
              if (m := re.search(r"/runs/(\w+)\?workflowType=machine_learning$", link))}
    assert run_ids <= linked and out.parent_run_id in linked


def test_report_on_a_missing_test_set_names_it_and_writes_nothing(swept, tmp_path):
    res = CliRunner().invoke(main, ["report", swept["out"].name, "--out", str(tmp_path / "r"),
                                    "--data", str(tmp_path / "nope"),
                                    "--tracking-uri", swept["uri"]])
    assert res.exit_code != 0 and f"'{tmp_path / 'nope'}' does not exist" in res.output
    assert not (tmp_path / "r").exists()


def test_ui_serves_the_report_and_the_runs_it_links(swept):
    """`orchestrator ui` (a real MLflow UI server) serves the page as the parent run's artifact,
    and every run the page links to exists there."""
    work, port, out = swept["work"], swept["port"], swept["out"]
    log = work / "ui.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri", swept["uri"],
             "--port", str(port)], cwd=work, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log)
        printed = log.read_text()
        assert f"  sweep {out.name}: {base}/#/experiments/" in printed, printed
        assert (f"/runs/{out.parent_run_id}?workflowType=machine_learning  (parent run: its "
                "trials under Child runs; report: Artifacts > report/index.html)") in printed
        url = f"{base}/get-artifact?path=report/index.html&run_uuid={out.parent_run_id}"
        with urllib.request.urlopen(url, timeout=30) as res:
            assert res.read() == swept["page"].read_bytes()
        page = swept["page"].read_text()
        links = set(re.findall(r'href="(http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs/(\w+))'
                               r'\?workflowType=machine_learning"', page))
        assert len(links) >= len(out.trials) + 1
        for _, exp_id, run_id in links:
            api = f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}"
            with urllib.request.urlopen(api, timeout=30) as res:
                run = json.load(res)["run"]
            assert run["info"]["experiment_id"] == exp_id
    finally:
        stop_group(proc)


def test_report_and_reseed_name_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = CliRunner().invoke(main, ["report", "no-such-sweep", "--out", "r",
                                    "--tracking-uri", uri])
    assert res.exit_code != 0 and "unknown sweep 'no-such-sweep'" in res.output
    assert not (tmp_path / "r").exists(), "nothing half-written"
    res = CliRunner().invoke(main, ["sweep", str(SPEC), "--reseed-best", "2",
                                    "--tracking-uri", uri])
    assert res.exit_code != 0 and "no finished sweep of mffgan" in res.output
    res = CliRunner().invoke(main, ["sweep", str(SPEC), "--reseed-best", "2", "--smoke"])
    assert res.exit_code != 0 and "drop --set/--smoke" in res.output


def test_the_browser_check_catches_errors_and_blank_screens(tmp_path):
    """The Chromium check can fail: a console error, an uncaught exception, a missing image
    and a blank element are each reported."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p id="p">x</p><img src="missing.png">'
                   '<div id="blank" style="width:300px;height:200px;background:#fff"></div>'
                   '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    result = check_page(bad.as_uri(), {"n": "document.querySelectorAll('p').length"}, ["#blank"])
    assert result.values == {"n": 1}
    assert any(e == "console: boom" for e in result.errors), result.errors
    assert any("ReferenceError" in e for e in result.errors), result.errors
    assert any("missing.png" in e for e in result.errors), result.errors
    blank = image_stats(result.shots["#blank"])
    assert (blank["width"], blank["height"], blank["std"], blank["colours"]) == (300, 200, 0.0, 1)
