"""The sensitivity and report building blocks on data whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.evaluation.local import EvalReport, PairResult
from orchestrator.reporting.images import Method, metric_table, pick_crop, tiles
from orchestrator.reporting.plots import pareto_mask
from orchestrator.reporting.sensitivity import param_importances, seed_stats, usable_rows
from orchestrator.search.space import SpaceEntry, load_sweep

REPO = Path(__file__).resolve().parents[1]


def test_space_entries_map_to_optuna_distributions_and_read_back_csv_cells():
    log = SpaceEntry(type="loguniform", low=1e-5, high=1e-3)
    assert log.distribution() == FloatDistribution(1e-5, 1e-3, log=True)
    assert SpaceEntry(type="int", low=16, high=64, log=True).distribution() == \
        IntDistribution(16, 64, log=True)
    choice = SpaceEntry(type="choice", values=[8, 16, "unet", True])
    assert choice.distribution() == CategoricalDistribution([8, 16, "unet", True])
    assert choice.coerce("16") == 16 and choice.coerce("unet") == "unet"
    assert choice.coerce("True") is True and choice.coerce("") is None
    assert log.coerce("2.5e-4") == pytest.approx(2.5e-4) and log.coerce(math.nan) is None
    assert SpaceEntry(type="int", low=1, high=5).coerce("3.0") == 3
    with pytest.raises(ValueError, match="not one of the choices"):
        choice.coerce("32")


@pytest.fixture(scope="module")
def pmgi_spec():
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml")
    spec.tune.metric, spec.tune.mode = ["val/Qabf", "val/MSE"], ["max", "min"]
    return spec


def _rows(spec, n: int, seed: int = 0) -> list[dict]:
    """Trials whose Qabf depends on w_int_a only and whose MSE depends on lr_g only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = {k: (rng.choice(e.values).item() if e.type == "choice" else
                 float(np.exp(rng.uniform(np.log(e.low), np.log(e.high)))))
             for k, e in spec.space.items()}
        rows.append({"trial_id": f"t{i}", "run_id": f"r{i}", "status": "finished",
                     **{f"param.{k}": str(v) for k, v in p.items()},  # as read from a CSV
                     "val/Qabf": 0.1 * np.log(p["w_int_a"]) + 1e-4 * rng.normal(),
                     "val/MSE": 50 * np.log(p["lr_g"]) ** 2 + 1e-3 * rng.normal()})
    return rows


def test_importances_name_the_parameter_each_objective_depends_on(pmgi_spec):
    result = param_importances(pmgi_spec, _rows(pmgi_spec, 40))
    assert result["n_trials"] == 40 and result["basis"] == "40 finished trials"
    assert not result["notes"]
    for metric, param in (("val/Qabf", "w_int_a"), ("val/MSE", "lr_g")):
        for kind in ("fanova", "mdi"):
            values = result["importances"][metric][kind]
            assert set(values) == set(pmgi_spec.space)
            assert sum(values.values()) == pytest.approx(1.0)
            assert max(values, key=values.get) == param, (metric, kind, values)
            assert values[param] > 0.6, (metric, kind, values)


def test_importances_fall_back_to_stopped_trials_and_say_so(pmgi_spec):
    rows = _rows(pmgi_spec, 6)
    for r in rows[:4]:
        r["status"] = "stopped"
    rows[5]["status"] = "error"
    used, basis = usable_rows(pmgi_spec, rows)
    assert len(used) == 5 and "1 finished, 4 stopped early" in basis
    few = param_importances(pmgi_spec, rows[:1])
    assert few["importances"] == {} and "at least 2" in few["notes"]["val/Qabf"]


def test_seed_stats_are_the_sample_statistics_per_configuration(pmgi_spec):
    originals = {"a": {"run_id": "ra", "val/Qabf": 0.5, "val/MSE": 10.0},
                 "b": {"run_id": "rb", "val/Qabf": 0.4, "val/MSE": 12.0}}
    rows = [{"reseed_of": "a", "seed": s, "status": "finished", "val/Qabf": q, "val/MSE": m}
            for s, q, m in ((1, 0.41, 11.0), (2, 0.47, 13.0), (3, 0.44, 12.5))]
    rows += [{"reseed_of": "b", "seed": 1, "status": "finished", "val/Qabf": 0.39,
              "val/MSE": 12.2},
             {"reseed_of": "b", "seed": 2, "status": "error", "val/Qabf": math.nan,
              "val/MSE": math.nan}]
    a, b = seed_stats(pmgi_spec, rows, originals)
    assert a["trial_id"] == "a" and a["seeds"] == [1, 2, 3] and a["n"] == 3
    assert a["val/Qabf"] == 0.5
    assert a["val/Qabf/mean"] == pytest.approx(np.mean([0.41, 0.47, 0.44]))
    assert a["val/Qabf/std"] == pytest.approx(np.std([0.41, 0.47, 0.44], ddof=1))
    assert (a["val/MSE/min"], a["val/MSE/max"]) == (11.0, 13.0)
    assert b["seeds"] == [1] and math.isnan(b["val/Qabf/std"]), "one seed: no spread"


def test_crop_lands_on_the_detailed_region():
    rng = np.random.default_rng(0)
    a = np.full((200, 300, 1), 100, np.uint8)
    a[120:180, 200:280] = rng.integers(0, 255, (60, 80, 1), dtype=np.uint8)
    b = np.full((200, 300, 3), 60, np.uint8)
    y, x, size = pick_crop(a, b)
    assert size == 50 and 120 - 10 <= y <= 180 - size + 10 and 200 - 10 <= x <= 280 - size + 10
    whole, zoom = tiles(a, (y, x, size))
    assert whole.startswith("data:image/png;base64,") and zoom.startswith("data:image/png")


def _method(key: str, kind: str, values: dict[str, float], verdict: str = "") -> Method:
    report = EvalReport(convention=None, method=None)
    report.results = [PairResult("p0", values, {"verdict": verdict})]
    return Method(key, key, kind, report=report)


def test_metric_table_marks_the_best_by_direction_and_ignores_sources():
    methods = [_method("source_a", "source", {"SF": 99.0, "MSE": 0.0}),
               _method("average", "baseline", {"SF": 5.0, "MSE": 30.0}),
               _method("t1", "trial", {"SF": 9.0, "MSE": 40.0}, verdict="copies source A")]
    table = metric_table(methods, ["SF", "MSE"])
    assert [c["arrow"] for c in table["columns"]] == ["↑", "↓"]
    best = {(r["label"], c["name"]) for r in table["rows"]
            for c, cell in zip(table["columns"], r["cells"], strict=True) if cell["best"]}
    assert best == {("t1", "SF"), ("average", "MSE")}
    assert [r["degenerate"] for r in table["rows"]] == [[], [], ["copies source A"]]


def test_pareto_mask_keeps_the_non_dominated_points():
    values = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.9, 0.9], [2.0, 0.4]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, True, True, False, False]
    assert pareto_mask(values, ["min", "min"]).tolist() == [False, False, True, True, True]


def test_a_reseed_config_trains_the_original_params_with_its_own_seed(pmgi_spec):
    from orchestrator.search.sweep import trial_context
    from orchestrator.search.trial import RESEED, split_config, trial_spec

    params = {"w_int_a": 2.0, "channels": 16}
    assert split_config(params) == (params, {})
    got, extras = split_config({RESEED: {**params, "__seed__": 3, "__reseed_of__": "abc"}})
    assert got == params and extras == {"seed": 3, "reseed_of": "abc"}
    ctx = trial_context(pmgi_spec, "s", "sqlite:///x.db", "p", ".cache", "ray_results")
    spec = trial_spec(ctx, got, extras["seed"])
    assert spec.train.seed == 3 and spec.fixed["w_int_a"] == 2.0 and spec.fixed["channels"] == 16
    assert trial_spec(ctx, got).train.seed == pmgi_spec.run.train.seed == 0


def test_with_default_adds_the_paper_default_control_with_the_same_seeds(pmgi_spec):
    """The control trains the YAML's fixed settings only (no searched key): the model's
    paper defaults at the same budget, with the seeds the best configuration gets."""
    from orchestrator.search.reseed import CONTROL, reseed_configs
    from orchestrator.search.sweep import trial_context
    from orchestrator.search.trial import split_config, trial_spec

    rows = _rows(pmgi_spec, 6)
    plain = reseed_configs(pmgi_spec, rows, 2, 3)
    grid = reseed_configs(pmgi_spec, rows, 2, 3, with_default=True)
    assert grid[:6] == plain and [c["__seed__"] for c in grid[6:]] == [1, 2, 3]
    assert grid[6:] == [{"__seed__": s, "__reseed_of__": CONTROL} for s in (1, 2, 3)]
    ctx = trial_context(pmgi_spec, "s", "sqlite:///x.db", "p", ".cache", "ray_results")
    params, extras = split_config({"__reseed__": grid[6]})
    spec = trial_spec(ctx, params, extras["seed"])
    assert params == {} and spec.fixed == pmgi_spec.run.fixed and spec.train.seed == 1


def test_promote_never_picks_a_control_or_a_flagged_run():
    from types import SimpleNamespace

    from orchestrator.deploy.promote import _eligible
    from orchestrator.search.reseed import CONTROL

    def run(metrics=None, **tags):
        return SimpleNamespace(data=SimpleNamespace(tags=tags, metrics=metrics or {}))

    assert _eligible(run(trial_id="a")) and _eligible(run(reseed_of="a", best_flagged="false"))
    assert not _eligible(run(reseed_of=CONTROL))
    assert not _eligible(run(trial_id="b", best_flagged="true"))
    # best.pt unflagged although the last evaluation was flagged: the tag decides
    assert _eligible(run({"val/degenerate": 0.25}, best_flagged="false"))
    # no tag (an older run): its last evaluation's flags decide
    assert not _eligible(run({"val/degenerate": 0.875}, trial_id="c"))
    assert _eligible(run({"val/degenerate": 0.0}, trial_id="d"))


def test_verdict_counts_metrics_won_against_the_control_and_every_baseline():
    from orchestrator.reporting.compare import COMPARE_METRICS, Comparison, markdown, verdict
    from orchestrator.search.reseed import CONTROL

    def row(kind, detail, value, degenerate=0):
        out = {"label": detail, "kind": kind, "detail": detail, "n": 1, "pairs": 4,
               "degenerate": degenerate}
        for m in COMPARE_METRICS:
            out[m], out[f"{m}/std"] = value[m] if isinstance(value, dict) else value, math.nan
        return out

    promoted = row("promoted", "p", {m: 2.0 for m in COMPARE_METRICS} | {"SF": 0.5})
    rows = [promoted, row("seeds", CONTROL, 1.0), row("seeds", "trial x", 3.0),
            row("reference", "ref", 2.5), row("baseline", "gff", {m: 1.5 for m in
                                                                  COMPARE_METRICS} | {"EN": 2.2})]
    v = verdict(rows)  # the best-config seeds row is not a rival; SF lost, EN lost to gff
    assert v["won"] == [m for m in COMPARE_METRICS if m not in ("SF", "EN")]
    assert v["lost"] == ["EN", "SF"] and v["won_vs_references"] == [] and v["goal_met"]
    rows[0]["degenerate"] = 1
    assert not verdict(rows)["goal_met"]
    md = markdown(Comparison("s", [{"set": "x-test", "convention": "cdd", "rows": rows,
                                    "verdict": verdict(rows)}]))
    assert "| p | 2 | 2 | 2 | 0.5 |" in md and "on 7/9 metrics" in md and "not met" in md
