"""`orchestrator eval` wiring: resolve the data, choose the path (in-process or Ray), report."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import click

from fusion_models.baselines import BASELINES
from fusion_models.data import DataError, PairSet, default_rule, generated_set, open_pair_set
from fusion_models.metrics import Convention, get_convention, resolve_metric_names
from orchestrator.common import GENERATED, atomic_write, cache_dir
from orchestrator.evaluation.align import alignment_cache
from orchestrator.evaluation.local import (
    EvalItem,
    EvalReport,
    EvalSettings,
    evaluate_local,
    make_settings,
    plan_items,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalArgs:
    """The parsed command line of ``orchestrator eval``."""

    data: str | None
    a_dir: str | None
    b_dir: str | None
    fused_dir: str | None
    method: str | None
    metrics: str
    convention: str
    options: tuple[str, ...]
    task: str | None
    colour_rule: str
    out_dir: str | None
    json_out: str | None
    csv_out: str | None
    device: str
    use_ray: bool
    address: str | None
    ray_threshold: int
    quiet: bool
    model: str | None = None
    tracking_uri: str | None = None
    references: tuple[str, ...] = ()
    register: str | None = None  # rigid|affine|homography: warp B onto A before fusing/scoring
    misalign_threshold: float = math.inf  # warn when B is off A by more (the CLI default: 1 px)


def resolve_pair_set(data: str | None, a_dir: str | None, b_dir: str | None,
                     task: str | None) -> PairSet:
    """A set folder, explicit --a/--b folders, or ``generated:ivif`` / ``generated:mff``."""
    if data and data.startswith(GENERATED):
        return generated_set(data[len(GENERATED):], cache_dir() / "generated")
    if data is None and not (a_dir and b_dir):
        raise click.UsageError("give --data SET_DIR, or both --a DIR and --b DIR")
    return open_pair_set(data, a_dir=a_dir, b_dir=b_dir, task=task)


def parse_options(options: tuple[str, ...]) -> dict[str, object]:
    """``KEY=VALUE`` items (``--option``/``--set`` of a metric convention) as a dict, values
    parsed as numbers or booleans where they read as such."""
    parsed: dict[str, object] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise click.BadParameter(f"{opt!r}: expected KEY=VALUE", param_hint="--option")
        parsed[key.strip()] = _coerce(value.strip())
    return parsed


def _coerce(value: str) -> object:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _methods(method: str | None) -> list[str | None]:
    if method is None:
        return [None]
    names = list(BASELINES) if method == "all" else [m.strip() for m in method.split(",")]
    unknown = [m for m in names if m not in BASELINES]
    if unknown:
        raise click.BadParameter(f"unknown baseline(s) {unknown}; valid: {sorted(BASELINES)} "
                                 "or all", param_hint="--method")
    return names


def _evaluate(items: list[EvalItem], settings: EvalSettings, args: EvalArgs) -> EvalReport:
    from orchestrator.evaluation.console import progress_bar

    if args.use_ray or args.address or len(items) >= args.ray_threshold:
        from orchestrator.evaluation.ray_data import evaluate_ray

        return evaluate_ray(items, settings, address=args.address)
    with progress_bar(f"eval {settings.method or 'fused'}", 2 * len(items),
                      enabled=not args.quiet) as advance:
        return evaluate_local(items, settings, advance)


def run_eval(args: EvalArgs) -> dict[str, EvalReport]:
    """Run ``orchestrator eval``; returns the report of each row: ``model``, each reference
    (labelled by its ref, e.g. ``pretrained:pmgi/ir_vi``), each baseline, or ``fused``."""
    fusing = args.method is not None or args.model is not None or bool(args.references)
    if (args.fused_dir is not None) == fusing:
        raise click.UsageError("give --fused DIR, or any of --method NAME, --model REF and "
                               "--reference REF")
    try:
        return _run(args)
    except (DataError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(str(message)) from exc


def _checkpoint_rows(args: EvalArgs) -> list[tuple[str, str]]:
    """(label, checkpoint ref) of ``--model`` and every ``--reference``, in that order."""
    rows = [("model", args.model)] if args.model else []
    rows += [(ref, ref) for ref in args.references]
    labels = [label for label, _ in rows]
    if len(set(labels)) != len(labels):
        raise click.BadParameter(f"a checkpoint is given twice: {labels}",
                                 param_hint="--reference")
    return rows


def _out(args: EvalArgs, label: str, alone: bool) -> str | None:
    """Where a row's fused PNGs go: ``--out`` itself for a lone ``--model``, else a sub-folder
    named after the row (``pretrained:pmgi/ir_vi`` -> ``pretrained-pmgi-ir_vi``)."""
    if not args.out_dir:
        return None
    if alone and label == "model":
        return args.out_dir
    return str(Path(args.out_dir) / label.replace(":", "-").replace("/", "-"))


def _run(args: EvalArgs) -> dict[str, EvalReport]:
    conv = get_convention(args.convention)
    if args.options:
        conv = conv.with_options(**parse_options(args.options))
    metric_names = resolve_metric_names(args.metrics)
    pair_set = resolve_pair_set(args.data, args.a_dir, args.b_dir, args.task)
    items = plan_items(pair_set, args.fused_dir)
    task = args.task or pair_set.task
    rule = default_rule(task) if args.colour_rule == "auto" else args.colour_rule
    with alignment_cache(cache_dir() / "alignment"):  # once per pair, kept by file content
        reports = _rows(args, items, metric_names, conv, rule)
    _warn_misaligned(reports, args)
    _emit(reports, pair_set, args)
    return reports


def _rows(args: EvalArgs, items: list[EvalItem], metric_names: list[str], conv: Convention,
          rule: str) -> dict[str, EvalReport]:
    """Evaluate every row: --model, each --reference, then each --method (or the fused set)."""
    reports: dict[str, EvalReport] = {}
    rows = _checkpoint_rows(args)
    if rows:
        from orchestrator.common import resolve_checkpoint, resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        local = {label: resolve_checkpoint(ref, uri) for label, ref in rows}  # all, first
        alone = len(rows) == 1 and args.method is None
        for label, _ in rows:
            settings = make_settings(metric_names, conv, None, rule, args.device,
                                     _out(args, label, alone), model=str(local[label]),
                                     **_guard(args))
            reports[label] = _evaluate(items, settings, args)
    if args.method is not None or not rows:
        for method in _methods(args.method):
            out = str(Path(args.out_dir) / method) if args.out_dir and method else None
            settings = make_settings(metric_names, conv, method, rule, args.device, out,
                                     **_guard(args))
            reports[method or "fused"] = _evaluate(items, settings, args)
    return reports


def _guard(args: EvalArgs) -> dict[str, object]:
    return {"register": args.register, "misalign_threshold": args.misalign_threshold}


def _warn_misaligned(reports: dict[str, EvalReport], args: EvalArgs) -> None:
    """Log the misregistration guard's findings once per pair (every row measures the same
    sources; the first row that has a pair's estimate speaks for it)."""
    from orchestrator.deploy import log_alignment

    seen: set[str] = set()
    for report in reports.values():
        for r in report.results:
            if r.alignment is not None and r.name not in seen:
                seen.add(r.name)
                log_alignment(r.name, r.alignment, args.misalign_threshold, args.register)


def _emit(reports: dict[str, EvalReport], pair_set: PairSet, args: EvalArgs) -> None:
    from orchestrator.evaluation.console import comparison_table, console

    if args.json_out:
        payload = (next(iter(reports.values())).to_dict() if len(reports) == 1 else
                   {"convention": args.convention,
                    "methods": {k: r.to_dict() for k, r in reports.items()}})
        atomic_write(args.json_out, json.dumps(payload, indent=1))
    if args.csv_out:
        for label, rep in reports.items():
            path = Path(args.csv_out)
            rep.write_csv(path if len(reports) == 1 else path.with_stem(f"{path.stem}_{label}"))
    if not args.quiet:
        title = f"{pair_set.root} — {len(pair_set.pairs)} pairs, convention {args.convention}"
        console.print(comparison_table(reports, title))
