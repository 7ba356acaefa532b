"""`orchestrator split`: named train/val/test splits of the real sets (symlink set folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusion_models.data import open_pair_set
from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]
SPLITS = sorted((REPO / "search_spaces" / "splits").glob("*.yaml"))


def _definition(tmp_path: Path, shared_data: Path, body: str) -> Path:
    path = tmp_path / "def.yaml"
    path.write_text(f"sets:\n  tno: {shared_data / 'tno'}\n  roadscene: "
                    f"{shared_data / 'roadscene'}\n{body}")
    return path


def test_split_builds_disjoint_set_folders_of_links(tmp_path, shared_data):
    path = _definition(tmp_path, shared_data, 'test: {tno: ["01", "02"], roadscene: '
                       '[FLIR_00211]}\nval: {tno: ["03"]}\n')
    res = CliRunner().invoke(main, ["split", str(path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "train 71 pairs, val 1 pairs, test 3 pairs" in res.output  # 25 + 50 - 4
    test = open_pair_set(tmp_path / "s" / "test")
    assert [p.name for p in test.pairs] == ["roadscene-FLIR_00211", "tno-01", "tno-02"]
    assert test.pairs[1].path_a.resolve() == (shared_data / "tno" / "ir" / "01.png").resolve()
    record = json.loads((tmp_path / "s" / "split.json").read_text())
    roles = {r: {(x["set"], x["name"]) for x in rows} for r, rows in record["roles"].items()}
    assert roles["val"] == {("tno", "03")}
    assert not (roles["train"] & roles["test"]) and not (roles["train"] & roles["val"])
    assert len(record["roles"]["train"][0]["sha256_a"]) == 64
    # a second run replaces the split as a whole
    path.write_text(path.read_text().replace('val: {tno: ["03"]}', 'val: {tno: ["04"]}'))
    assert CliRunner().invoke(main, ["split", str(path), "--out", str(tmp_path / "s")]
                              ).exit_code == 0
    assert [p.name for p in open_pair_set(tmp_path / "s" / "val").pairs] == ["tno-04"]


@pytest.mark.parametrize("body, message", [
    ('test: {tno: [01]}\nval: {tno: ["03"]}\n', 'quoted pair names ("01", not 01)'),
    ('test: {tno: ["99"]}\nval: {tno: ["03"]}\n', "test.tno: no pair '99'"),
    ('test: {tno: ["01"]}\nval: {tno: ["01"]}\n', "val.tno: pair '01' is also in test"),
    ('test: {tno: ["01"]}\n', "role(s) ['val'] have no pairs"),
    ('test: {lytro: ["01"]}\nval: {tno: ["03"]}\n', "test.lytro: not one of sets"),
    ('test: {tno: ["01"]}\nval: {tno: ["03"]}\ntrain: {tno: ["05"]}\n', "unknown key(s) ['train']"),
])
def test_a_bad_definition_is_one_error_and_writes_nothing(tmp_path, shared_data, body, message):
    path = _definition(tmp_path, shared_data, body)
    res = CliRunner().invoke(main, ["split", str(path), "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and message in res.output and str(path) in res.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("definition", SPLITS, ids=[p.stem for p in SPLITS])
def test_the_committed_splits_build(definition, tmp_path):
    res = CliRunner().invoke(main, ["split", str(definition), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    for role in ("train", "val", "test"):
        assert len(open_pair_set(tmp_path / "s" / role).pairs) >= 3


RECIPES = sorted((REPO / "search_spaces" / "real").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_real_data_recipes_validate_on_their_committed_split(recipe):
    """Each recipe trains, selects and tests on the three roles of one committed split and
    compares against a released checkpoint it can also start from."""
    from orchestrator.search.space import load_sweep

    spec = load_sweep(recipe)
    root = (REPO / "splits").resolve()
    roles = [Path(spec.run.resolve_path(e)) for e in
             (spec.run.data.train, spec.run.data.val, *spec.tune.test_data)]
    split = roles[0].parent.name
    assert roles == [root / split / r for r in ("train", "val", "test")]
    assert (REPO / "search_spaces" / "splits" / f"{split}.yaml").is_file()
    assert spec.tune.references and spec.tune.references[0] in spec.space["init"].values
    assert spec.tune.time_budget_s and spec.tune.degenerate_penalty > 0


def test_split_role_folders_are_labelled_by_split_and_role(tmp_path, shared_data):
    from orchestrator.search.final_eval import set_label

    path = _definition(tmp_path, shared_data, 'test: {tno: ["01"]}\nval: {tno: ["03"]}\n')
    CliRunner().invoke(main, ["split", str(path), "--out", str(tmp_path / "ivif")])
    assert set_label(str(tmp_path / "ivif" / "test")) == "ivif-test"
    assert set_label(str(shared_data / "tno")) == "tno"
