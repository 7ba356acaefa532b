"""Disk faults (issue 14, part 1): a full disk while a checkpoint or a patch store is written,
and a checkpoint, patch store or registered model version changed on disk afterwards.

A full disk is injected at the file-write level (every file opened for writing shares N bytes
of free space, then raises ENOSPC part-way, as in test_atomic_writes.py) and, where the kernel
lets an unprivileged mount namespace mount one (``unshare -rm``), is a real tmpfs of a few
pages under a real ``orchestrator train``. Every write must end in one error naming the file,
leave the previous file (or nothing) under its name, and let the next run recover."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _full_disk import FullDisk
from _tiny_model import TinyFuse

from fusion_models import registry
from fusion_models.data import generated_set, store_files
from fusion_models.data import patches as patches_mod
from fusion_models.data.patches import PatchSpec, PatchStore
from fusion_models.data.store_files import DiskFullError
from orchestrator.common.config import load_spec
from orchestrator.common.model_refs import resolve_checkpoint
from orchestrator.deploy.import_weights import save_checkpoint
from orchestrator.training.loop import _save, load_init, run_training

TESTS = Path(__file__).resolve().parent
ORCHESTRATOR = Path(sys.executable).with_name("orchestrator")
PAGE = 4096
SPEC = """model: tiny
data: {{train: "{train}", val: "{val}", val_pairs: 2}}
fixed: {{epochs: {epochs}}}
train: {{eval_every: 1, seed: 3, device: cpu, max_steps_per_epoch: 4, val_metrics: [EN, Qabf]}}
"""
RUNNER = ("import sys; sys.path.insert(0, {tests!r}); from _tiny_model import TinyFuse; "
          "from fusion_models import registry; registry.MODELS['tiny'] = TinyFuse; "
          "from orchestrator.cli import main; main(prog_name='orchestrator')")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _sidecar_ok(path: Path) -> bool:
    side = path.with_name(path.name + ".sha256").read_text().split()[0]
    return side == patches_mod.sha256_file(path)


def _flip(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x5A
    path.write_bytes(bytes(data))


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _tiny_registered():
    registry.MODELS["tiny"] = TinyFuse
    yield
    registry.MODELS.pop("tiny", None)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """Generated train/val sets on the normal disk."""
    root = tmp_path_factory.mktemp("sets")
    return {"train": generated_set("ivif", root).root, "val": generated_set("ivif:val", root).root,
            "root": root}


def _spec_file(sets: dict[str, Path], folder: Path, epochs: int) -> Path:
    path = folder / f"tiny{epochs}.yaml"
    path.write_text(SPEC.format(train=sets["train"], val=sets["val"], epochs=epochs))
    return path


@pytest.fixture(scope="module")
def trained(sets, tmp_path_factory) -> Path:
    """One epoch of the tiny model: best.pt, last.pt and their sidecars."""
    out = tmp_path_factory.mktemp("trained")
    run_training(load_spec(_spec_file(sets, out, 1)), None, out / "ck", sets["root"] / "cache")
    return out / "ck"


# --- (a) a full disk while writing ------------------------------------------------------------

@pytest.mark.parametrize("fill", [0.0, 0.4, 0.95])
def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                       fill):
    model = registry.build("tiny", {})
    _save(model, 1, tmp_path / "last.pt", {"step": 4.0})
    before, size = _snapshot(tmp_path), (tmp_path / "last.pt").stat().st_size
    disk = FullDisk(monkeypatch)
    disk.free = int(fill * size)
    with pytest.raises(DiskFullError, match="No space left on device") as err:
        _save(model, 2, tmp_path / "last.pt", {"step": 8.0})
    assert err.value.filename == str(tmp_path / "last.pt") and "disk full" in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI's one-line error
    assert _snapshot(tmp_path) == before, "the previous checkpoint or its sidecar changed"
    disk.free = None  # space freed: the next write goes through
    _save(model, 2, tmp_path / "last.pt", {"step": 8.0})
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    assert _sidecar_ok(tmp_path / "last.pt") and len(list(tmp_path.iterdir())) == 2


def test_training_stopped_by_a_full_disk_resumes_from_the_last_good_checkpoint(
        sets, tmp_path, monkeypatch):
    disk, out = FullDisk(monkeypatch), tmp_path / "ck"
    spec = load_spec(_spec_file(sets, tmp_path, 3))

    def report(metrics: dict, info: dict) -> None:
        if info["epoch"] == 1:
            disk.free = 100  # the disk fills right after epoch 1's checkpoints

    with pytest.raises(DiskFullError, match="disk full") as err:
        run_training(spec, report, out, sets["root"] / "cache")
    assert Path(err.value.filename).parent == out
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256"]
    assert _sidecar_ok(out / "last.pt") and _sidecar_ok(out / "best.pt")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    disk.free = None
    epochs: list[int] = []
    result = run_training(spec, lambda m, i: epochs.append(i["epoch"]), out,
                          sets["root"] / "cache", resume_from=out / "last.pt")
    assert result.status == "finished" and epochs == [2, 3] and _sidecar_ok(out / "last.pt")


@pytest.mark.parametrize("fill", [0.0, 0.3, 0.7, 0.9999])
def test_patch_store_build_on_a_full_disk_leaves_nothing_and_rebuilds(tmp_path, monkeypatch,
                                                                      fill):
    pairs = [(np.random.default_rng(i).integers(0, 256, (64, 80), np.uint8),) * 2
             for i in range(3)]
    spec = PatchSpec(16, 16, 8)
    disk = FullDisk(monkeypatch)
    reference = PatchStore.build_or_load(pairs, spec, tmp_path / "ref", colour_rule="gray")
    total, cache = disk.written, tmp_path / "cache"
    disk.free = int(fill * total)  # 0.9999: inside the manifest, written last
    with pytest.raises(DiskFullError, match="No space left on device") as err:
        PatchStore.build_or_load(pairs, spec, cache, colour_rule="gray")
    assert Path(err.value.filename).parent == cache / reference.path.name
    assert list(cache.iterdir()) == [], "a half-built entry or temporary folder is left"
    disk.free = None
    store = PatchStore.build_or_load(pairs, spec, cache, colour_rule="gray")
    assert store.built and len(store) == len(reference)
    np.testing.assert_array_equal(store.b_inputs, reference.b_inputs)


def test_import_weights_output_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "pmgi" / "ir_vi.pt"
    old = registry.build("pmgi", {"channels": 4}).checkpoint(1)
    save_checkpoint(old, out)
    before = _snapshot(out.parent)
    disk = FullDisk(monkeypatch)
    disk.free = 3000
    with pytest.raises(DiskFullError, match="disk full") as err:
        save_checkpoint(registry.build("pmgi", {"channels": 4}).checkpoint(2), out)
    assert err.value.filename == str(out) and _snapshot(out.parent) == before
    disk.free = None
    assert registry.load_checkpoint(out)[1]["epoch"] == 1


# --- (b) files changed on disk ------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_refused_by_sha256_wherever_it_is_loaded(trained, tmp_path,
                                                                         damage, sets):
    shutil.copytree(trained, tmp_path / "ck")
    last, best = tmp_path / "ck" / "last.pt", tmp_path / "ck" / "best.pt"
    for path in (last, best):
        if damage == "flip":
            _flip(path)
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    match = f"{best}: sha256 mismatch"
    with pytest.raises(ValueError, match=match):
        registry.load_checkpoint(best)  # fuse / eval
    with pytest.raises(ValueError, match=match):
        resolve_checkpoint(str(best), "sqlite:///unused.db")
    with pytest.raises(ValueError, match=match):
        load_init(registry.build("tiny", {}), str(best))  # fixed.init
    with pytest.raises(ValueError, match=f"{last}: sha256 mismatch"):
        run_training(load_spec(_spec_file(sets, tmp_path, 2)), None, tmp_path / "ck",
                     sets["root"] / "cache", resume_from=last)


def test_a_checkpoint_without_a_sidecar_still_loads(trained, tmp_path):
    own = tmp_path / "mine.pt"
    shutil.copy(trained / "best.pt", own)  # a user's own file: no .sha256 beside it
    assert registry.load_checkpoint(own)[1]["model"] == "tiny"
    assert resolve_checkpoint(str(own), "sqlite:///unused.db") == own


def test_fuse_cli_refuses_a_damaged_checkpoint_in_one_line(trained, tmp_path, sets):
    shutil.copytree(trained, tmp_path / "ck")
    _flip(tmp_path / "ck" / "best.pt", 0.9)
    a, b = sorted((sets["train"] / "ir").iterdir())[0], sorted((sets["train"] / "vi").iterdir())[0]
    res = subprocess.run([str(ORCHESTRATOR), "fuse", "ck/best.pt", "--a", str(a), "--b", str(b),
                          "-o", "f.png", "--quiet"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "ck/best.pt: sha256 mismatch" in _one_error_line(res.stderr)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_patch_store_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    pairs = [(np.random.default_rng(i).integers(0, 256, (64, 80), np.uint8),) * 2
             for i in range(3)]
    spec, cache = PatchSpec(16, 16, 8), tmp_path / "cache"
    first = PatchStore.build_or_load(pairs, spec, cache, colour_rule="gray")
    good = np.array(first.a_inputs)
    victim = first.path / {"flip": "a_inputs.npy", "truncate": "b_inputs.npy",
                           "manifest": "manifest.json"}[damage]
    if damage == "flip":
        _flip(victim, 0.5)
    else:
        victim.write_bytes(victim.read_bytes()[:-100])
    del first
    store_files._VERIFIED.clear()  # the next process: nothing verified yet
    with caplog.at_level(logging.WARNING, logger=patches_mod.__name__):
        again = PatchStore.build_or_load(pairs, spec, cache, colour_rule="gray")
    assert again.built, "a damaged store was loaded as it was"
    assert any(str(victim) in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records), caplog.text
    np.testing.assert_array_equal(again.a_inputs, good)
    assert [p.name for p in cache.iterdir()] == [again.path.name]  # the damaged copy is gone
    assert not PatchStore.build_or_load(pairs, spec, cache, colour_rule="gray").built


# --- (a) on a really small filesystem: a tmpfs of a few pages in a user mount namespace -------

def _tmpfs_ok(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=8k tmpfs {tmp}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _on_tmpfs(tmp_path: Path, mnt: Path, kib: int, script: str) -> None:
    """Run ``script`` (sh) with a ``kib`` KiB tmpfs mounted at ``mnt``."""
    mnt.mkdir()
    if not _tmpfs_ok(mnt):
        pytest.skip("no unprivileged mount namespace here: the injected-ENOSPC tests cover this")
    (tmp_path / "runner.py").write_text(RUNNER.format(tests=str(TESTS)))
    subprocess.run(["unshare", "-rm", "sh", "-c",
                    f"mount -t tmpfs -o size={kib}k tmpfs {mnt} && cd {tmp_path} && {script}"],
                   check=True, timeout=300)


def _train_cmd(spec: Path, out: Path, cache: Path, tag: str) -> str:
    return (f"{sys.executable} runner.py train {spec} --out {out} --cache-dir {cache} --quiet "
            f"--tracking-uri sqlite:///mlflow.db 2> {tag}.err; echo $? > {tag}.rc")


def test_train_on_a_really_full_disk_fails_in_one_line_and_resumes(sets, trained, tmp_path):
    """best.pt + last.pt of epoch 1 fit, one page more does not: epoch 2's first checkpoint
    write hits the real ENOSPC of the tmpfs."""
    pages = sum(math.ceil(p.stat().st_size / PAGE) for p in trained.iterdir())
    spec, mnt = _spec_file(sets, tmp_path, 3), tmp_path / "mnt"
    _on_tmpfs(tmp_path, mnt, (pages + 1) * PAGE // 1024,
              _train_cmd(spec, mnt / "ck", sets["root"] / "cache", "full")
              + f"; cp -a {mnt}/ck {tmp_path}/after")
    line = _one_error_line((tmp_path / "full.err").read_text())
    assert (tmp_path / "full.rc").read_text().strip() != "0"
    assert "No space left on device (disk full)" in line and f"{mnt}/ck/" in line, line
    after = tmp_path / "after"
    assert sorted(p.name for p in after.iterdir()) == [
        "best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256"], "a temporary file is left"
    assert _sidecar_ok(after / "best.pt") and _sidecar_ok(after / "last.pt")
    assert torch.load(after / "last.pt", weights_only=True)["epoch"] == 1
    epochs: list[int] = []  # space freed (the folder on the big disk): the next run resumes
    run_training(load_spec(spec), lambda m, i: epochs.append(i["epoch"]), after,
                 sets["root"] / "cache", resume_from=after / "last.pt")
    assert epochs == [2, 3]


@pytest.mark.slow
def test_patch_store_on_a_really_full_disk_fails_in_one_line_then_rebuilds(sets, tmp_path):
    """256 KiB of tmpfs for a 512 KiB a_inputs.npy (numpy's memmap died of SIGBUS here);
    then the tmpfs grows to 4 MiB and the same command builds the store and trains."""
    spec, mnt = _spec_file(sets, tmp_path, 1), tmp_path / "mnt"
    def train_and_list(tag: str) -> str:
        return (_train_cmd(spec, tmp_path / "ck", mnt / "patches", tag)
                + f"; ls -A {mnt}/patches/patches > {tag}.ls")

    _on_tmpfs(tmp_path, mnt, 256, f"{train_and_list('full')}; "
              f"mount -o remount,size=4m {mnt} && {train_and_list('freed')}")
    line = _one_error_line((tmp_path / "full.err").read_text())
    assert (tmp_path / "full.rc").read_text().strip() != "0"
    assert "No space left on device (disk full)" in line and "a_inputs.npy" in line, line
    assert (tmp_path / "full.ls").read_text().split() == [], "a half-built entry is left"
    assert (tmp_path / "freed.rc").read_text().strip() == "0", (tmp_path / "freed.err").read_text()
    assert len((tmp_path / "freed.ls").read_text().split()) == 1  # the entry, no leftovers
    assert _sidecar_ok(tmp_path / "ck" / "last.pt")


# --- (b) a registered model version whose artifact changed after registration --------------

def test_a_registered_version_whose_artifact_changed_is_refused(tmp_path, sets):
    from mlflow.tracking import MlflowClient

    from orchestrator.deploy.promote import promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("fusion/pmgi", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"sweep_name": "s", "model": "pmgi"}).info.run_id
    rid = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    best = tmp_path / "best.pt"
    save_checkpoint(registry.build("pmgi", {"channels": 4}).checkpoint(1), best)
    client.log_metric(rid, "val/Qabf", 0.5)
    client.log_artifact(rid, str(best), "checkpoints")
    client.set_tag(rid, "best_sha256", patches_mod.sha256_file(best))
    client.set_terminated(rid, "FINISHED")
    promote("s", uri)
    assert resolve_checkpoint("models:/fusion-pmgi@champion", uri, tmp_path / "dl").is_file()
    stored = next((tmp_path / "art").rglob("checkpoints/best.pt"))
    _flip(stored)  # the artifact store's copy changes after registration
    with pytest.raises(ValueError, match="sha256 mismatch .*best.pt"):
        resolve_checkpoint("models:/fusion-pmgi/1", uri, tmp_path / "dl2")
    a, b = sorted((sets["train"] / "ir").iterdir())[0], sorted((sets["train"] / "vi").iterdir())[0]
    res = subprocess.run([str(ORCHESTRATOR), "fuse", "models:/fusion-pmgi@champion", "--a",
                          str(a), "--b", str(b), "-o", "f.png", "--quiet", "--tracking-uri", uri],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and not (tmp_path / "f.png").exists()
    line = _one_error_line(res.stderr)
    assert "models:/fusion-pmgi@champion: sha256 mismatch" in line and "best.pt" in line, line
