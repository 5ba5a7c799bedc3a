"""The ``clplat`` command line.

Every mistake a user can make ends as one line on stderr (``clplat: error: ...``) and exit
status 2, without a traceback and without leaving a run directory behind.
"""
from __future__ import annotations

import json
import sys

import click

from ..errors import UserError
from ..interrupt import RunInterrupted

_TRAIN_HELP = "(default: the strategy's own, see `clplat list strategies -v`)"


def _options(*decorators):
    """One decorator applying ``decorators`` in the order they are listed (help order)."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


# --epochs, --batch-size, --lr, --device (run and sweep)
_training_options = _options(
    click.option("--epochs", metavar="N", help=f"training epochs per experience {_TRAIN_HELP}"),
    click.option("--batch-size", metavar="N", help=f"training mini-batch size {_TRAIN_HELP}"),
    click.option("--lr", metavar="X", help=f"learning rate {_TRAIN_HELP}"),
    click.option("--device", metavar="auto|cpu|cuda", help="where to train (default: auto)"))


# --log (run and sweep)
_log_option = click.option(
    "--log", "loggers", metavar="tensorboard|wandb", multiple=True,
    help="also log per-experience records and per-epoch training loss to TensorBoard "
         "(RUN_DIR/tensorboard) or Weights & Biases (RUN_DIR/wandb, offline unless "
         "WANDB_MODE is set); repeatable or a comma list")


def _component_options(set_help: str, stream_help: str):
    """--set, --stream-opt, --backbone-opt (run and sweep)."""
    return _options(
        click.option("--set", "sets", metavar="KEY=VALUE", multiple=True,
                     help=f"{set_help} (repeatable)"),
        click.option("--stream-opt", "stream_opts", metavar="KEY=VALUE", multiple=True,
                     help=f"{stream_help} (repeatable)"),
        click.option("--backbone-opt", "backbone_opts", metavar="KEY=VALUE", multiple=True,
                     help="backbone option (repeatable)"))


class ClplatGroup(click.Group):
    """A click group that turns usage and user errors into one line and exit status 2."""

    debug = False  # --debug: an internal error prints its whole traceback

    def main(self, args=None, prog_name=None, **kwargs):
        ClplatGroup.debug = False
        try:
            code = super().main(args=args, prog_name=prog_name or "clplat",
                                standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except RunInterrupted as exc:
            click.echo(f"clplat: interrupted by {exc}", err=True)
            code = exc.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt) as exc:
            cause = exc.__cause__
            if isinstance(cause, EOFError):  # click turns any EOFError into Abort: a bug
                code = _internal_error(cause, ClplatGroup.debug)
            else:
                click.echo("clplat: interrupted", err=True)
                code = 130
        except click.ClickException as exc:
            message = exc.format_message().replace("\n", " ")
            click.echo(f"clplat: error: {message}", err=True)
            code = 2
        except UserError as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            click.echo(f"clplat: error: {message}", err=True)
            code = 2
        except Exception as exc:  # noqa: BLE001  (a bug: one line, the traceback in a file)
            code = _internal_error(exc, ClplatGroup.debug)
        sys.exit(code if isinstance(code, int) else 0)


def _internal_error(exc: Exception, debug: bool) -> int:
    """An unexpected exception (a bug in clplatform or a plugged-in component): one line
    naming it and the file holding its traceback (the run directory's traceback.txt when a
    run had started); with --debug, the traceback itself. Exit status 1."""
    import traceback

    from ..cache import save_traceback
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    path = save_traceback(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    where = f"full traceback in {path}" if path else "traceback not saved"
    click.echo(f"clplat: internal error: {type(exc).__name__}"
               + (f": {first}" if first else "") + f" ({where}"
               + ("" if debug else "; --debug prints it") + ")", err=True)
    return 1


@click.group(cls=ClplatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clplatform", prog_name="clplat")
@click.option("--debug", is_flag=True,
              help="on an internal error, print the full traceback (it is always saved)")
def cli(debug):
    """clplatform: continual-learning experiments on Avalanche streams with timm backbones.

    \b
    clplat run --strategy naive          train and evaluate one strategy on a stream
    clplat compare runs/                 compare the runs in a folder (table + HTML)
    clplat report runs/<id>              report on one run
    clplat runs                          list runs and their status
    clplat sweep --strategies a,b        strategies x streams x seeds x grid, then compare
    clplat list strategies -v            what can be run, with every hyper-parameter
    clplat pretrain                      build the default backbone vit-glyphs
    """
    import clplatform  # noqa: F401  (warning filters)
    ClplatGroup.debug = debug


@cli.command("run")
@click.option("--strategy", metavar="NAME", help="strategy to run (default: naive)")
@click.option("--stream", metavar="NAME", help="stream to run on (default: glyphs)")
@click.option("--backbone", metavar="NAME",
              help="backbone: vit-glyphs (default) or timm:<model-name>")
@click.option("--backbone-weights", metavar="FILE",
              help="local backbone weights (.pt/.pth/.safetensors); nothing is downloaded")
@_training_options
@click.option("--seed", metavar="N", help="seed of everything, stream included (default: 0)")
@click.option("--out", metavar="DIR", help="folder for the run directory (default: runs)")
@_component_options("strategy hyper-parameter", "stream option")
@click.option("--config", metavar="FILE.toml",
              help="TOML file with [strategy], [stream], [backbone], [train] tables; "
                   "the command line wins")
@_log_option
@click.option("--json", "as_json", is_flag=True,
              help='print exactly one JSON object: {"run_dir": ..., "summary": {...}}')
@click.option("-q", "--quiet", is_flag=True, help="no progress output (bars on a terminal, log lines otherwise)")
@click.option("--resume", metavar="RUN_DIR",
              help="continue an interrupted run after its last finished experience, with "
                   "its own configuration (strategies that write checkpoints)")
@click.option("--dry-run", is_flag=True,
              help="validate and build everything, train nothing, write nothing; print the "
                   "resolved configuration as JSON")
def run_command(strategy, stream, backbone, backbone_weights, epochs, batch_size, lr, seed,
                device, out, sets, stream_opts, backbone_opts, config, loggers, as_json,
                quiet, resume, dry_run):
    """Train a strategy on a stream, experience by experience, and record the results.

    After each experience the model is evaluated on every test experience. The run is
    stored in its own directory under --out (config, records, summary); a summary table
    (or, with --json, one JSON object) is printed.

    \b
    Examples:
      clplat run --strategy naive
      clplat run --strategy ewc --set ewc_lambda=0.5 --stream digits --epochs 3
      clplat run --config experiment.toml --seed 1 --json
    """
    from ..options import parse_assignments
    from .runner import dry_run as check_only
    from .runner import execute
    from .spec import make_spec
    from ..store import json_safe

    if resume:
        given = [strategy, stream, backbone, backbone_weights, epochs, batch_size, lr, seed,
                 device, out, config, *sets, *stream_opts, *backbone_opts, *loggers]
        if any(v is not None and v != () for v in given) or dry_run:
            raise UserError("--resume continues a run with its own configuration; give no "
                            "other run options")
        from .runner import resume as resume_run
        _finish(resume_run(resume, progress=not quiet, exiting_after=True), as_json)
        return
    backbone_options = parse_assignments(backbone_opts, "--backbone-opt")
    if backbone_weights:
        backbone_options["weights"] = backbone_weights
    spec = make_spec(config, strategy=strategy, stream=stream, backbone=backbone,
                     strategy_options=parse_assignments(sets, "--set"),
                     stream_options=parse_assignments(stream_opts, "--stream-opt"),
                     backbone_options=backbone_options, epochs=epochs, batch_size=batch_size,
                     lr=lr, seed=seed, device=device, out=out, loggers=loggers)
    if dry_run:
        click.echo(json.dumps(json_safe(check_only(spec))))
        return
    _finish(execute(spec, progress=not quiet, exiting_after=True), as_json)


def _finish(result, as_json: bool) -> None:
    from ..store import json_safe
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.path),
                               "summary": json_safe(result.summary)}))
    else:
        from clplatform.reports.tables import run_summary_text
        click.echo(run_summary_text(result))


_report_options = _options(
    click.argument("runs", nargs=-1, required=True, metavar="RUNS..."),
    click.option("--out", metavar="FILE", help="HTML file to write"),
    click.option("--group-by", default="label", show_default=True,
                 metavar="label|strategy|backbone|seed",
                 help="rows of the comparison: label = strategy plus the "
                      "hyper-parameters that differ from its defaults"),
    click.option("--export", metavar="DIR",
                 help="also write the tables to DIR: csv/parquet the merged tables (runs, "
                      "accuracy, experiences) and the comparison table; latex/markdown "
                      "the comparison table, one file per stream"),
    click.option("--export-format", default="csv", show_default=True,
                 metavar="csv|parquet|latex|markdown", help="format of --export"),
    click.option("--include-incomplete", is_flag=True,
                 help="also report runs that failed or were interrupted"))


def _report(runs, out, group_by, export, export_format, include_incomplete, default_out,
            title, detail_single_run=False):
    from clplatform.reports import (build_report, check_export_folder, check_export_format,
                         comparison_text, export_tables)
    if export:  # before anything is written
        check_export_format(export_format)
        check_export_folder(export)
    loaded, path = build_report(runs, out or default_out(runs), title, group_by,
                                include_incomplete)
    if detail_single_run and len(loaded.runs) == 1:
        from clplatform.reports.tables import run_summary_text
        click.echo(run_summary_text(loaded.runs[0]))
    else:
        click.echo(comparison_text(loaded.table, group_by))
    for skipped, status in loaded.skipped:
        click.echo(f"skipped {skipped} ({status}; see --include-incomplete)", err=True)
    if export:
        for written in export_tables(loaded, export, export_format, group_by):
            click.echo(f"exported {written}")
    click.echo(f"report: {path}")
    return path


_open_option = click.option("--open", "open_", is_flag=True,
                            help="open the written report in the default web browser")


def _open_in_browser(path) -> None:
    """Open the report with :mod:`webbrowser` (a graphical browser, or a console one where
    there is no display); a note on stderr when none can be started."""
    import webbrowser
    from pathlib import Path
    try:
        opened = webbrowser.open(Path(path).resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        click.echo(f"clplat: no web browser could be started; the report is {path}", err=True)


@cli.command("runs")
@click.argument("folders", nargs=-1, metavar="[DIR]...")
@click.option("--json", "as_json", is_flag=True, help="print one JSON list instead of a table")
def runs_command(folders, as_json):
    """List the runs under DIR (default: runs) with their status.

    Status: running, complete, interrupted (stopped by a signal; the finished experiences
    are kept), failed (with the reason), stale (recorded as running, but its process on
    this host is gone), or corrupt (a file that does not fit its schema, named in the
    reason). Paths are shown relative to the current folder.
    """
    import os

    from ..store import json_safe, list_runs
    table = list_runs(list(folders) or ["runs"])
    if as_json:
        click.echo(json.dumps(json_safe(table.to_dict(orient="records"))))
        return

    def shown_path(path: str) -> str:  # relative to the current folder when shorter
        relative = os.path.relpath(path)
        return relative if len(relative) < len(path) else path

    def number(format_: str):
        return lambda v: "" if v is None or v != v else format_.format(v)
    shown = table.astype(object).where(table.notna(), None).assign(
        run=table["run"].map(shown_path), seed=table["seed"].map(number("{:.0f}")),
        experiences=table["experiences"].map(number("{:.0f}")) + "/"
        + table["of"].map(number("{:.0f}")),
        final_accuracy=(100 * table["final_accuracy"].astype(float)).map(number("{:.2f}")))
    shown.loc[table["status"] == "corrupt", "experiences"] = ""
    click.echo(shown.drop(columns=["of"]).fillna("").to_string(index=False))


@cli.command("report")
@_report_options
@_open_option
def report_command(runs, out, group_by, export, export_format, include_incomplete, open_):
    """Report on one or more runs: summary table and a self-contained HTML file.

    RUNS are run directories or folders holding them. With one run directory, the HTML
    report goes to RUN_DIR/report.html unless --out says otherwise.
    """
    from pathlib import Path

    def default_out(paths):
        single = Path(paths[0])
        return single / "report.html" if len(paths) == 1 and (single / "run.json").is_file() \
            else Path("report.html")
    path = _report(runs, out, group_by, export, export_format, include_incomplete,
                   default_out, None, detail_single_run=True)
    if open_:
        _open_in_browser(path)


@cli.command("compare")
@_report_options
@_open_option
def compare_command(runs, out, group_by, export, export_format, include_incomplete, open_):
    """Compare strategies over runs and seeds: table (mean ± std) and HTML report.

    RUNS are run directories or folders holding them (e.g. `clplat compare runs/`). Runs of
    different streams are compared separately, one section per stream. Writes
    comparison.html unless --out says otherwise.
    """
    path = _report(runs, out, group_by, export, export_format, include_incomplete,
                   lambda paths: "comparison.html", None)
    if open_:
        _open_in_browser(path)


@cli.command("sweep")
@click.option("--strategies", metavar="A,B,...", help="strategies to run")
@click.option("--preset", metavar="NAME",
              help="the strategies of a paper's comparison instead of --strategies: "
                   "sema-table1 (L2P, DualPrompt, CODA-Prompt, SimpleCIL, APER, InfLoRA, "
                   "SEMA) or sema-appendix (EASE, RanPAC, SimpleCIL, SEMA); with -cpu: "
                   "5 epochs for the comparators whose 20 take over 90 s on a CPU")
@click.option("--streams", default="glyphs", show_default=True, metavar="X,Y,...",
              help="streams to run on")
@click.option("--seeds", default="0", show_default=True, metavar="0,1,2", help="seeds")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="values to cross: a hyper-parameter (applied to the strategies that have "
                   "it), epochs/batch_size/lr, stream.KEY or backbone.KEY (repeatable)")
@click.option("--executor", default="local", show_default=True, metavar="local|ray",
              help="local process pool, or Ray tasks")
@click.option("--workers", metavar="N", type=int,
              help="runs at the same time (default: 1 local; ray: as the cluster allows)")
@click.option("--threads-per-run", "threads", metavar="N", type=int,
              help="CPU threads per run (default: the cores / workers; ray: its CPU request)")
@click.option("--gpus-per-run", "gpus", metavar="X", type=float, default=0.0,
              help="GPUs each Ray task requests (default: 0)")
@click.option("--address", metavar="auto|ray://HOST:PORT",
              help="Ray cluster to use (default: start a local Ray instance)")
@click.option("--retries", metavar="N", type=int, default=1, show_default=True,
              help="tries again a run that failed or whose worker died")
@click.option("--out", default="sweeps/sweep", show_default=True, metavar="DIR",
              help="folder of the sweep: one run directory per cell, sweep.json, "
                   "comparison.html")
@click.option("--backbone", metavar="NAME", help="backbone of every run")
@_training_options
@_component_options("hyper-parameter for the strategies that have it",
                    "option of every stream")
@_log_option
def sweep_command(strategies, preset, streams, seeds, grid, executor, workers, threads, gpus,
                  address, retries, out, backbone, epochs, batch_size, lr, device, sets,
                  stream_opts, backbone_opts, loggers):
    """Run strategy x stream x seed x grid, each cell an ordinary run, then compare them.

    Every cell gets its run directory OUT/<strategy>-<stream>-s<seed>[-key=value...];
    running the same sweep again skips complete cells and resumes interrupted ones. The
    comparison report of the sweep is OUT/comparison.html.

    \b
    Examples:
      clplat sweep --strategies naive,ewc --seeds 0,1,2 --workers 2
      clplat sweep --strategies ewc --grid ewc_lambda=0.1,1,10 --grid lr=0.01,0.001
      clplat sweep --strategies sema,simplecil --executor ray --address auto
      clplat sweep --preset sema-table1 --seeds 0,1,2
    """
    from ..options import parse_assignments
    from .presets import preset_overrides, preset_strategies
    from .spec import make_spec
    from .sweep import SweepOptions, _split, parse_grid, plan, run_sweep
    seed_values = []
    for value in _split(seeds, "--seeds"):
        try:
            seed_values.append(int(value))
        except ValueError:
            raise UserError(f"--seeds: {value!r} is not an integer") from None
    base = make_spec(None, backbone=backbone,
                     strategy_options=parse_assignments(sets, "--set"),
                     stream_options=parse_assignments(stream_opts, "--stream-opt"),
                     backbone_options=parse_assignments(backbone_opts, "--backbone-opt"),
                     epochs=epochs, batch_size=batch_size, lr=lr, device=device, out=out,
                     loggers=loggers)
    if (strategies is None) == (preset is None):
        raise UserError("give either --strategies or --preset")
    names = preset_strategies(preset) if preset else _split(strategies, "--strategies")
    cells = plan(names, _split(streams, "--streams"),
                 seed_values, parse_grid(grid), base, preset_overrides(preset))
    cells, runs, report = run_sweep(cells, out, SweepOptions(executor, workers, threads,
                                                              gpus, address, retries))
    failed = [c for c in cells if c.status == "failed"]
    if report is not None:
        from clplatform.reports.tables import comparison_text
        click.echo(comparison_text(runs.table))
        click.echo(f"report: {report}")
    for cell in failed:
        click.echo(f"failed: {cell.id}: {cell.reasons[-1]}", err=True)
    if failed:
        sys.exit(1)


@cli.command("list")
@click.argument("what", type=click.Choice(["strategies", "streams", "backbones"]))
@click.option("-v", "--verbose", is_flag=True,
              help="show every option with its type, default and help")
def list_command(what, verbose):
    """List the registered strategies, streams or backbones."""
    import dataclasses

    from ..contract import StrategyTraits
    from ..options import describe_options
    from ..registry import BACKBONES, STRATEGIES, STREAMS
    registry = {"strategies": STRATEGIES, "streams": STREAMS, "backbones": BACKBONES}[what]
    entries = registry.entries()
    width = max(len(e.display) for e in entries)
    for entry in entries:
        click.echo(f"{entry.display:<{width}}  {entry.help}")
        if not verbose:
            continue
        traits = entry.traits
        if isinstance(traits, StrategyTraits):
            click.echo(f"{'':<{width}}    train defaults: " + ", ".join(
                f"{k}={v}" for k, v in dataclasses.asdict(traits.train_defaults).items()))
            flags = [f for f in ("joint", "active", "resumable", "varying_iteration_cost")
                     if getattr(traits, f)]
            if traits.unused_train:
                flags.append(f"does not use {', '.join(traits.unused_train)}")
            if flags:
                click.echo(f"{'':<{width}}    traits: {'; '.join(flags)}")
        if traits.plugin:
            click.echo(f"{'':<{width}}    plugin: {traits.plugin}")
        rows = describe_options(entry.options)
        if not rows and what != "backbones":
            click.echo(f"{'':<{width}}    (no options)")
        for row in rows:
            allowed = f" {row['allowed']}" if row["allowed"] else ""
            click.echo(f"{'':<{width}}    {row['name']} = {row['default']!r}  "
                       f"({row['type']}{allowed})  {row['help']}")


@cli.command("pretrain")
@click.option("--force", is_flag=True, help="build again even if the cached weights exist")
@click.option("--out", metavar="FILE", help="also write the weights to FILE")
@click.option("-q", "--quiet", is_flag=True, help="no progress (bar or log lines)")
def pretrain_command(force, out, quiet):
    """Build the default backbone vit-glyphs: pre-train it on glyphs-pretrain.

    The weights are cached (70 s on 2 idle CPU cores; the progress shows the time left on
    this machine) and used by every run whose backbone is vit-glyphs. Greek and Cyrillic
    characters, none a Latin look-alike, so the downstream Latin classes stay unseen.
    """
    import shutil

    from ..models.pretrain import PretrainRecipe, cached_weights_path, pretrain_glyph_vit
    path = cached_weights_path(PretrainRecipe())
    if force or not path.is_file():
        path, accuracy = pretrain_glyph_vit(progress=not quiet)
        click.echo(f"vit-glyphs: {accuracy:.1%} test accuracy on glyphs-pretrain")
    click.echo(f"weights: {path}")
    if out:
        try:
            shutil.copyfile(path, out)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
        click.echo(f"copied to {out}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
