"""Sweep YAMLs as data: validation errors name the file and key, conditional spaces sample only
when active (real Optuna study), resource requests are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from fusion_models import registry
from orchestrator.common.config import load_spec
from orchestrator.search.space import SpaceSampler, SweepSpec, load_sweep, objective_values
from orchestrator.search.sweep import SweepError, check_resources

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize("name", registry.list_models())
def test_every_committed_yaml_is_a_valid_sweep(name):
    spec = load_sweep(REPO / "search_spaces" / f"{name}.yaml")
    assert spec.run.model == name and spec.space, "each YAML searches something"
    fields = set(registry.get_model_class(name).Config.model_fields)
    assert set(spec.space) <= fields
    smoke = load_sweep(REPO / "search_spaces" / f"{name}.yaml", smoke=True)
    assert smoke.tune.num_samples == 2 and smoke.epochs == 1
    # the same YAML still loads as a single run for `orchestrator train`
    assert load_spec(REPO / "search_spaces" / f"{name}.yaml").model == name


def test_final_evaluation_is_test_only_on_pairs_no_trial_saw(tmp_path):
    """Generated training data -> the generated test split (labelled test); a folder with no
    tune.test_data -> the validation set, labelled validation (never test)."""
    from orchestrator.search.space import evaluation_sets

    ufgan = load_sweep(REPO / "search_spaces" / "ufgan.yaml")
    assert ufgan.run.val_entry() == "generated:ivif:val"
    assert evaluation_sets(ufgan) == ("test", ["generated:ivif:test"])
    assert [ufgan.run.in_sample_role(f"generated:ivif{x}") for x in ("", ":train", ":val", ":test")
            ] == ["data.train", "data.train", "data.val", None]
    default = load_sweep(_write(tmp_path, {"model": "pmgi", "data": {"train": "generated:mff"}}))
    assert default.run.val_entry() == "generated:mff:val"
    assert evaluation_sets(default) == ("test", ["generated:mff:test"])
    (tmp_path / "set").mkdir()
    folder = load_sweep(_write(tmp_path, {"model": "pmgi", "data": {"train": "set"}}))
    assert evaluation_sets(folder) == ("validation", ["set"])
    given = load_sweep(_write(tmp_path, {"model": "pmgi", "data": {"train": "set"},
                                         "tune": {"test_data": ["generated:ivif:test"]}}))
    assert evaluation_sets(given) == ("test", ["generated:ivif:test"])


def test_numbers_like_1e4_and_overrides(tmp_path):
    path = _write(tmp_path, {"model": "pmgi", "space": {
        "lr_g": {"type": "loguniform", "low": "1e-5", "high": "1e-3"}},
        "tune": {"num_samples": 3}})
    spec = load_sweep(path, ["tune.num_samples=5", "tune.metric=val/SF"], num_samples=None)
    assert spec.space["lr_g"].low == pytest.approx(1e-5) and spec.tune.num_samples == 5
    assert spec.tune.metric == "val/SF"
    assert load_sweep(path, num_samples=7).tune.num_samples == 7
    # a --set of a searched parameter fixes it: it leaves the space
    assert "lr_g" not in load_sweep(path, ["lr_g=2e-4"]).space


@pytest.mark.parametrize("body, expected", [
    ({"space": {"lr_gg": {"type": "uniform", "low": 0, "high": 1}}},
     "space.lr_gg: not a parameter of pmgi; valid keys: ["),
    ({"fixed": {"lr_g": 1e-4}, "space": {"lr_g": {"type": "uniform", "low": 0.1, "high": 1}}},
     "space.lr_g: also set in the YAML's fixed block"),
    ({"space": {"channels": {"type": "choice", "values": [8, -3]}}},
     "space.channels: value -3 is invalid for pmgi"),
    ({"space": {"lr_g": {"type": "loguniform", "low": 0, "high": 1}}}, "loguniform needs low > 0"),
    ({"space": {"lr_g": {"type": "uniform", "low": 1, "high": 0.5}}}, "needs numbers low < high"),
    ({"space": {"channels": {"type": "int", "low": 4, "high": 16, "when": {"lr_g": 1}}}},
     "space.channels.when: 'lr_g' must be an earlier choice entry"),
    ({"space": {"task": {"type": "choice", "values": ["ivif", "mff"]},
                "channels": {"type": "int", "low": 4, "high": 16, "when": {"task": "mef"}}}},
     "'mef' is not one of task's values"),
    ({"tune": {"metric": ["val/Qabf", "val/EN"], "mode": "max"}}, "both be single values or both"),
    ({"tune": {"metric": "Qabf"}}, "expected val/<metric>"),
    ({"tune": {"num_samplez": 3}}, "num_samplez"),
    ({"resources": {"workers": -1}}, "workers"),
    ({"spaces": {}}, "unknown top-level key(s) ['spaces']"),
    ({"tune": {"test_data": ["generated:ivif"]}},
     "tune.test_data: 'generated:ivif' is also data.train; test pairs must be disjoint"),
    ({"tune": {"test_data": ["generated:ivif:val"]}}, "'generated:ivif:val' is also data.val"),
    ({"data": {"train": "generated:ivif", "val": "generated:ivif:test"},
      "tune": {"test_data": ["generated:ivif:test"]}}, "is also data.val"),
    ({"tune": {"test_data": ["generated:ivif:holdout"]}}, "unknown split 'holdout'"),
])
def test_bad_yaml_is_one_clear_error_naming_file_and_key(tmp_path, body, expected):
    path = _write(tmp_path, {"model": "pmgi", **body})
    with pytest.raises(ValueError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_conditional_space_samples_only_active_entries():
    spec = load_sweep(REPO / "search_spaces" / "ufgan.yaml")
    sampler = SpaceSampler(spec.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        sampler(trial)
        study.tell(trial, 0.0)
        params = trial.params
        seen.add(params["generator"])
        assert ("base_width" in params) == (params["generator"] == "unet")
        assert ("depth" in params) == (params["generator"] == "unet")
        assert 1e-5 <= params["lr_g"] <= 2e-3 and params["patch"] in (48, 64, 96)
        registry.get_model_class("ufgan").Config(**{**spec.run.fixed, **params})
    assert seen == {"unet", "fusionmodel", "dense"}


def test_objective_values_refuse_nan():
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml")
    assert objective_values({"val/Qabf": 0.5}, spec.tune) == [0.5]
    with pytest.raises(ValueError, match="val/Qabf is nan"):
        objective_values({"val/Qabf": float("nan")}, spec.tune)


def _spec(**resources) -> SweepSpec:
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml")
    return spec.model_copy(update={"resources": spec.resources.model_copy(update=resources)})


def test_resources_are_checked_against_the_cluster():
    two_cpus = [{"CPU": 2.0}]
    check_resources(_spec(), {"CPU": 2.0}, two_cpus)  # 1 CPU per trial fits
    check_resources(_spec(workers=2, cpu_per_worker=0.9), {"CPU": 2.0}, two_cpus)
    with pytest.raises(SweepError) as err:
        check_resources(_spec(workers=2, cpu_per_worker=1.0), {"CPU": 2.0}, two_cpus)
    msg = str(err.value)
    assert "needs {'CPU': 2.1, 'GPU': 0.0}" in msg and "has {'CPU': 2.0, 'GPU': 0.0}" in msg
    with pytest.raises(SweepError, match="GPU"):
        check_resources(_spec(gpu_per_worker=1), {"CPU": 2.0}, two_cpus)
    # enough CPUs in total, but no single node can hold one worker
    with pytest.raises(SweepError, match="no single node offers"):
        check_resources(_spec(workers=1, cpu_per_worker=3), {"CPU": 8.0},
                        [{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 2.0}])


def test_uri_storage_goes_to_tune_while_sweep_files_stay_local(tmp_path, monkeypatch):
    from orchestrator.search.sweep import storage_paths

    monkeypatch.chdir(tmp_path)
    assert storage_paths("s3://bucket/fo/ray_results") == ("s3://bucket/fo/ray_results",
                                                          tmp_path / "ray_results")
    assert storage_paths("runs/rr") == (str(tmp_path / "runs" / "rr"), tmp_path / "runs" / "rr")


def test_trial_drivers_can_be_pinned_to_a_head_resource():
    head_only = [{"CPU": 6.0, "driver": 16.0}, {"CPU": 4.0, "GPU": 1.0}]
    spec = _spec(workers=1, cpu_per_worker=4, gpu_per_worker=1, driver_resource="driver")
    check_resources(spec, {"CPU": 10.0, "GPU": 1.0, "driver": 16.0}, head_only)
    with pytest.raises(SweepError, match="offers no 'driver' resource"):
        check_resources(spec, {"CPU": 10.0, "GPU": 1.0}, [{"CPU": 6.0}, {"CPU": 4.0, "GPU": 1.0}])


def test_set_folders_typed_on_the_command_line_are_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    """`--set data.train=splits/x/train --set 'tune.test_data=[splits/x/test]'` means folders
    under the directory the user runs in, for every set key (not the YAML's folder)."""
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", [
        "data.train=splits/x/train", "data.val=splits/x/val",
        "tune.test_data=[splits/x/test]", "data.extra_train=[more, generated:mff]"])
    here = tmp_path.resolve()
    assert spec.run.resolve_path(spec.run.data.train) == str(here / "splits/x/train")
    assert spec.tune.test_data == [str(here / "splits/x/test")]
    assert spec.run.data.extra_train == [str(here / "more"), "generated:mff"]
    in_yaml = load_sweep(REPO / "search_spaces" / "real" / "pmgi_mff.yaml")  # YAML-relative
    assert in_yaml.tune.test_data == ["../../splits/mff/test"]
