"""`orchestrator fuse` wiring: load a checkpoint, resolve the data and colour rule, fuse."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click

from fusion_models.data import DataError, open_pair_set
from fusion_models.data.colour import default_rule
from fusion_models.inference import retain_freed_memory
from fusion_models.registry import load_checkpoint
from orchestrator.deploy.fuse import DEFAULT_INFERENCE, fuse_files, fuse_set
from orchestrator.training import resolve_device


def run_fuse(checkpoint: str, data: str | None, out_dir: str | None, file_a: str | None,
             file_b: str | None, out_file: str | None, task: str | None, colour_rule: str,
             device: str, batch_size: int, quiet: bool,
             tracking_uri: str | None = None, register: str | None = None,
             misalign_threshold: float = math.inf, compile: bool = False,
             precision: str = "fp32") -> list[Path]:
    """Fuse a set folder (``--data`` + ``--out``) or one pair of files (``--a --b -o``).

    ``checkpoint`` is a file or a ``models:/`` / ``runs:/`` reference, fetched and verified by
    :func:`orchestrator.common.resolve_checkpoint`. Each pair's B is warped onto A first
    with ``register`` (rigid|affine|homography), else measured and a warning logged when it is off
    by more than ``misalign_threshold`` px (inf: not measured). The model runs prepared for
    inference (:mod:`fusion_models.inference`: BN folded, channels_last), compiled by
    ``torch.compile`` with ``compile``, under bf16 autocast with ``precision="bf16"``; on CPU
    this process's heap keeps freed memory (:func:`~fusion_models.inference.retain_freed_memory`).
    """
    from orchestrator.common import resolve_checkpoint, resolve_tracking_uri
    from orchestrator.evaluation import progress_bar

    if bool(data) == bool(file_a or file_b):
        raise click.UsageError("give --data SET_DIR --out DIR, or --a FILE --b FILE -o FILE")
    path = resolve_checkpoint(checkpoint, resolve_tracking_uri(tracking_uri))
    model, _ = load_checkpoint(path, map_location=resolve_device(device))
    if model.device.type == "cpu":
        retain_freed_memory()  # no page faults on every forward's large activations
    inference = dataclasses.replace(DEFAULT_INFERENCE, compile=compile, precision=precision)
    try:
        if file_a or file_b:
            if not (file_a and file_b and out_file):
                raise click.UsageError("--a, --b and -o go together")
            rule = default_rule(task) if colour_rule == "auto" else colour_rule
            return [fuse_files(model, file_a, file_b, out_file, rule, register,
                               misalign_threshold, inference)]
        if not out_dir:
            raise click.UsageError("--data needs --out DIR")
        pair_set = open_pair_set(data, task=task)
        rule = default_rule(task or pair_set.task) if colour_rule == "auto" else colour_rule
        with progress_bar(f"fuse {model.name}", len(pair_set.pairs), not quiet) as advance:
            return fuse_set(model, pair_set, out_dir, rule, batch_size, advance, register,
                            misalign_threshold, inference)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
