"""The `orchestrator` command line (click). Each command parses, then calls one function."""

from __future__ import annotations

import logging

import click

from orchestrator import eval_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Train, search, measure and ship image fusion models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command("eval")
@click.option("--data", "data", help="Set folder (two source sub-folders) or generated:ivif|mff.")
@click.option("--a", "a_dir", type=click.Path(), help="Explicit folder of source A.")
@click.option("--b", "b_dir", type=click.Path(), help="Explicit folder of source B.")
@click.option("--fused", "fused_dir", type=click.Path(), help="Folder of fused images (by stem).")
@click.option("--method", help="Fuse with a baseline first: average|max_abs|laplacian|gff|all.")
@click.option("--metrics", default="all", show_default=True, help="Comma-separated names.")
@click.option("--convention", default="cdd", show_default=True, help="cdd|vifb|tang|mpy.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override one metric convention option (e.g. mi_base=2).")
@click.option("--task", type=click.Choice(["ivif", "medical", "mff", "mef"]), default=None,
              help="Task (colour rule); guessed from the folder roles when omitted.")
@click.option("--colour", "colour_rule", default="auto", show_default=True,
              help="auto|gray|keep_b_chroma|ycbcr_weighted|ihs (for --method).")
@click.option("--out", "out_dir", type=click.Path(), help="Write --method's fused PNGs here.")
@click.option("--json", "json_out", type=click.Path(), help="Write the JSON report here.")
@click.option("--csv", "csv_out", type=click.Path(), help="Write the per-pair CSV here.")
@click.option("--device", default="cpu", show_default=True, help="auto|cpu|cuda.")
@click.option("--ray", "use_ray", is_flag=True, help="Evaluate with Ray Data.")
@click.option("--address", help="Ray cluster address (auto | ray://host:10001); implies --ray.")
@click.option("--ray-threshold", default=500, show_default=True,
              help="Use Ray Data automatically from this many pairs on.")
@click.option("--quiet", is_flag=True, help="No progress bar or table.")
def eval_command(**kwargs: object) -> None:
    """Measure fused images (--fused) or a baseline (--method) on a paired set."""
    eval_cmd.run(eval_cmd.EvalArgs(**kwargs))


if __name__ == "__main__":
    main()
