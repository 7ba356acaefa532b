"""The misregistration guard (fusion_models.registration, `eval`/`fuse --register` and
`--misalign-threshold`) on real pairs of ../shared/data moved by known transforms.

A pair as published is not always registered (TNO, RoadScene and Harvard pairs measure 1-10 px
off), so recovery is checked against the pair's own estimate ``M0``: after B is moved by T,
the estimate must be ``T @ M0`` within 0.5 px at the corners of the image interior, i.e. the
registration brings B back to where it sat. benchmarks/registration_accuracy.py prints the same
check on every set.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion_models import registry
from fusion_models.data import load_pair, make_ivif, read_image
from fusion_models.registration import (
    align_sources,
    describe,
    estimate,
    luma01,
    measure,
    register,
    warp,
)
from orchestrator.cli import main
from orchestrator.evaluation.local import make_settings

MOVES = {  # name: (dx, dy, rotation_deg)
    "shift": (3.5, -2.25, 0.0),
    "rotate": (0.0, 0.0, 1.5),
    "combined": (3.5, -2.25, 1.5),
}
#: (set, source A, source B, stem, model): IR/VIS, MRI/PET (rigid: on MRI/PET the affine
#: scale follows the skull in MRI, not the brain in PET, see the benchmark), multi-focus
PAIRS = [("tno", "ir", "vi", "07.png", "affine"),
         ("harvard_mri_pet", "mri", "pet", "25022.png", "rigid"),
         ("lytro", "a", "b", "lytro-02.jpg", "affine")]


def known(shape: tuple[int, int], dx: float, dy: float, rot: float) -> np.ndarray:
    """3x3 transform: rotate about the image centre, then shift."""
    h, w = shape[:2]
    t = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rot, 1.0), [0, 0, 1]])
    t[:2, 2] += (dx, dy)
    return t


def move(img: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Image content moved by t (the point at p goes to t p), borders replicated."""
    h, w = img.shape[:2]
    out = cv2.warpAffine(img, t[:2], (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(img.shape)


def interior_error(m: np.ndarray, t: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance (px) between m p and t p over the corners of the 10 %-inset interior."""
    h, w = shape[:2]
    p = np.array([[x, y, 1.0] for x in (0.1 * (w - 1), 0.9 * (w - 1))
                  for y in (0.1 * (h - 1), 0.9 * (h - 1))])
    pm, pt = p @ m.T, p @ t.T
    return float(np.abs(pm[:, :2] / pm[:, 2:] - pt[:, :2] / pt[:, 2:]).max())


def read_pair(shared_data: Path, name: str, role_a: str, role_b: str,
              stem: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image(shared_data / name / role_a / stem), read_image(
        shared_data / name / role_b / stem)


@pytest.mark.parametrize("move_name", MOVES)
@pytest.mark.parametrize(("name", "role_a", "role_b", "stem", "model"), PAIRS,
                         ids=[p[0] for p in PAIRS])
def test_register_undoes_a_known_move(shared_data, name, role_a, role_b, stem, model,
                                      move_name):
    a, b = (luma01(x) for x in read_pair(shared_data, name, role_a, role_b, stem))
    m0, _ = estimate(a, b, model)
    t = known(a.shape, *MOVES[move_name])
    aligned, found = register(a, move(b, t), model)
    assert found.ok and found.correlation > 0.15
    assert interior_error(found.matrix, t @ m0, a.shape) <= 0.5
    h, w = a.shape
    inner = (slice(h // 10, -h // 10), slice(w // 10, -w // 10))
    back = np.abs(aligned - warp(b, m0))[inner].mean()
    assert back < 0.01, f"mean |aligned - B at its own place| = {back:.4f} (of 1)"


def test_recovered_numbers_match_the_move(shared_data):
    a, b = (luma01(x) for x in read_pair(shared_data, "lytro", "a", "b", "lytro-02.jpg"))
    m0, _ = estimate(a, b, "rigid")
    moved = move(b, known(a.shape, 3.5, -2.25, 1.5))
    m, rho = estimate(a, moved, "rigid")
    got = describe(m @ np.linalg.inv(m0), a.shape, rho)
    assert got.dx == pytest.approx(3.5, abs=0.1) and got.dy == pytest.approx(-2.25, abs=0.1)
    assert got.rotation_deg == pytest.approx(1.5, abs=0.05)
    assert got.scale == pytest.approx(1.0, abs=1e-6)  # rigid: no scale


def test_aligned_pairs_measure_below_one_px_and_a_moved_one_above(shared_data):
    for name, role_a, role_b, stem in [("tno", "ir", "vi", "07.png"),
                                       ("lytro", "a", "b", "lytro-02.jpg"),
                                       ("mefb", "a", "b", "507.tif")]:
        a, b = (luma01(x) for x in read_pair(shared_data, name, role_a, role_b, stem))
        assert measure(a, b).misalignment_px < 1.0, name
        moved = measure(a, move(b, known(a.shape, 3.5, -2.25, 0.0)))
        assert 3.0 < moved.misalignment_px < 5.0, name  # |(3.5, -2.25)| = 4.16
        assert moved.dx == pytest.approx(3.5, abs=0.5), name
        assert moved.confirmed and moved.mi_gain > 0.05, (name, moved.mi_gain)


def test_unconfirmed_estimates_on_registered_generated_pairs(tmp_path):
    """Generated IR/VIS pairs are registered by construction but share little structure: ECC
    reads px-sized offsets there, which mutual information does not back."""
    pair_set = make_ivif(tmp_path / "ivif", n=8, size=256, seed=0)
    found = [measure(*(luma01(x) for x in load_pair(p))) for p in pair_set.pairs]
    assert sum(f.ok and f.misalignment_px > 1.0 for f in found) >= 4  # ECC alone: false alarms
    assert not [f for f in found if f.confirmed], [round(f.mi_gain, 4) for f in found]


def test_colour_b_is_warped_channel_by_channel(shared_data):
    a, b = read_pair(shared_data, "lytro", "a", "b", "lytro-02.jpg")  # (520, 520, 3) uint8
    moved = move(b, known(b.shape, 3.5, -2.25, 1.5))
    aligned, found = align_sources(a, moved, "rigid")
    assert aligned.shape == b.shape and aligned.dtype == np.uint8 and found.ok
    inner = (slice(52, -52), slice(52, -52))
    for c in range(3):
        diff = np.abs(aligned[..., c].astype(float) - b[..., c])[inner].mean()
        assert diff < 3.0, f"channel {c}: mean |aligned - B| = {diff:.2f} of 255"
    unchanged, nothing = align_sources(a, moved, None, check=False)
    assert unchanged is moved and nothing is None


# -- the command line ---------------------------------------------------------------------------

def make_set(root: Path, shared_data: Path, t: np.ndarray | None) -> Path:
    """tno/07 as a one-pair set, its VIS moved by t (None: as published)."""
    for role in ("ir", "vi"):
        (root / role).mkdir(parents=True)
    shutil.copy(shared_data / "tno" / "ir" / "07.png", root / "ir" / "07.png")
    vi = cv2.imread(str(shared_data / "tno" / "vi" / "07.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "vi" / "07.png"), vi if t is None else move(vi, t))
    return root


def run_eval(*args: str) -> tuple[int, str, dict]:
    import json

    out = Path(args[args.index("--json") + 1]) if "--json" in args else None
    res = CliRunner().invoke(main, ["eval", "--quiet", *args])
    return res.exit_code, res.output, (json.loads(out.read_text()) if out and out.exists()
                                       else {})


def test_eval_warns_about_a_moved_pair_only(tmp_path, shared_data, caplog):
    aligned = make_set(tmp_path / "aligned", shared_data, None)
    moved = make_set(tmp_path / "moved", shared_data, known((256, 256), 3.5, -2.25, 0.0))
    with caplog.at_level(logging.WARNING):
        code, output, _ = run_eval("--data", str(aligned), "--method", "average",
                                   "--metrics", "EN")
    assert code == 0, output
    assert not [r for r in caplog.records if "misaligned" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, output, _ = run_eval("--data", str(moved), "--method", "average", "--metrics", "EN")
    assert code == 0, output
    (warning,) = [r for r in caplog.records if "misaligned" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "pair '07'" in warning.getMessage()
    assert "threshold 1 px" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a threshold above the 4.2 px move: quiet
        run_eval("--data", str(moved), "--method", "average", "--metrics", "EN",
                 "--misalign-threshold", "6")
    assert not [r for r in caplog.records if "misaligned" in r.getMessage()]


def test_eval_does_not_warn_on_the_generated_demo_set(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="orchestrator.deploy.fuse"):
        code, output, _ = run_eval("--data", "generated:ivif", "--method", "average",
                                   "--metrics", "EN")
    assert code == 0, output
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    unconfirmed = [r for r in caplog.records if "does not confirm" in r.getMessage()]
    assert len(unconfirmed) >= 4  # measured, reported at info level only


def test_eval_register_improves_the_metrics(tmp_path, shared_data, caplog):
    moved = make_set(tmp_path / "moved", shared_data, known((256, 256), 3.5, -2.25, 1.5))
    metrics = "Qabf,SSIM,MI,VIF"
    code, output, plain = run_eval("--data", str(moved), "--method", "average", "--metrics",
                                   metrics, "--json", str(tmp_path / "plain.json"))
    assert code == 0, output
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, output, fixed = run_eval("--data", str(moved), "--method", "average",
                                       "--metrics", metrics, "--register", "affine",
                                       "--json", str(tmp_path / "fixed.json"))
    assert code == 0, output
    assert not [r for r in caplog.records if "misaligned" in r.getMessage()]
    before, after = plain["per_pair"]["07"], fixed["per_pair"]["07"]
    for name in metrics.split(","):
        assert after[name] > before[name] * 1.02, (name, before[name], after[name])


def test_fuse_warns_and_registers(tmp_path, shared_data, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(registry.build("densefuse", {}).checkpoint(1), ckpt)
    sets = {"orig": make_set(tmp_path / "orig", shared_data, None),
            "moved": make_set(tmp_path / "moved", shared_data,
                              known((256, 256), 3.5, -2.25, 1.5))}
    fused = {}
    for label, args in [("orig", ("orig",)), ("moved", ("moved",)),
                        ("fixed", ("moved", "--register", "rigid"))]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            res = CliRunner().invoke(main, ["fuse", str(ckpt), "--data", str(sets[args[0]]),
                                            "--out", label, "--device", "cpu", "--quiet",
                                            *args[1:]])
        assert res.exit_code == 0, res.output
        warned = [r for r in caplog.records if "misaligned" in r.getMessage()]
        assert len(warned) == (1 if label == "moved" else 0), label
        fused[label] = cv2.imread(str(tmp_path / label / "07.png"), cv2.IMREAD_GRAYSCALE)
    inner = (slice(26, -26), slice(26, -26))
    off = np.abs(fused["moved"].astype(float) - fused["orig"])[inner].mean()
    back = np.abs(fused["fixed"].astype(float) - fused["orig"])[inner].mean()
    assert back < off / 3, (off, back)


@pytest.mark.parametrize("command", ["eval", "fuse"])
@pytest.mark.parametrize(("option", "value", "says"), [
    ("--register", "foo", "'foo' is not one of 'rigid', 'affine', 'homography'"),
    ("--misalign-threshold", "-1", "-1.0 is not in the range x>=0"),
])
def test_bad_values_give_one_clear_error(command, option, value, says):
    args = ["eval", "--data", "nowhere", "--method", "average"] if command == "eval" else \
        ["fuse", "nothing.pt", "--data", "nowhere", "--out", "x"]
    res = CliRunner().invoke(main, [*args, option, value])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0] and says in errors[0], res.output


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown registration model 'foo'"):
        make_settings(["EN"], "cdd", "average", "gray", "cpu", register="foo")
    with pytest.raises(ValueError, match="must be >= 0"):
        make_settings(["EN"], "cdd", "average", "gray", "cpu", misalign_threshold=-1.0)


@pytest.mark.ray
def test_ray_data_carries_the_guard_to_the_driver(ray_local, shared_data, tmp_path):
    """Ray workers do not log to the driver: the estimate travels in PairResult.alignment and
    equals the in-process one; with --register the metrics match in-process too."""
    from fusion_models.data import open_pair_set
    from orchestrator.evaluation.local import evaluate_local, plan_items
    from orchestrator.evaluation.ray_data import evaluate_ray

    moved = make_set(tmp_path / "moved", shared_data, known((256, 256), 3.5, -2.25, 1.5))
    items = plan_items(open_pair_set(moved), None)
    for model in (None, "rigid"):
        settings = make_settings(["Qabf", "SSIM"], "cdd", "average", "gray", "cpu",
                                 register=model, misalign_threshold=1.0)
        local, remote = (run(items, settings).results[0]
                         for run in (evaluate_local, evaluate_ray))
        assert remote.alignment == pytest.approx(local.alignment, nan_ok=True)
        assert local.alignment["misalignment_px"] > 5
        assert remote.metrics == pytest.approx(local.metrics, rel=1e-9)
