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
    click.option("--device", metavar="auto|cpu|cuda", help="where to train (default: auto)"),
    click.option("--precision", metavar="fp32|bf16|fp16",
                 help="autocast to bf16/fp16 on the device, fp32 master weights; fp16 on CUDA "
                      "scales the loss (default: fp32)"),
    click.option("--cache-gib", metavar="X",
                 help="GiB of frozen activations a strategy may cache per experience on its "
                      "device; beyond, recomputed per batch, same records (default: 4)"),
    click.option("--data-workers", metavar="N",
                 help="processes decoding and transforming images of file-backed streams "
                      "(default: 0, the main process)"),
    click.option("--image-cache", metavar="DIR",
                 help="keep file streams' decoded images as memory-mapped uint8 files in "
                      "DIR, reused by later epochs and runs; same records (default: none, "
                      "held in memory)"),
    click.option("--image-cache-gib", metavar="X",
                 help="disk budget of --image-cache; an experience beyond it is decoded "
                      "from its files at every read, with a note (default: 50)"))

_RECIPES = ("sema-cifar100, sema-imagenet-r-5|10|20, sema-imagenet-a, sema-vtab, "
            "lftl-office31-<s><t>, lftl-office-home-<s><t>, lftl-visda")


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
    clplat pretrain [--backbone vit-glyphs] pre-train a built-in backbone (default vit-mini)
    """
    import clplatform  # noqa: F401  (warning filters)
    ClplatGroup.debug = debug


@cli.command("run")
@click.option("--preset", metavar="NAME",
              help=f"a paper's benchmark recipe ({_RECIPES}): stream, backbone, "
                   "hyper-parameters, seed; explicit options win; give the dataset with "
                   "--stream-opt root=DIR")
@click.option("--strategy", metavar="NAME", help="strategy to run (default: naive)")
@click.option("--stream", metavar="NAME", help="stream to run on (default: glyphs)")
@click.option("--backbone", metavar="NAME",
              help="backbone: vit-mini (default; $CLPLATFORM_BACKBONE names another), "
                   "vit-glyphs or timm:<model-name>")
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
@click.option("--keep-model", is_flag=True,
              help="keep the final model (RUN_DIR/checkpoint.pt) for `clplat compress` "
                   "(strategies that write checkpoints)")
def run_command(preset, strategy, stream, backbone, backbone_weights, epochs, batch_size, lr,
                device, precision, cache_gib, data_workers, image_cache, image_cache_gib, seed,
                out, sets, stream_opts, backbone_opts,
                config, loggers, as_json, quiet, resume, dry_run, keep_model):
    """Train a strategy on a stream, experience by experience, and record the results.

    After each experience the model is evaluated on every test experience. The run is
    stored in its own directory under --out (config, records, summary); a summary table
    (or, with --json, one JSON object) is printed.

    \b
    Examples:
      clplat run --strategy naive
      clplat run --strategy ewc --set ewc_lambda=0.5 --stream digits --epochs 3
      clplat run --config experiment.toml --seed 1 --json
      clplat run --preset sema-cifar100 --stream-opt root=data --backbone-weights vit.pth
    """
    from ..options import parse_assignments
    from .runner import dry_run as check_only
    from .runner import execute
    from .spec import make_spec
    from ..store import json_safe

    if resume:
        given = [preset, strategy, stream, backbone, backbone_weights, epochs, batch_size, lr,
                 seed, device, precision, cache_gib, data_workers, image_cache,
                 image_cache_gib, out, config, *sets, *stream_opts,
                 *backbone_opts, *loggers]
        if any(v is not None and v != () for v in given) or dry_run or keep_model:
            raise UserError("--resume continues a run with its own configuration; give no "
                            "other run options")
        from .runner import resume as resume_run
        _finish(resume_run(resume, progress=not quiet, exiting_after=True), as_json)
        return
    backbone_options = parse_assignments(backbone_opts, "--backbone-opt")
    if backbone_weights:
        backbone_options["weights"] = backbone_weights
    spec = make_spec(config, preset=preset, strategy=strategy, stream=stream,
                     backbone=backbone, strategy_options=parse_assignments(sets, "--set"),
                     stream_options=parse_assignments(stream_opts, "--stream-opt"),
                     backbone_options=backbone_options, epochs=epochs, batch_size=batch_size,
                     lr=lr, seed=seed, device=device, precision=precision,
                     cache_gib=cache_gib, data_workers=data_workers, image_cache=image_cache,
                     image_cache_gib=image_cache_gib, out=out,
                     loggers=loggers, keep_model=keep_model or None)
    if dry_run and preset:  # the recipe, without building the stream (its dataset)
        from .runner import preset_recipe
        click.echo(json.dumps(json_safe(preset_recipe(spec, preset))))
        return
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
@click.option("--preset", "presets", metavar="NAME", multiple=True,
              help="the strategies of a paper's comparison instead of --strategies: "
                   "sema-table1 (L2P, DualPrompt, CODA-Prompt, SimpleCIL, APER, InfLoRA, "
                   "SEMA) or sema-appendix (EASE, RanPAC, SimpleCIL, SEMA) (with -cpu: 5 "
                   "epochs for the comparators whose 20 take over 90 s on a CPU), or "
                   "mini-table1 (sema-table1 at its official epochs and naive on mini-in, "
                   "mini-r, mini-a, mini-vtab, vit-mini, seeds 0,1,2, ranked against "
                   "Table 1); and/or a "
                   f"benchmark recipe ({_RECIPES}): its stream, backbone, seeds, and its "
                   "strategy's hyper-parameters (its strategy alone unless --strategies or "
                   "a comparison preset is given; explicit options win)")
@click.option("--streams", metavar="X,Y,...", help="streams to run on (default: glyphs, or "
                                                   "the preset's)")
@click.option("--seeds", metavar="0,1,2", help="seeds (default: 0, or the preset's)")
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
@click.option("--backbone", metavar="NAME", help="backbone of every run (default: "
                                                 "vit-mini, or the preset's)")
@_training_options
@_component_options("hyper-parameter for the strategies that have it",
                    "option of every stream")
@_log_option
@click.option("--dry-run", is_flag=True,
              help="validate every cell, run nothing, write nothing; print the plan as JSON "
                   "(cells with their strategy, stream, seed, options and settings)")
def sweep_command(strategies, presets, streams, seeds, grid, executor, workers, threads, gpus,
                  address, retries, out, backbone, epochs, batch_size, lr, device, precision,
                  cache_gib, data_workers, image_cache, image_cache_gib, sets, stream_opts,
                  backbone_opts, loggers, dry_run):
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
      clplat sweep --preset sema-table1 --preset sema-cifar100 --stream-opt root=data
      clplat sweep --preset mini-table1 --workers 2
      clplat sweep --preset mini-table1 --seeds 0 --streams mini-r --dry-run
    """
    from ..options import parse_assignments
    from .presets import get_preset, preset_overrides
    from .spec import make_spec
    from .sweep import SweepOptions, _split, parse_grid, plan, run_sweep
    chosen = [get_preset(name) for name in presets]
    comparisons = [p for p in chosen if not p.is_recipe]
    recipes = [p for p in chosen if p.is_recipe]
    if len(comparisons) > 1 or len(recipes) > 1:
        raise UserError("give at most one comparison preset and one recipe preset")
    if strategies is not None and comparisons:
        raise UserError("give either --strategies or a comparison preset")
    recipe = recipes[0] if recipes else None
    # a comparison's own streams, backbone and seeds (mini-table1), below a recipe's
    world = comparisons[0] if comparisons and not recipe else None
    if strategies is None and not chosen:
        raise UserError("give either --strategies or --preset")
    seed_values = []
    for value in _split(seeds, "--seeds") if seeds is not None else (
            recipe.seeds if recipe else (world and world.seeds) or ["0"]):
        try:
            seed_values.append(int(value))
        except ValueError:
            raise UserError(f"--seeds: {value!r} is not an integer") from None
    user_sets = parse_assignments(sets, "--set")
    stream_names = (_split(streams, "--streams") if streams
                    else list(world.streams) if world and world.streams else None)
    base = make_spec(None, preset=recipe.name if recipe else None,
                     backbone=backbone or (world.backbone if world else None),
                     stream=stream_names[0] if stream_names else None,
                     strategy_options=user_sets,
                     stream_options=parse_assignments(stream_opts, "--stream-opt"),
                     backbone_options=parse_assignments(backbone_opts, "--backbone-opt"),
                     epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                     precision=precision, cache_gib=cache_gib, data_workers=data_workers,
                     image_cache=image_cache, image_cache_gib=image_cache_gib,
                     out=out, loggers=loggers)
    if comparisons:
        names = list(comparisons[0].strategies)
    elif strategies is not None:
        names = _split(strategies, "--strategies")
    else:
        names = list(recipe.strategies)
    # per strategy: a comparison preset's values, and a recipe's hyper-parameters (which
    # belong to its strategy only)
    overrides = preset_overrides(comparisons[0].name) if comparisons else {}
    if recipe:
        own = recipe.strategies[0]
        overrides[own] = {**overrides.get(own, {}),
                          **{k: v for k, v in base.strategy_options.items()
                             if k not in user_sets}}
        base.strategy_options = user_sets
    cells = plan(names, stream_names or [base.stream], seed_values, parse_grid(grid), base,
                 overrides)
    if dry_run:
        from pathlib import Path

        from ..store import json_safe
        click.echo(json.dumps(json_safe({"out": out, "cells": [
            {**cell.record(Path(out)), "backbone": cell.spec.backbone,
             "strategy_options": cell.spec.strategy_options,
             "stream_options": cell.spec.stream_options, "train": cell.spec.train}
            for cell in cells]})))
        return
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


@cli.command("compress")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--method", default="resrep", show_default=True, metavar="resrep|csgd|magnitude",
              help="ResRep (compactors, penalty, global widths), C-SGD (clusters pulled "
                   "together, uniform widths) or one-shot magnitude pruning")
@click.option("--ratio", metavar="F", required=True,
              help="kept fraction in (0, 1): of the targets' FLOPs (resrep) or of each "
                   "target layer's width (csgd, magnitude)")
@click.option("--targets", metavar="mlp,adapters,heads",
              help="structures to prune (default: mlp,adapters)")
@click.option("--data", metavar="current|replay|all-seen",
              help="training data: the last experience's (default), the strategy's replay "
                   "buffer, or all experiences' (an oracle, recorded as not continual)")
@click.option("--loss", metavar="kd|ce",
              help="kd: distil the uncompressed model's logits over the seen classes "
                   "(default); ce: labels")
@click.option("--steps", metavar="N", help="training steps (default: 500)")
@click.option("--lr", metavar="X", help="learning rate (default: 0.01)")
@click.option("--set", "sets", metavar="KEY=VALUE", multiple=True,
              help="other compress hyper-parameters (lasso, mask_interval, centripetal, "
                   "...; see clplatform.strategies.compress.CompressOptions; repeatable)")
@click.option("--force", is_flag=True, help="replace an existing compression of the same "
                                             "method and ratio")
@click.option("--json", "as_json", is_flag=True, help="print the compression summary as JSON")
def compress_command(run_dir, method, ratio, targets, data, loss, steps, lr, sets, force,
                     as_json):
    """Prune a finished run's final model into a narrower one and record it.

    The run must be complete and keep its final model (`clplat run --keep-model`). The
    model is trained on the data --data allows, merged into genuinely smaller layers,
    evaluated on every seen test experience before and after, and written as the child run
    RUN_DIR/compress/<method>-<ratio>/, which `clplat report` shows.

    \b
    Examples:
      clplat compress runs/sema-glyphs-s0-... --method resrep --ratio 0.6
      clplat compress RUN --method csgd --ratio 0.5 --targets mlp,heads --set centripetal=3
    """
    from ..options import parse_assignments
    from ..store import json_safe
    from .compress import SUMMARY_FILE, compress_run
    values = parse_assignments(sets, "--set")
    given = {"method": method, "ratio": ratio, "targets": targets, "data": data, "loss": loss,
             "steps": steps, "lr": lr}
    values.update({k: v for k, v in given.items() if v is not None})
    child = compress_run(run_dir, force=force, **values)
    summary = json.loads((child / SUMMARY_FILE).read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps(json_safe({"run_dir": str(child), "summary": summary})))
        return
    click.echo(f"accuracy (mean over seen experiences): "
               f"{100 * summary['final_accuracy_before']:.1f}% -> "
               f"{100 * summary['final_accuracy_after']:.1f}%")
    click.echo(f"FLOPs per sample: {summary['flops_before'] / 1e6:.2f} M -> "
               f"{summary['flops_after'] / 1e6:.2f} M "
               f"(targets: {100 * summary['target_flops_ratio_achieved']:.1f}% kept, "
               f"requested {100 * summary['flops_ratio_requested']:.0f}%)")
    click.echo(f"parameters: {summary['params_before']:,} -> {summary['params_after']:,}; "
               f"training {summary['train_seconds']:.1f} s")
    click.echo(f"compression: {child}")


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
@click.option("--backbone", type=click.Choice(["vit-glyphs", "vit-mini"]),
              default=lambda: _builtin_default_backbone(), show_default="the default backbone",
              help="the backbone to pre-train")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="seed of the corpus, the initialisation and the batches")
@click.option("--epochs", type=click.IntRange(1), help="epochs (default: the recipe's)")
@click.option("--out", metavar="FILE", help="write the weights to FILE (default: vit-mini: "
              "the package's shipped weights file; vit-glyphs: the cache, also copied to FILE)")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: torch's)")
@click.option("--quick", is_flag=True, help="a tiny recipe (seconds) for tests; needs --out")
@click.option("--probe", metavar="STREAMS", default="",
              help="after pre-training, print the linear-probe accuracy (logistic regression "
                   "on frozen features) on each of these comma-separated streams")
@click.option("--force", is_flag=True, help="vit-glyphs: build again even if cached")
@click.option("--checkpoint-every", type=click.FloatRange(0), metavar="MIN",
              help="vit-mini: save the training state to <out>.state.pt every MIN minutes "
                   "(default 10; 0: only on SIGTERM/SIGINT, which always save it)")
@click.option("--resume", is_flag=True,
              help="vit-mini: continue from <out>.state.pt (required to exist; without "
                   "--resume a state file of the same recipe is resumed from anyway)")
@click.option("--stop-after-steps", type=click.IntRange(1), hidden=True,
              help="test hook: save the state after this many steps and stop (as SIGTERM)")
@click.option("-q", "--quiet", is_flag=True, help="no progress (bar or log lines)")
def pretrain_command(backbone, seed, epochs, out, threads, quick, probe, force,
                     checkpoint_every, resume, stop_after_steps, quiet):
    """Pre-train a built-in backbone.

    vit-mini (the default backbone): the corpus mini-pretrain (3,576 non-Latin glyphs of the
    DejaVu/STIX fonts and 1,000 fractal categories), about 2.7 h on 2 idle CPU cores; writes
    the package's shipped weights file unless --out is given. Progress shows the time left
    on this machine.
    vit-glyphs: Greek and Cyrillic characters (glyphs-pretrain), 70 s on 2 idle CPU cores,
    cached and used by every run whose backbone is vit-glyphs.
    vit-mini's training is resumable: its state is saved beside the weights file
    (<out>.state.pt) every 10 minutes and on SIGTERM/SIGINT; the same command continues
    from it and gives the same weights as an uninterrupted run (same --threads).
    """
    import dataclasses
    import shutil
    from pathlib import Path

    import torch

    from ..models import pretrain as pt
    probes = [p for p in (x.strip() for x in probe.split(",")) if p]
    if probes:  # resolve every stream before training (an unknown one exits 2 now)
        from clplatform.streams import StreamSource
        for name in probes:
            StreamSource(name, {})
    if out and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    if quick and not out:
        raise UserError("--quick writes test weights: give --out FILE")
    if backbone != "vit-mini":
        for flag, value in (("--checkpoint-every", checkpoint_every), ("--resume", resume),
                            ("--stop-after-steps", stop_after_steps)):
            if value is not None and value is not False:
                raise UserError(f"{flag} applies to --backbone vit-mini only")
    if threads:
        torch.set_num_threads(threads)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    if backbone == "vit-mini":
        recipe = pt.QUICK_RECIPE if quick else pt.MiniPretrainRecipe()
        recipe = dataclasses.replace(recipe, seed=seed, **({"epochs": epochs} if epochs else {}))
        every = 10.0 if checkpoint_every is None else checkpoint_every
        path, accuracy, meta = pt.pretrain_vit_mini(
            recipe, out, progress=not quiet, log=log,
            checkpoint_every=every * 60 if every else None, resume=resume,
            stop_after_steps=stop_after_steps)
        click.echo(f"vit-mini: {accuracy:.1%} test accuracy on mini-pretrain "
                   f"({meta['glyph_classes']} glyph + {meta['fractal_classes']} fractal "
                   f"classes, {meta['train_seconds']} s)")
        click.echo(f"weights: {path}")
    else:
        recipe = pt.PretrainRecipe(epochs=1, samples_per_class=8, test_samples_per_class=4) \
            if quick else pt.PretrainRecipe()
        recipe = dataclasses.replace(recipe, seed=seed, **({"epochs": epochs} if epochs else {}))
        path = pt.cached_weights_path(recipe)
        if force or not path.is_file():
            path, accuracy = pt.pretrain_glyph_vit(recipe, progress=not quiet)
            click.echo(f"vit-glyphs: {accuracy:.1%} test accuracy on glyphs-pretrain")
        click.echo(f"weights: {path}")
        if out:
            try:
                shutil.copyfile(path, out)
            except OSError as exc:
                raise UserError(f"cannot write {out}: {exc.strerror}") from None
            click.echo(f"copied to {out}")
            path = Path(out)
    if probes:
        from .factories import create_backbone
        model = create_backbone(backbone, weights=str(path))
        for name, found in probe_streams({"pretrained": model}, probes):
            click.echo(f"linear probe on {name}: {found['pretrained']:.1%}")


@cli.command("probe")
@click.option("--backbone", default=lambda: _default_backbone(), metavar="NAME",
              show_default="the default backbone",
              help="backbone whose frozen features are probed (`clplat list backbones`)")
@click.option("--backbone-weights", metavar="FILE", help="local weights file of the backbone")
@click.option("--backbone-opt", "backbone_opts", metavar="KEY=VALUE", multiple=True,
              help="backbone option (repeatable)")
@click.option("--streams", metavar="X,Y,...", required=True, help="streams to probe")
@click.option("--stream-opt", "stream_opts", metavar="KEY=VALUE", multiple=True,
              help="option of every stream (repeatable)")
@click.option("--random", "with_random", is_flag=True,
              help="also probe the same architecture with random weights (the reference "
                   "that says what pre-training adds)")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: torch's)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of lines")
def probe_command(backbone, backbone_weights, backbone_opts, streams, stream_opts, with_random,
                  threads, as_json):
    """Linear-probe accuracy of a frozen backbone on streams.

    A logistic regression (scikit-learn, standardised features) is fitted on the frozen
    features of every training image of the stream (all experiences joined) and scored on its
    test images: how linearly separable the backbone makes the stream's classes, with no
    continual learning involved.

    \b
    Examples:
      clplat probe --backbone vit-glyphs --streams glyphs --random
      clplat probe --backbone vit-mini --streams mini-in,mini-r,mini-a,mini-vtab --random
    """
    import torch

    from clplatform.streams import StreamSource

    from ..options import parse_assignments
    from .factories import create_backbone
    from .sweep import _split
    names = _split(streams, "--streams")
    stream_options = parse_assignments(stream_opts, "--stream-opt")
    options = parse_assignments(backbone_opts, "--backbone-opt")
    if backbone_weights:
        options["weights"] = backbone_weights
    for name in names:  # every name and option checked before any work
        StreamSource(name, stream_options)
    models = {"pretrained": create_backbone(backbone, **options)}
    if with_random:
        models["random"] = create_backbone(backbone, **{**options, "pretrained": False,
                                                        "weights": None})
    if threads:
        torch.set_num_threads(threads)
    found = {}
    for name, scores in probe_streams(models, names, stream_options):
        found[name] = scores
        if not as_json:
            extra = (f" (random weights: {found[name]['random']:.1%})" if with_random else "")
            click.echo(f"linear probe of {backbone} on {name}: "
                       f"{found[name]['pretrained']:.1%}{extra}")
    if as_json:
        click.echo(json.dumps({"backbone": backbone, "probe": found}))


def probe_streams(backbones: dict, streams: list[str], stream_options: dict | None = None):
    """``(stream name, {key: linear-probe accuracy})`` stream by stream for every backbone of
    ``backbones`` (``{key: Backbone}``), each stream built once (`clplat probe` and
    `clplat pretrain --probe`)."""
    from ..models.probe import linear_probe
    from .factories import create_stream
    for name in streams:
        benchmark = create_stream(name, **(stream_options or {}))
        yield name, {key: linear_probe(model, benchmark) for key, model in backbones.items()}


def _default_backbone() -> str:
    from .spec import default_backbone
    return default_backbone()


def _builtin_default_backbone() -> str:
    """The default backbone if it is one `clplat pretrain` builds, else vit-mini."""
    name = _default_backbone()
    return name if name in ("vit-glyphs", "vit-mini") else "vit-mini"


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
