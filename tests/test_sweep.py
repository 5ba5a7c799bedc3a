"""Sweeps: grid expansion and validation, the local and Ray executors give identical records,
failed runs are recorded and retried, a killed worker does not stop the sweep, a second run
of the same sweep skips what is complete."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from clplatform.errors import UserError
from clplatform.runner import RunSpec
from clplatform.sweep import SweepOptions, parse_grid, plan, run_sweep

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
    assert bad.reasons == ["RuntimeError: this stream fails on purpose"] * 3
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
        [sys.executable, "-m", "clplatform.cli", "sweep", "--strategies", "naive,replay",
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


def test_sweep_command_line_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from clplatform.cli import cli
    for args, message in [
        (["--strategies", "nope"], "unknown strategy 'nope'"),
        (["--strategies", "naive", "--executor", "slurm"], "unknown --executor 'slurm'"),
        (["--strategies", "naive", "--seeds", "a"], "--seeds: 'a' is not an integer"),
        (["--strategies", "naive", "--grid", "lr"], "--grid expects key=v1,v2"),
        (["--strategies", "naive", "--set", "ewc_lambda=1"], "--set ewc_lambda"),
    ]:
        result = CliRunner().invoke(cli, ["sweep", *args, "--out", str(tmp_path / "s")],
                                    prog_name="clplat")
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().startswith("clplat: error:") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_node_without_the_sweep_folder_sends_the_run_back(tmp_path, pretrained_backbone):
    """What a Ray task does on a node that cannot see OUT: the run is made in a scratch
    folder and its files come back (the driver writes them into OUT)."""
    from clplatform.sweep import _spec_dict, _write_files, ray_cell
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
