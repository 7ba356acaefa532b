"""`orchestrator eval` end to end on the real sets in ../shared/data (in-process path)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from orchestrator.cli import main

CORE = ["EN", "SD", "SF", "AG", "MI", "MSE", "PSNR", "CC", "SCD", "VIF", "Qabf", "SSIM"]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["eval", "--quiet", *args])
    return result.exit_code, result.output


def eval_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"report{len(list(tmp_path.glob('report*.json')))}.json"
    code, output = run_cli(*args, "--json", str(out))
    assert code == 0, output
    return json.loads(out.read_text())


def make_set(root: Path, files: dict[str, dict[str, Path]]) -> Path:
    """A set folder of copies: {"ir": {"06": path}, "vi": {...}}."""
    for role, stems in files.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        for stem, src in stems.items():
            shutil.copy(src, root / role / f"{stem}{src.suffix}")
    return root


def test_golden_values_through_the_cli(tmp_path, shared_dir, golden):
    data = shared_dir / "data" / "tno"
    pair = make_set(tmp_path / "set", {"ir": {"06": data / "ir/06.png"},
                                       "vi": {"06": data / "vi/06.png"}})
    fused = make_set(tmp_path, {"fused": {"06": shared_dir / "golden/fused/tno/max/06.png"}})
    report = eval_json(tmp_path, "--data", str(pair), "--fused", str(fused / "fused"),
                       "--metrics", ",".join(CORE))
    expected = golden["values"]["tno/06/max"]
    for name in CORE:
        want = expected["VIFF" if name == "VIF" else name]
        assert report["per_pair"]["06"][name] == pytest.approx(want, rel=1e-5, abs=1e-5), name
    assert report["convention"] == "cdd"
    assert report["timing"]["pairs"] == 1
    assert report["timing"]["read_s"] > 0 and report["timing"]["metrics_s"] > 0


def test_vifb_convention_through_the_cli(tmp_path, shared_dir, golden):
    data = shared_dir / "data" / "tno"
    pair = make_set(tmp_path / "set", {"ir": {"08": data / "ir/08.png"},
                                       "vi": {"08": data / "vi/08.png"}})
    fused = make_set(tmp_path, {"fused": {"08": shared_dir / "golden/fused/tno/max/08.png"}})
    names = {"AG": "Avg_gradient", "EN": "Entropy", "MI": "Mutinf", "PSNR": "Psnr",
             "Qabf": "Qabf", "SSIM": "Ssim", "SD": "Variance", "SF": "Spatial_frequency",
             "CE": "Cross_entropy", "EI": "Edge_intensity", "RMSE": "Rmse", "Qcb": "Qcb",
             "Qcv": "Qcv"}
    report = eval_json(tmp_path, "--data", str(pair), "--fused", str(fused / "fused"),
                       "--convention", "vifb", "--metrics", ",".join(names))
    expected = golden["values_other_evaluators"]["vifb_matlab"]["values"]["tno/08/max"]
    for ours, theirs in names.items():
        got = report["per_pair"]["08"][ours]
        assert float(f"{got:.5g}") == float(f"{expected[theirs]['value']:.5g}"), ours


@pytest.mark.parametrize("dataset", ["tno", "lytro", "harvard_mri_pet", "mefb", "roadscene",
                                     "harvard_mri_ct"])
def test_every_shared_set_evaluates(tmp_path, shared_data, dataset):
    report = eval_json(tmp_path, "--data", str(shared_data / dataset), "--method", "average",
                       "--metrics", "EN,SF,MI,Qabf,SSIM,VIF")
    first_source = sorted(p for p in (shared_data / dataset).iterdir() if p.is_dir())[0]
    n_pairs = len(list(first_source.iterdir()))
    assert report["timing"]["pairs"] == n_pairs == len(report["per_pair"])
    for name, value in report["mean"].items():
        assert math.isfinite(value), name
    assert report["mean"]["EN"] > 3.0 and 0.0 < report["mean"]["Qabf"] < 1.0


def test_fused_folder_round_trip_equals_method(tmp_path, shared_data):
    """`--method X --out D` then `--fused D/X` measures the same images: same numbers."""
    data = str(shared_data / "harvard_mri_pet")
    direct = eval_json(tmp_path, "--data", data, "--method", "laplacian",
                       "--out", str(tmp_path / "fused"), "--metrics", "EN,SF,Qabf,MI")
    written = sorted(p.name for p in (tmp_path / "fused" / "laplacian").iterdir())
    assert len(written) == 24 and written[0].endswith(".png")
    img = cv2.imread(str(tmp_path / "fused" / "laplacian" / written[0]), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 3 and img.shape[2] == 3  # PET colour restored (IHS)
    again = eval_json(tmp_path, "--data", data, "--fused", str(tmp_path / "fused/laplacian"),
                      "--metrics", "EN,SF,Qabf,MI")
    for name in ("EN", "SF", "Qabf", "MI"):
        assert again["mean"][name] == pytest.approx(direct["mean"][name], rel=1e-9)


def test_method_all_compares_baselines(tmp_path, shared_data):
    report = eval_json(tmp_path, "--data", str(shared_data / "lytro"), "--method", "all",
                       "--metrics", "SF,AG,Qabf")
    methods = report["methods"]
    assert set(methods) == {"average", "max_abs", "laplacian", "gff"}
    # Multi-focus: the multi-scale rules keep the in-focus detail that averaging halves.
    for m in ("laplacian", "gff"):
        assert methods[m]["mean"]["SF"] > methods["average"]["mean"]["SF"]
        assert methods[m]["mean"]["Qabf"] > methods["average"]["mean"]["Qabf"]


def test_copy_of_a_source_is_flagged(tmp_path, shared_data):
    data = shared_data / "tno"
    pair = make_set(tmp_path / "set", {"ir": {"01": data / "ir/01.png", "02": data / "ir/02.png"},
                                       "vi": {"01": data / "vi/01.png", "02": data / "vi/02.png"}})
    make_set(tmp_path, {"fused": {"01": data / "vi/01.png"}})
    avg = np.round((cv2.imread(str(data / "ir/02.png")).astype(float)
                    + cv2.imread(str(data / "vi/02.png"))) / 2).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "fused" / "02.png"), avg)
    report = eval_json(tmp_path, "--data", str(pair), "--fused", str(tmp_path / "fused"),
                       "--metrics", "SSIM,CC")
    assert report["degenerate"] == ["01"]
    assert report["diagnostics"]["01"]["verdict"] == "copies source B"
    assert report["diagnostics"]["01"]["SSIM_B"] == pytest.approx(1.0)
    assert report["diagnostics"]["02"]["verdict"] == ""


def test_missing_fused_images_name_the_stems(tmp_path, shared_data):
    fused = make_set(tmp_path, {"fused": {"06": shared_data / "tno/vi/06.png"}})
    code, output = run_cli("--data", str(shared_data / "tno"), "--fused", str(fused / "fused"))
    assert code != 0
    assert "no image for 24 of 25 pairs" in output and "'01'" in output


def test_fused_size_mismatch_names_both_sizes(tmp_path, shared_data):
    pair = make_set(tmp_path / "set", {"ir": {"06": shared_data / "tno/ir/06.png"},
                                       "vi": {"06": shared_data / "tno/vi/06.png"}})
    fused = make_set(tmp_path, {"fused": {"06": shared_data / "tno/vi/01.png"}})
    code, output = run_cli("--data", str(pair), "--fused", str(fused / "fused"))
    assert code != 0 and "06.png" in output and "(W x H)" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "EN,BOGUS"], "BOGUS"),
        (["--convention", "matlab"], "valid: ['cdd', 'mpy', 'tang', 'vifb']"),
        (["--option", "mi_bse=2"], "mi_base"),
        (["--method", "wavelet"], "laplacian"),
    ],
)
def test_bad_options_give_one_clear_error(shared_data, args, message):
    base = ["--data", str(shared_data / "harvard_mri_ct")]
    if "--method" not in args:
        base += ["--method", "average"]
    code, output = run_cli(*base, *args)
    assert code != 0 and message in output, output


def test_generated_demo_data_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["eval", "--data", "generated:ivif", "--method", "all",
                                       "--metrics", "EN,SF,Qabf"])
    assert result.exit_code == 0, result.output
    for word in ("average", "laplacian", "gff", "Qabf", "degenerate"):
        assert word in result.output


def test_ground_truth_metrics_on_generated_multifocus(tmp_path, monkeypatch):
    """A set with a gt/ folder gets full-reference PSNR_GT/SSIM_GT; sharp rules score higher."""
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    report = eval_json(tmp_path, "--data", "generated:mff", "--method", "average,laplacian",
                       "--metrics", "EN")
    avg, lap = (report["methods"][m]["mean"] for m in ("average", "laplacian"))
    assert lap["PSNR_GT"] > avg["PSNR_GT"] > 20.0
    assert 0.9 < lap["SSIM_GT"] <= 1.0
