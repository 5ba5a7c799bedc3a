"""Sweeps: grid expansion and validation, the local and Ray executors give identical records,
failed runs are recorded and retried, a killed worker does not stop the sweep, a second run
of the same sweep skips what is complete."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from clplatform.errors import UserError
from clplatform.app.runner import RunSpec
from clplatform.app.sweep import SweepOptions, parse_grid, plan, run_sweep

from conftest import TINY_GLYPHS

TIMING = ("seconds", "memory")
TINY = [a for k, v in TINY_GLYPHS.items() for a in ("--stream-opt", f"{k}={v}")]
ray = pytest.importorskip("ray")


def _base(**train) -> RunSpec:
    return RunSpec(stream_options=dict(TINY_GLYPHS), train={"epochs": 1, **train})


def test_plan_crosses_the_grid_and_validates_everything_first():
    grid = parse_grid(["ewc_lambda=1,10", "lr=0.1,0.01"])
    cells = plan(["naive", "ewc"], ["glyphs"], [0, 1], grid, _base())
    ids = [c.id for c in cells]
    # ewc_lambda applies to ewc only: naive 2 seeds x 2 lr, ewc 2 seeds x 2 lr x 2 lambdas
    assert len(cells) == 4 + 8 and len(set(ids)) == 12
    assert "ewc-glyphs-s1-ewc_lambda=10-lr=0.01" in ids and "naive-glyphs-s0-lr=0.1" in ids
    cell = cells[ids.index("ewc-glyphs-s1-ewc_lambda=10-lr=0.01")]
    assert cell.spec.strategy_options == {"ewc_lambda": "10"}
    assert cell.spec.train == {"epochs": 1, "lr": "0.01", "seed": 1}
    streams = plan(["naive"], ["glyphs"], [0], parse_grid(["stream.experiences=2,3"]),
                   _base())
    assert [c.spec.stream_options["experiences"] for c in streams] == ["2", "3"]
    for bad, message in [
        (lambda: plan(["nope"], ["glyphs"], [0], {}, _base()), "unknown strategy 'nope'"),
        (lambda: plan(["naive"], ["glyphs"], [0], parse_grid(["alpha=1"]), _base()),
         "--grid alpha: not a training setting"),
        (lambda: plan(["ewc"], ["glyphs"], [0], parse_grid(["ewc_lambda=x"]), _base()),
         "ewc_lambda"),
        (lambda: plan(["naive"], ["glyphs"], [0], parse_grid(["train.lr=1"]), _base()),
         "dotted key"),
        (lambda: parse_grid(["lr"]), "--grid expects key=v1,v2"),
        (lambda: parse_grid(["lr=1", "lr=2"]), "given twice"),
    ]:
        with pytest.raises(UserError, match=message):
            bad()


def _records(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    acc = pd.read_csv(run_dir / "accuracy.csv")
    exps = pd.read_csv(run_dir / "experiences.csv")
    return acc, exps[[c for c in exps.columns if not any(t in c for t in TIMING)]]


@pytest.fixture
def ray_cluster(monkeypatch):
    """A real Ray cluster (head node) started the way the README says; its address. Local
    only, so without Ray's token authentication (driver and cluster agree on it)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import shutil
    import socket
    import tempfile
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's sockets live there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}"], check=True, capture_output=True,
                   timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_local_and_ray_sweeps_give_identical_records(tmp_path, pretrained_backbone,
                                                     ray_cluster):
    cells = plan(["naive", "ewc"], ["glyphs"], [0, 1], {}, _base())
    lines: list[str] = []
    out = {}
    for executor in ("local", "ray"):
        out[executor] = tmp_path / executor
        address = ray_cluster if executor == "ray" else None  # connect to the cluster
        done, runs, report = run_sweep(cells, out[executor],
                                       SweepOptions(executor, workers=2, threads=1,
                                                    address=address),
                                       log=lines.append)
        assert [c.status for c in done] == ["complete"] * 4
        assert report.is_file() and len(runs.runs) == 4
        state = json.loads((out[executor] / "sweep.json").read_text())
        assert [c["status"] for c in state["cells"]] == ["complete"] * 4
        cells = plan(["naive", "ewc"], ["glyphs"], [0, 1], {}, _base())  # fresh state
    for cell in cells:
        for a, b in zip(_records(out["local"] / cell.id), _records(out["ray"] / cell.id)):
            pd.testing.assert_frame_equal(a, b)
    assert not _records(out["local"] / "naive-glyphs-s0")[0].equals(
        _records(out["local"] / "naive-glyphs-s1")[0])  # the seed matters
    # the same sweep again: nothing runs twice
    started = time.perf_counter()
    again, _, _ = run_sweep(cells, out["local"], SweepOptions("local", workers=2, threads=1),
                            log=lines.append)
    assert [c.status for c in again] == ["skipped"] * 4
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_failed_runs_are_recorded_retried_and_the_sweep_goes_on(tmp_path, pretrained_backbone):
    maker = tmp_path / "maker.py"
    maker.write_text(
        "import torch\n"
        "def make(fail=0):\n"
        "    if fail:\n"
        "        raise RuntimeError('this stream fails on purpose')\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.rand(40, 3, 32, 32, generator=g)\n"
        "    y = torch.arange(40) % 4\n"
        "    return {'train': (x, y), 'experiences': 2}\n")
    cells = plan(["naive"], [f"{maker}:make"], [0], parse_grid(["stream.fail=0,1"]),
                 RunSpec(train={"epochs": 1}))
    lines: list[str] = []
    done, runs, report = run_sweep(cells, tmp_path / "out",
                                   SweepOptions("local", workers=1, threads=1, retries=2),
                                   log=lines.append)
    ok, bad = done
    assert ok.status == "complete" and ok.attempts == 1
    assert bad.status == "failed" and bad.attempts == 3
    assert bad.reasons == [f"UserError: {maker}:make raised RuntimeError: this stream "
                           "fails on purpose"] * 3  # the stream function named
    assert report.is_file() and len(runs.runs) == 1
    state = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert state["cells"][1]["reasons"] == bad.reasons
    assert any("failed, trying again (1/2)" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_killed_worker_is_retried_and_the_sweep_completes(executor, tmp_path,
                                                          pretrained_backbone):
    """SIGKILL the process running a cell once it has checkpointed an experience: the sweep
    records the death, resumes that run from its checkpoint, and completes."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clplatform.app.cli", "sweep", "--strategies", "naive,replay",
         "--seeds", "0", *TINY, "--epochs", "3", "--executor", executor, "--workers", "2",
         "--threads-per-run", "1", "--retries", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        for run_json in out.glob("replay-*/run.json"):
            try:
                record = json.loads(run_json.read_text())
            except (OSError, ValueError):
                continue
            if record["status"] == "running" and \
                    (run_json.parent / "checkpoint.pt").is_file():
                victim = record["pid"]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert victim is not None, "the run finished before it could be killed"
    assert proc.returncode == 0, stderr
    state = {c["id"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    killed = state["replay-glyphs-s0"]
    assert killed["status"] == "complete" and killed["attempts"] == 2
    assert killed["reasons"][0].startswith("worker process died")
    assert state["naive-glyphs-s0"]["status"] == "complete"
    record = json.loads((out / "replay-glyphs-s0" / "run.json").read_text())
    assert record["status"] == "complete" and len(record["resumed"]) == 1
    assert (out / "comparison.html").is_file() and "replay" in stdout


@pytest.mark.parametrize("preset", ["sema-table1", "sema-appendix"])
def test_a_preset_plans_its_paper_comparison(preset):
    """Every strategy of the paper's table is registered and every cell validates, with
    each strategy's own (paper) defaults."""
    from clplatform.app.presets import PRESETS, preset_strategies
    names = preset_strategies(preset)
    assert names == list(PRESETS[preset].strategies) and "sema" in names
    cells = plan(names, ["glyphs"], [0, 1, 2], {}, _base())
    assert sorted(c.id for c in cells) == sorted(
        f"{n}-glyphs-s{seed}" for n in names for seed in (0, 1, 2))
    assert all(c.spec.strategy_options == {} for c in cells)


def test_sweep_command_line_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    for args, message in [
        (["--strategies", "nope"], "unknown strategy 'nope'"),
        (["--strategies", "naive", "--executor", "slurm"], "unknown --executor 'slurm'"),
        (["--strategies", "naive", "--seeds", "a"], "--seeds: 'a' is not an integer"),
        (["--strategies", "naive", "--grid", "lr"], "--grid expects key=v1,v2"),
        (["--strategies", "naive", "--set", "ewc_lambda=1"], "--set ewc_lambda"),
        (["--preset", "nope"], "unknown preset 'nope'; valid presets: sema-table1"),
        ([], "give either --strategies or --preset"),
        (["--strategies", "naive", "--preset", "sema-table1"], "give either"),
    ]:
        result = CliRunner().invoke(cli, ["sweep", *args, "--out", str(tmp_path / "s")],
                                    prog_name="clplat")
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().startswith("clplat: error:") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_node_without_the_sweep_folder_sends_the_run_back(tmp_path, pretrained_backbone):
    """What a Ray task does on a node that cannot see OUT: the run is made in a scratch
    folder and its files come back (the driver writes them into OUT)."""
    from clplatform.app.sweep import _spec_dict, _write_files, ray_cell
    from clplatform.store import load_run
    cell = plan(["naive"], ["glyphs"], [0], {}, _base())[0]
    target = tmp_path / "out" / cell.id
    result = ray_cell(_spec_dict(cell.spec), str(target), 1,
                      shared_check=str(tmp_path / "not-visible"))
    assert result["status"] == "complete" and not target.exists()
    assert {"run.json", "config.json", "accuracy.csv", "experiences.csv",
            "summary.json"} <= set(result["files"])
    _write_files(target, result["files"])
    run = load_run(target)
    assert run.status == "complete" and len(run.experiences) == 3
    # a second attempt at a complete run is skipped, wherever it runs
    again = ray_cell(_spec_dict(cell.spec), str(target), 1,
                     shared_check=str(tmp_path / "not-visible"), files=result["files"])
    assert again["status"] == "skipped"


def test_every_cell_gets_the_training_checks_of_a_run():
    """The [train] settings of each cell (base options and grid values) are validated like
    a run's, before anything starts."""
    for strategies, grid, train, message in [
        (["naive"], [], {"lr": "nan"}, "invalid value 'nan' for lr"),
        (["naive"], ["lr=abc,0.1"], {}, "invalid value 'abc' for lr"),
        (["naive", "ewc"], ["epochs=1,0"], {},
         "invalid value 0 for epochs ([train]): must be >= 1"),
        (["naive"], [], {"epochs": "0"}, "must be >= 1"),
        (["naive"], [], {"batch_size": "0"}, "invalid value 0 for batch_size"),
        (["naive"], [], {"out": ""}, "--out is empty"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            plan(strategies, ["glyphs"], [0], parse_grid(grid), _base(**train))
    with pytest.raises(UserError, match=re.escape("invalid value -1 for seed")):
        plan(["naive"], ["glyphs"], [-1], {}, _base())
    # a strategy that takes no epochs: --epochs means nothing to it, 0 included
    cells = plan(["simplecil", "sema"], ["glyphs"], [0], {}, _base(epochs="0"))
    assert len(cells) == 2


def test_sweep_command_validates_training_settings_before_anything(tmp_path):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    for args, message in [
        (["--lr", "nan"], "invalid value 'nan' for lr"),
        (["--seeds", "0,-1"], "invalid value -1 for seed"),
        (["--grid", "lr=abc,0.1"], "invalid value 'abc' for lr"),
        (["--epochs", "0"], "invalid value 0 for epochs"),
        (["--grid", "epochs=0,1"], "invalid value 0 for epochs"),
    ]:
        result = CliRunner().invoke(cli, ["sweep", "--strategies", "naive", *args,
                                          "--out", str(tmp_path / "s")], prog_name="clplat")
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert message in result.stderr
        assert not (tmp_path / "s").exists()
    result = CliRunner().invoke(cli, ["sweep", "--strategies", "naive", "--out", ""],
                                prog_name="clplat")
    assert result.exit_code == 2 and "--out is empty" in result.stderr
    assert not any(Path.cwd().glob("sweep.json"))


_ORPHAN_SCRIPT = """
import os, sys, time
from pathlib import Path
from clplatform.app.runner import RunSpec
from clplatform.app.sweep import Cell, LocalExecutor

def task(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(300)
    return {"status": "complete", "reason": None}

if __name__ == "__main__":
    LocalExecutor(1, task=task).run([(Cell("c", RunSpec(), {}), {"path": sys.argv[1]})],
                                    lambda cell, result: None)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped is dead too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_local_workers_die_with_a_killed_driver(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(_ORPHAN_SCRIPT)
    pid_file = tmp_path / "worker.pid"
    root = str(Path(__file__).parent.parent)  # this checkout's clplatform
    driver = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    worker = None
    try:
        deadline = time.time() + 120
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.time() < deadline and driver.poll() is None, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.time() + 30
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its driver"
    finally:
        driver.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_cell_still_running_elsewhere_is_not_restarted(tmp_path):
    """A sweep run again beside an orphan of a killed driver: the cell's lock refuses it
    (nothing is deleted, nothing trains twice)."""
    from clplatform.store import run_lock
    from clplatform.app.sweep import _spec_dict, run_cell
    cell = plan(["naive"], ["glyphs"], [0], {}, _base())[0]
    run_dir = tmp_path / cell.id
    run_dir.mkdir()
    record = {"id": cell.id, "status": "running", "pid": os.getpid(), "host": "h"}
    (run_dir / "run.json").write_text(json.dumps(record))
    config = {"strategy": {"name": "naive"}, "backbone": {"name": "vit-glyphs"},
              "stream": {"name": "glyphs", "experiences_in_stream": 10},
              "train": {"seed": 0, "epochs": 1, "batch_size": 32, "lr": 0.003}}
    (run_dir / "config.json").write_text(json.dumps(config))  # as a real run writes first
    with run_lock(run_dir):  # the orphan, training its first experience
        result = run_cell(_spec_dict(cell.spec), str(run_dir), 1)
    assert result["status"] == "failed"
    assert f"run {run_dir} is in use by another process (pid {os.getpid()} on h)" \
        in result["reason"]
    assert json.loads((run_dir / "run.json").read_text()) == record
