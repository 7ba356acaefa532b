"""Fuzz pass over model references a user hands ``fuse`` and ``eval --model``.

Files that are not checkpoints (random bytes, empty, a folder, pickles of other objects, dicts
missing keys or naming an unknown model, parameters the model's Config refuses, weights of the
wrong shape) and references that do not resolve (``models:/`` and ``runs:/`` absent from the
store, ``pretrained:`` names never imported): each is one clear error naming the reference,
exit status != 0, and no output written.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion_models.registry import build, load_checkpoint
from orchestrator.cli import main


def _checkpoint(**changes) -> dict:
    model = build("pmgi", {"channels": 8})
    ckpt = {"model": "pmgi", "params": {"channels": 8}, "state_dict": model.state_dict(),
            "epoch": 1}
    ckpt.update(changes)
    return ckpt


def _bad_files(root: Path) -> dict[str, Path]:
    good = _checkpoint()
    wrong_shape = {k: torch.zeros(3) for k in good["state_dict"]}
    torch_payloads = {
        "a-list.pt": [1, 2, 3],
        "a-tensor.pt": torch.zeros(3),
        "no-state-dict.pt": {k: v for k, v in good.items() if k != "state_dict"},
        "unknown-model.pt": _checkpoint(model="fusiongann"),
        "bad-params.pt": _checkpoint(params={"channels": "many"}),
        "unknown-param.pt": _checkpoint(params={"chanels": 8}),
        "wrong-shapes.pt": _checkpoint(state_dict=wrong_shape),
        "params-not-a-dict.pt": _checkpoint(params=[8]),
    }
    files = {}
    for name, payload in torch_payloads.items():
        torch.save(payload, root / name)
        files[name] = root / name
    files["random.pt"] = root / "random.pt"
    files["random.pt"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["empty.pt"] = root / "empty.pt"
    files["empty.pt"].write_bytes(b"")
    files["pickle.pt"] = root / "pickle.pt"
    files["pickle.pt"].write_bytes(pickle.dumps({"model": "pmgi", "obj": Path("x")}))
    files["folder.pt"] = root / "folder.pt"
    files["folder.pt"].mkdir()
    return files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    return _bad_files(tmp_path_factory.mktemp("refs"))


def test_load_checkpoint_refuses_every_non_checkpoint_by_name(bad_files):
    for name, path in bad_files.items():
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value), (name, info.value)


def _pair(root: Path) -> Path:
    grey = np.random.default_rng(3).integers(0, 256, (32, 40), dtype=np.uint8)
    for role in ("ir", "vi"):
        (root / role).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / role / "a.png"), grey)
    return root


REFS = ["models:/fusion-pmgi@nosuch", "models:/fusion-pmgi/7", "models:/oops",
        "runs:/0123456789abcdef0123456789abcdef", "pretrained:nosuch/task", "no/such/file.pt"]


@pytest.mark.parametrize("command", ["fuse", "eval"])
def test_every_bad_reference_is_one_error_and_writes_nothing(tmp_path, bad_files, command,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_PRETRAINED_DIR", str(tmp_path / "pretrained"))
    data = _pair(tmp_path / "set")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refs = [*REFS, *(str(p) for p in bad_files.values())]
    for ref in refs:
        out = tmp_path / "out"
        args = (["fuse", ref, "--data", str(data), "--out", str(out), "--quiet"]
                if command == "fuse" else
                ["eval", "--quiet", "--model", ref, "--data", str(data), "--json",
                 str(out / "r.json")])
        result = CliRunner().invoke(main, [*args, "--tracking-uri", uri])
        assert result.exit_code != 0, (ref, result.output)
        assert "Traceback" not in result.output, (ref, result.output)
        assert ref in result.output or Path(ref).name in result.output, (ref, result.output)
        assert not out.exists(), ref
