"""The `orchestrator` command line (click). Each command parses, then calls one function."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from fusion_models.metrics import REPORT_METRICS
from orchestrator.evaluation import EvalArgs, pan_eval_command, run_eval


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Train, search, measure and ship image fusion models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


REGISTER_OPTION = click.option(
    "--register", type=click.Choice(["rigid", "affine", "homography"]), default=None,
    help="Warp source B onto A (ECC on luma at full size, every channel warped) before "
    "fusing and measuring.")
MISALIGN_OPTION = click.option(
    "--misalign-threshold", type=click.FloatRange(min=0), default=1.0, show_default=True,
    metavar="PX", help="Warn about each pair whose B is off A by more than PX pixels (largest "
    "image-corner displacement of a rigid estimate on a 256 px copy, when mutual information "
    "confirms it; ~20 ms a pair); inf skips the check.")


@main.command("eval")
@click.option("--data", "data", help="Set folder (two source sub-folders) or generated:ivif|mff.")
@click.option("--a", "a_dir", type=click.Path(), help="Explicit folder of source A.")
@click.option("--b", "b_dir", type=click.Path(), help="Explicit folder of source B.")
@click.option("--fused", "fused_dir", type=click.Path(), help="Folder of fused images (by stem).")
@click.option("--method", help="Fuse with a baseline first: average|max_abs|laplacian|gff|all.")
@click.option("--model", help="Fuse with a trained model first: a checkpoint path, "
              "models:/fusion-<model>@<alias>, models:/NAME/VERSION, runs:/RUN_ID or "
              "pretrained:NAME.")
@click.option("--reference", "references", multiple=True, metavar="REF",
              help="Also measure this checkpoint as a reference row (repeatable), e.g. the "
              "authors' released model pretrained:pmgi/ir_vi; goes with --method/--model.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow store for --model URIs (default sqlite:///mlflow.db here).")
@click.option("--metrics", default="all", show_default=True, help="Comma-separated names.")
@click.option("--convention", default="cdd", show_default=True, help="cdd|vifb|tang|mpy.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override one metric convention option (e.g. mi_base=2).")
@click.option("--task", type=click.Choice(["ivif", "medical", "mff", "mef"]), default=None,
              help="Task (colour rule); guessed from the folder roles when omitted.")
@click.option("--colour", "colour_rule", default="auto", show_default=True,
              help="auto|gray|keep_b_chroma|ycbcr_weighted|ihs (for --method).")
@click.option("--out", "out_dir", type=click.Path(),
              help="Write the fused PNGs of --method/--model here.")
@click.option("--json", "json_out", type=click.Path(), help="Write the JSON report here.")
@click.option("--csv", "csv_out", type=click.Path(), help="Write the per-pair CSV here.")
@click.option("--device", default="cpu", show_default=True, help="auto|cpu|cuda.")
@click.option("--ray", "use_ray", is_flag=True, help="Evaluate with Ray Data.")
@click.option("--address", help="Ray cluster address (auto | ray://host:10001); implies --ray.")
@click.option("--ray-threshold", default=500, show_default=True,
              help="Use Ray Data automatically from this many pairs on.")
@click.option("--quiet", is_flag=True, help="No progress bar or table.")
@REGISTER_OPTION
@MISALIGN_OPTION
def eval_command(**kwargs: object) -> None:
    """Measure fused images (--fused), a baseline (--method) or a model (--model) on a set."""
    run_eval(EvalArgs(**kwargs))


@main.command("train")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec entry: lr_g=2e-4, data.train=DIR, train.eval_every=2.")
@click.option("--smoke", is_flag=True, help="2 short epochs, batch 4, 2 validation pairs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", "out_dir", type=click.Path(), help="Checkpoint folder (default runs/...).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default sqlite:///mlflow.db here).")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Generated data and patch stores (default FUSION_CACHE_DIR or ~/.cache).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(spec: str, overrides: tuple[str, ...], smoke: bool, device: str | None,
                  out_dir: str | None, tracking_uri: str | None, cache_dir: str | None,
                  quiet: bool) -> None:
    """Train ONE configuration of a model (a search_spaces/<model>.yaml + --set overrides)."""
    from orchestrator.common import cache_dir as default_cache
    from orchestrator.training import train

    try:
        result = train(spec, overrides, smoke, device, out_dir, tracking_uri,
                       cache_dir or str(default_cache()), quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"status: {result.status}  epochs: {result.epochs_run}  "
               f"best: {result.best_value}  mlflow run: {result.run_id}")
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    click.echo(f"last checkpoint: {result.last_checkpoint}")
    if result.status == "diverged":
        raise click.ClickException(result.reason)


@main.command("sweep")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--num-samples", type=int, default=None, help="Trials (default: tune.num_samples).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec entry: tune.num_samples=4, data.train=DIR, lr_g=2e-4.")
@click.option("--address", default=None, help="Ray cluster: auto | ray://host:10001 "
              "(default: a local Ray on this machine).")
@click.option("--smoke", is_flag=True, help="2 trials of 1 short epoch: the same path, fast.")
@click.option("--resume", is_flag=True, help="Resume the newest sweep of this model (or --name).")
@click.option("--name", default=None, help="Sweep name (default <model>-<date-time>).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default sqlite:///mlflow.db here).")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Generated data and patch stores (default FUSION_CACHE_DIR or ~/.cache).")
@click.option("--quiet", is_flag=True, help="No live trial table.")
@click.option("--reseed-best", type=int, default=None, metavar="N",
              help="Instead of searching: train the N best configurations of a finished sweep "
              "(--name, default the newest of this model) again with --seeds new seeds each.")
@click.option("--seeds", type=int, default=3, show_default=True, metavar="K",
              help="Seeds per configuration for --reseed-best.")
@click.option("--with-default", is_flag=True,
              help="With --reseed-best: also train the paper-default settings with the same "
              "seeds (the control `orchestrator compare` sets the promoted model against).")
def sweep_command(spec: str, num_samples: int | None, overrides: tuple[str, ...],
                  address: str | None, smoke: bool, resume: bool, name: str | None,
                  tracking_uri: str | None, cache_dir: str | None, quiet: bool,
                  reseed_best: int | None, seeds: int, with_default: bool) -> None:
    """Search a model's hyperparameters (Ray Tune + Optuna + ASHA), every trial in MLflow."""
    from orchestrator.common import cache_dir as default_cache
    from orchestrator.search import SweepError, run_reseed_command, run_sweep_command
    from orchestrator.search.spool import RecordsUndelivered, SweepBusy

    cache = cache_dir or str(default_cache())
    try:
        if reseed_best is not None:
            if overrides or smoke or resume or num_samples is not None:
                raise ValueError("--reseed-best re-runs the sweep's own logged settings: "
                                 "drop --set/--smoke/--resume/--num-samples")
            run_reseed_command(spec, name, reseed_best, seeds, tracking_uri, cache, address,
                               quiet, with_default)
            return
        if with_default:
            raise ValueError("--with-default goes with --reseed-best")
        run_sweep_command(spec, overrides, smoke, num_samples, address, resume, name,
                          tracking_uri, cache, quiet)
    except (ValueError, SweepError, RecordsUndelivered, SweepBusy) as exc:
        err = click.ClickException(str(exc))
        err.exit_code = getattr(exc, "exit_code", 1)  # 130 after SIGINT (a resumable sweep)
        raise err from exc


@main.command("report")
@click.argument("sweep")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html, sensitivity.json, metrics.csv and fused images.")
@click.option("--top", default=3, show_default=True, help="Top trials compared.")
@click.option("--data", default=None, help="Test set (default: tune.test_data[0], else the "
              "validation set).")
@click.option("--pairs", default=8, show_default=True, help="Test pairs measured (the first N).")
@click.option("--grid-pairs", default=3, show_default=True, help="Test pairs shown as images.")
@click.option("--metrics", default=",".join(REPORT_METRICS), show_default=True,
              help="Comma-separated metric names (the objectives are added).")
@click.option("--ui-url", default="http://127.0.0.1:5000", show_default=True,
              help="Where `orchestrator ui` serves: the page links each trial to its run there.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default sqlite:///mlflow.db here).")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Generated data (default FUSION_CACHE_DIR or ~/.cache).")
@click.option("--reference", "references", multiple=True, metavar="REF",
              help="Also compare this checkpoint (repeatable; adds to the YAML's "
              "tune.references), e.g. the authors' model pretrained:pmgi/ir_vi.")
def report_command(sweep: str, out_dir: str, top: int, data: str | None, pairs: int,
                   grid_pairs: int, metrics: str, ui_url: str, tracking_uri: str | None,
                   cache_dir: str | None, references: tuple[str, ...]) -> None:
    """Write an HTML report of a finished sweep (SWEEP: name or parent run id)."""
    import os

    from fusion_models.metrics import resolve_metric_names
    from orchestrator.common import cache_dir as default_cache
    from orchestrator.common import resolve_tracking_uri
    from orchestrator.reporting import ReportArgs, write_report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per artifact
    try:
        args = ReportArgs(sweep, out_dir, resolve_tracking_uri(tracking_uri), top, data, pairs,
                          grid_pairs, tuple(resolve_metric_names(metrics)), ui_url,
                          cache_dir or str(default_cache()), references)
        page = write_report(args)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    click.echo(f"report: {page}")
    click.echo(f"logged on the sweep's parent run as report/index.html; browse with "
               f"`orchestrator ui` ({ui_url})")


@main.command("compare")
@click.argument("sweep")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for comparison.md/.csv/.json (and the checkpoints measured).")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="The model to judge (default: the newest version promoted from SWEEP).")
@click.option("--address", default=None, help="Ray cluster: auto | ray://host:10001.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default sqlite:///mlflow.db here).")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Generated data (default FUSION_CACHE_DIR or ~/.cache).")
def compare_command(sweep: str, out_dir: str, model_ref: str | None, address: str | None,
                    tracking_uri: str | None, cache_dir: str | None) -> None:
    """The promoted model vs the paper defaults (mean ± std over seeds), the references and
    the baselines on SWEEP's test pairs (after `sweep --reseed-best N --with-default` and
    `promote`)."""
    from orchestrator.common import cache_dir as default_cache
    from orchestrator.common import resolve_tracking_uri
    from orchestrator.reporting import COMPARE_METRICS, run_compare

    try:
        result = run_compare(sweep, resolve_tracking_uri(tracking_uri), out_dir,
                             cache_dir or str(default_cache()), model_ref, address)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for t in result.tables:
        v = t["verdict"]
        click.echo(f"{t['set']} ({t['convention']}): promoted beats the paper default and "
                   f"every baseline on {len(v['won'])}/{len(COMPARE_METRICS)} metrics "
                   f"({', '.join(v['won']) or 'none'}); "
                   f"goal {'met' if v['goal_met'] else 'not met'}")
    click.echo(f"tables: {Path(out_dir) / 'comparison.md'} (logged on the sweep's parent run "
               "as comparison/)")


@main.command("promote")
@click.argument("sweep")
@click.option("--metric", default="val/Qabf", show_default=True, help="Metric to rank by.")
@click.option("--mode", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--alias", default="champion", show_default=True, help="Alias to point at it.")
@click.option("--run-id", default=None, help="Promote this child run instead of the best.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default sqlite:///mlflow.db here).")
def promote_command(sweep: str, metric: str, mode: str, alias: str, run_id: str | None,
                    tracking_uri: str | None) -> None:
    """Register a sweep's best trial checkpoint (SWEEP: name or parent run id) as a model."""
    from orchestrator.common import resolve_tracking_uri
    from orchestrator.deploy import promote

    try:
        res = promote(sweep, resolve_tracking_uri(tracking_uri), metric, mode, alias, run_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registered model: {res.model_name}  version: {res.version}  "
               f"alias: @{res.alias}")
    click.echo(f"from run {res.run_id} of sweep {res.sweep}: {res.metric} = {res.value:.6g}  "
               f"sha256: {res.sha256}")
    click.echo(f"next: orchestrator fuse models:/{res.model_name}@{res.alias} "
               "--data SET --out DIR")


@main.command("fuse")
@click.argument("checkpoint")
@click.option("--data", help="Set folder (two source sub-folders) to fuse.")
@click.option("--out", "out_dir", type=click.Path(), help="Folder for the fused PNGs (--data).")
@click.option("--a", "file_a", type=click.Path(exists=True, dir_okay=False), help="Source A.")
@click.option("--b", "file_b", type=click.Path(exists=True, dir_okay=False), help="Source B.")
@click.option("-o", "out_file", type=click.Path(), help="Output file (--a/--b).")
@click.option("--task", type=click.Choice(["ivif", "medical", "mff", "mef"]), default=None)
@click.option("--colour", "colour_rule", default="auto", show_default=True,
              help="auto|gray|keep_b_chroma|ycbcr_weighted|ihs.")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda.")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model (slow first batch per image size).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="bf16: autocast (CPU AMX / GPU), within a few grey levels.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI for models:/ and runs:/ (default sqlite:///mlflow.db).")
@click.option("--quiet", is_flag=True)
@REGISTER_OPTION
@MISALIGN_OPTION
def fuse_command(checkpoint: str, data: str | None, out_dir: str | None, file_a: str | None,
                 file_b: str | None, out_file: str | None, task: str | None, colour_rule: str,
                 device: str, batch_size: int, compile_model: bool, precision: str,
                 tracking_uri: str | None, quiet: bool, register: str | None,
                 misalign_threshold: float) -> None:
    """Fuse whole images with a checkpoint; PNGs named like the sources.

    CHECKPOINT: a checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION or
    runs:/RUN_ID[/PATH] (downloaded to ./.fusion_models and checked by sha256).
    """
    from orchestrator.deploy import run_fuse

    try:
        written = run_fuse(checkpoint, data, out_dir, file_a, file_b, out_file, task,
                           colour_rule, device, batch_size, quiet, tracking_uri, register,
                           misalign_threshold, compile_model, precision)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {len(written)} fused image(s) to {Path(written[0]).parent}")


@main.command("import-weights")
@click.argument("src", type=click.Path(exists=True))
@click.option("--all", "import_everything", is_flag=True,
              help="SRC is a release folder (../shared/weights layout): import every known "
              "bundle in it into the pretrained folder.")
@click.option("--release", help="Catalogue name of the bundle SRC (e.g. pmgi/ir_vi).")
@click.option("--model", help="Model of a bundle not in the catalogue: mffgan|pmgi.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config field for --model (e.g. task=ivif).")
@click.option("--out", "out", type=click.Path(),
              help="Checkpoint file (default for --release/--all: the pretrained folder).")
def import_weights_command(src: str, import_everything: bool, release: str | None,
                           model: str | None, overrides: tuple[str, ...], out: str | None
                           ) -> None:
    """Import the authors' TF1 checkpoint(s) SRC (tensor bundle: .index + .data-*).

    The result is one of our checkpoints (torch.load(weights_only=True)), usable as
    pretrained:NAME in fuse, eval, train and sweep (fixed: {init: pretrained:NAME}).
    """
    from fusion_models.pretrained.tf_bundle import TFBundleError
    from orchestrator.deploy import import_all, import_one
    from orchestrator.evaluation import parse_options

    try:
        if import_everything:
            if release or model or overrides:
                raise ValueError("--all imports the catalogue's bundles as they are; "
                                 "drop --release/--model/--set")
            done = import_all(src, out)
        else:
            done = [import_one(src, release, model, parse_options(overrides), out)]
    except (TFBundleError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(str(message)) from exc
    for item in done:
        click.echo(f"{item.name}: {item.path}  ({item.variables} variables, "
                   f"{item.seconds:.2f} s)  sha256 {item.sha256}")


@main.command("split")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for train/, val/, test/ (symlink set folders) and split.json.")
def split_command(definition: str, out: str) -> None:
    """Named train/val/test splits of real sets (DEFINITION: a split YAML)."""
    from fusion_models.data import DataError
    from orchestrator.training import write_split

    try:
        counts = write_split(definition, out)
    except (ValueError, DataError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{out}: " + ", ".join(f"{role} {n} pairs" for role, n in counts.items()))


@main.command("ui")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="Store to browse (default sqlite:///mlflow.db here).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address (127.0.0.1: this machine only; use an SSH tunnel to reach it).")
@click.option("--port", default=5000, show_default=True)
def ui_command(tracking_uri: str | None, host: str, port: int) -> None:
    """Start the MLflow UI on the project's tracking store; print a link to the runs table
    of each experiment and to each sweep's parent run (newest sweeps first)."""
    import os
    import sys

    from orchestrator.common import DEFAULT_ARTIFACTS, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    base = f"http://{host}:{port}"
    click.echo(f"MLflow UI on {uri}: {base}  (Ctrl-C stops it)", err=True)
    for line in _ui_links(uri, base):
        click.echo(line, err=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", str(Path(DEFAULT_ARTIFACTS).resolve()),
           "--host", host, "--port", str(port), "--workers", "1"]
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # this process becomes the server: signals reach it


def _ui_links(uri: str, base: str) -> list[str]:
    """The lines `orchestrator ui` prints: the runs table of every experiment with a sweep,
    then each sweep's parent run page (it lists the trials as child runs)."""
    from orchestrator.common import runs_url, sweep_runs

    try:
        sweeps = sweep_runs(uri)
    except Exception as exc:  # noqa: BLE001 - listing sweeps must never keep the UI down
        logging.getLogger(__name__).warning("could not list the sweeps in %s: %s", uri, exc)
        return []
    lines = [f"runs of {exp}: {runs_url(base, exp_id)}"
             for exp_id, exp in dict.fromkeys((s.experiment_id, s.experiment)
                                              for s in sweeps)]
    for s in sweeps:
        note = "; report: Artifacts > report/index.html" if s.report else ""
        lines.append(f"  sweep {s.name}: {runs_url(base, s.experiment_id, s.run_id)}"
                     f"  (parent run: its trials under Child runs{note})")
    return lines


main.add_command(pan_eval_command)  # orchestrator/evaluation/pansharpen.py


if __name__ == "__main__":
    main()
