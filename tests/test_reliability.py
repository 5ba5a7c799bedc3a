"""Reliability: signals stop a run cleanly and keep what finished, killed runs show as stale,
the same seed gives the same records, concurrent runs never share a directory."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import clplatform
from clplatform.store import list_runs

from conftest import TINY_GLYPHS

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clplatform.cli", "run", "--strategy",
                             "naive", *TINY, "--out", str(out), "--quiet", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pattern: str, folder: Path, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{pattern} never appeared under {folder}")


def test_sigterm_stops_at_a_safe_point_and_keeps_finished_experiences(tmp_path,
                                                                      pretrained_backbone):
    proc = _start(tmp_path, "--epochs", "10")
    _wait_for("*/experiences.csv", tmp_path)  # experience 0 is finished
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "SIGTERM received: stopping at the next safe point" in err
    assert err.strip().splitlines()[-1] == "clplat: interrupted by SIGTERM"
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["reason"] == "interrupted by SIGTERM"
    run = clplatform.load_run(run_dir)
    done = list(run.experiences["train_exp"])
    assert 1 <= len(done) < 3 and done == list(range(len(done)))
    # the accuracy records hold exactly the finished experiences (and the initial model)
    assert sorted(run.accuracy["train_exp"].unique()) == [-1] + done
    assert (run.accuracy.groupby("train_exp").size() == 3).all()
    table = list_runs([tmp_path])
    assert list(table["status"]) == ["interrupted"] and table["experiences"][0] == len(done)


def test_second_sigint_stops_at_once(tmp_path, pretrained_backbone):
    proc = _start(tmp_path, "--epochs", "200")
    _wait_for("*/run.json", tmp_path)
    time.sleep(3)  # training has started
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    record = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert record["status"] == "interrupted" and "SIGINT" in record["reason"]


def test_killed_run_shows_as_stale(tmp_path, pretrained_backbone):
    proc = _start(tmp_path, "--epochs", "200")
    _wait_for("*/run.json", tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    table = list_runs([tmp_path])
    assert list(table["status"]) == ["stale"]
    from click.testing import CliRunner

    from clplatform.cli import cli
    shown = CliRunner().invoke(cli, ["runs", str(tmp_path)])
    assert shown.exit_code == 0 and "stale" in shown.output
    listed = json.loads(CliRunner().invoke(cli, ["runs", str(tmp_path), "--json"]).output)
    assert listed[0]["status"] == "stale"


TIMING = ("seconds", "memory")


def _records(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    exps = run.experiences[[c for c in run.experiences.columns
                            if not any(t in c for t in TIMING)]]
    return run.accuracy, exps


@pytest.mark.parametrize("strategy, stream, options", [
    ("naive", "glyphs", TINY_GLYPHS),
    ("replay", "glyphs", TINY_GLYPHS),
    ("sema", "glyphs", TINY_GLYPHS),
    ("qprompt", "glyphs", TINY_GLYPHS),
    ("lftl", "glyphs-domains", {"domains": ("sans", "mono"), "samples_per_class": 4,
                                "test_samples_per_class": 2}),
])
def test_same_seed_same_records(strategy, stream, options, tmp_path, pretrained_backbone):
    kwargs = dict(stream_options=options, seed=3, out=tmp_path)
    if strategy not in ("sema", "lftl"):
        kwargs["epochs"] = 1
    if strategy == "sema":
        kwargs["strategy_options"] = {"functional_epochs": 1, "rd_epochs": 2}
    if strategy == "lftl":
        kwargs["strategy_options"] = {"rounds": 2, "budget_per_round": 0.03,
                                      "source_epochs": 2}
    first, second = (clplatform.run(strategy, stream, **kwargs) for _ in range(2))
    assert first.path != second.path
    for a, b in zip(_records(first), _records(second)):
        pd.testing.assert_frame_equal(a, b)
    if strategy == "naive":  # and the seed matters
        other = clplatform.run(strategy, stream, **{**kwargs, "seed": 4})
        assert not _records(other)[0].equals(_records(first)[0])


def test_concurrent_runs_into_one_folder_never_share_a_directory(tmp_path,
                                                                pretrained_backbone):
    procs = [_start(tmp_path, "--epochs", "1") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    dirs = {json.loads(o[0])["run_dir"] for o in outputs}
    assert len(dirs) == 2 and len(list(tmp_path.iterdir())) == 2
    assert all(clplatform.load_run(d).status == "complete" for d in dirs)


def test_disk_full_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from clplatform.cache import write_json
    from clplatform.errors import UserError
    target = tmp_path / "run.json"
    write_json(target, {"status": "running"})

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match=f"cannot write {target}: No space left on device"):
        write_json(target, {"status": "complete"})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


def test_stop_request_first_signal_waits_second_stops_at_once():
    from clplatform.interrupt import RunInterrupted, StopRequest
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        stop.check()                               # nothing requested: no-op
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM    # the run goes on to a safe point
        with pytest.raises(RunInterrupted) as second:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)                          # the handler runs between bytecodes
        assert second.value.exit_code == 143
        with pytest.raises(RunInterrupted):
            stop.check()
    assert signal.getsignal(signal.SIGTERM) is before  # the Python API restores handlers


def _records_equal(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a / "accuracy.csv"), pd.read_csv(b / "accuracy.csv"))
    ea, eb = (pd.read_csv(p / "experiences.csv") for p in (a, b))
    keep = [c for c in ea.columns if not any(t in c for t in TIMING)]
    pd.testing.assert_frame_equal(ea[keep], eb[keep])


LFTL_STREAM = ["--stream", "glyphs-domains", "--stream-opt", "domains=sans,mono,serif",
               "--stream-opt", "samples_per_class=4", "--stream-opt", "test_samples_per_class=2"]
# what each strategy runs with in the kill-and-resume test (small, but every state it keeps
# between experiences is exercised: buffers, importances, adapters, codebooks, ...)
RESUME_ARGS = {
    "naive": ["--epochs", "3"], "linear-probe": ["--epochs", "3"], "simplecil": [],
    "ewc": ["--epochs", "2", "--set", "ewc_lambda=5"],
    "si": ["--epochs", "2", "--set", "si_lambda=100"], "lwf": ["--epochs", "2"],
    "replay": ["--epochs", "2", "--set", "mem_size=20"],
    "agem": ["--epochs", "2", "--set", "patterns_per_exp=8", "--set", "sample_size=8"],
    "cumulative": ["--epochs", "2"],
    "sema": ["--set", "functional_epochs=1", "--set", "rd_epochs=2", "--set", "threshold=0"],
    "prompt": ["--epochs", "2"],
    "qprompt": ["--epochs", "2", "--set", "min_interval=2", "--set", "kl_threshold=0"],
    "lftl": ["--set", "rounds=2", "--set", "budget_per_round=0.03",
             "--set", "source_epochs=2"],
}
SLOW_RESUME = {"linear-probe", "simplecil", "si", "lwf", "agem", "cumulative", "prompt"}


def _kill_and_resume(strategy: str, kill_after: int, tmp_path: Path) -> Path:
    """SIGKILL once `kill_after` experiences are checkpointed, resume, compare with an
    uninterrupted run of the same seed; returns the resumed run's directory."""
    stream = LFTL_STREAM if strategy == "lftl" else TINY
    cmd = [sys.executable, "-m", "clplatform.cli", "run", "--strategy", strategy, *stream,
           *RESUME_ARGS[strategy], "--seed", "1", "--quiet", "--json"]
    reference = json.loads(subprocess.run(cmd + ["--out", str(tmp_path / "ref")],
                                          capture_output=True, text=True, check=True).stdout)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    run_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/experiences.csv"))
        if found and (found[0].parent / "checkpoint.pt").is_file() and \
                len(pd.read_csv(found[0])) >= kill_after:
            run_dir = found[0].parent
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert run_dir is not None, "the run ended before it could be killed"
    assert list_runs([run_dir])["status"][0] == "stale"
    done = subprocess.run([sys.executable, "-m", "clplatform.cli", "run", "--resume",
                           str(run_dir), "--quiet", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.replace("does not use", "")
    _records_equal(Path(reference["run_dir"]), run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and len(record["resumed"]) == 1
    return run_dir


@pytest.mark.parametrize("strategy, kill_after", [
    ("naive", 2), ("ewc", 1), ("replay", 2), ("sema", 1), ("qprompt", 2), ("lftl", 1)] +
    [pytest.param(s, 1, marks=pytest.mark.slow) for s in ["naive", *sorted(SLOW_RESUME)]])
def test_killed_run_resumes_to_the_same_records(strategy, kill_after, tmp_path,
                                                pretrained_backbone):
    _kill_and_resume(strategy, kill_after, tmp_path)


def test_every_strategy_can_be_resumed():
    from clplatform.registry import STRATEGIES
    builtin = {n for n in STRATEGIES.names() if n not in ("joint", "partial-finetune")}
    resumable = {n for n in builtin if STRATEGIES.get(n).extra.get("resumable")}
    assert resumable == builtin == set(RESUME_ARGS)


def test_resume_refuses_what_it_cannot_do(tmp_path, pretrained_backbone):
    from click.testing import CliRunner

    from clplatform.cli import cli

    def bad(*args):
        result = CliRunner().invoke(cli, ["run", *map(str, args)], prog_name="clplat")
        assert result.exit_code == 2, result.output
        return result.stderr.strip()
    run = clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                         out=tmp_path)
    assert "is complete: nothing to resume" in bad("--resume", run.path)
    record = json.loads((run.path / "run.json").read_text())
    (run.path / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    assert "give no other run options" in bad("--resume", run.path, "--epochs", "2")
    (run.path / "checkpoint.pt").write_bytes(b"garbage")
    assert "corrupt checkpoint" in bad("--resume", run.path)
    (run.path / "checkpoint.pt").unlink()
    assert "no checkpoint in" in bad("--resume", run.path)
    config = json.loads((run.path / "config.json").read_text())
    config["strategy"] = {"name": "joint"}
    (run.path / "config.json").write_text(json.dumps(config))
    assert "strategy 'joint' trains once on the whole stream" in bad("--resume", run.path)
    assert f"not a directory: {tmp_path / 'missing'}" in bad("--resume", tmp_path / "missing")
