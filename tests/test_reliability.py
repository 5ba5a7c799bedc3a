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

from conftest import TINY_GLYPHS, stopped_after

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clplatform.app.cli", "run", "--strategy",
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

    from clplatform.app.cli import cli
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


@pytest.mark.slow  # 27 s: the default suite keeps to its 15 minutes
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
    "inflora": ["--epochs", "2", "--lr", "0.005"],
    "prompt": ["--epochs", "2"],
    "dualprompt": ["--epochs", "2"],
    "l2p": ["--epochs", "2"],
    "qprompt": ["--epochs", "2", "--set", "min_interval=2", "--set", "kl_threshold=0"],
    "rlp": ["--epochs", "2", "--set", "rank=2", "--set", "quantizer=kmeans",
            "--set", "min_interval=2", "--set", "kl_threshold=0"],
    "coda-prompt": ["--epochs", "2", "--batch-size", "16"],
    "lftl": ["--set", "rounds=2", "--set", "budget_per_round=0.03",
             "--set", "source_epochs=2"],
    "aper": ["--set", "epochs=2"],
    "ranpac": ["--set", "epochs=2", "--set", "M=500"],
    "ease": ["--set", "epochs=2"],
    "linear-adapter": ["--epochs", "2", "--set", "adapt=every"],
    "lora": ["--epochs", "2"],
    "comp-lora": ["--epochs", "2", "--set", "adapt=every", "--set", "subspace=accumulate"],
    "consolidator": ["--epochs", "2", "--set", "adapt=every"],
    "rmm": ["--epochs", "2"],
}
SLOW_RESUME = {"linear-probe", "simplecil", "si", "lwf", "agem", "cumulative", "prompt"}


def _kill_and_resume(strategy: str, kill_after: int, tmp_path: Path) -> Path:
    """SIGKILL once `kill_after` experiences are checkpointed, resume, compare with an
    uninterrupted run of the same seed; returns the resumed run's directory."""
    stream = LFTL_STREAM if strategy == "lftl" else TINY
    cmd = [sys.executable, "-m", "clplatform.app.cli", "run", "--strategy", strategy, *stream,
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
    done = subprocess.run([sys.executable, "-m", "clplatform.app.cli", "run", "--resume",
                           str(run_dir), "--quiet", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.replace("does not use", "")
    _records_equal(Path(reference["run_dir"]), run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and len(record["resumed"]) == 1
    return run_dir


@pytest.mark.parametrize("strategy, kill_after", [
    ("sema", 1)] +
    # about 40 s each: in the slow suite too, so that the default one keeps to its 15 minutes
    [pytest.param(s, k, marks=pytest.mark.slow) for s, k in [("naive", 2), ("ewc", 1)]] +
    # about 30 s each: in the slow suite, so that the default one keeps to its 15 minutes
    [pytest.param(s, k, marks=pytest.mark.slow) for s, k in [
        ("replay", 2), ("qprompt", 2), ("lftl", 1)]] +
    [pytest.param(s, 1, marks=pytest.mark.slow) for s in ["naive", *sorted(SLOW_RESUME)]] +
    # the SEMA paper's comparators (the default suite keeps to its 15 minutes)
    [pytest.param(s, k, marks=pytest.mark.slow) for s, k in [
        ("coda-prompt", 2), ("dualprompt", 1), ("l2p", 1), ("inflora", 2), ("aper", 1),
        ("ranpac", 1), ("ease", 1),
        # the low-rank and mergeable methods (issue 21)
        ("linear-adapter", 1), ("lora", 2), ("comp-lora", 1), ("consolidator", 1),
        ("rmm", 2), ("rlp", 2)]])
def test_killed_run_resumes_to_the_same_records(strategy, kill_after, tmp_path,
                                                pretrained_backbone):
    _kill_and_resume(strategy, kill_after, tmp_path)


def test_every_strategy_can_be_resumed():
    from clplatform.registry import STRATEGIES
    builtin = {n for n in STRATEGIES.names() if n not in ("joint", "partial-finetune")}
    resumable = {n for n in builtin if STRATEGIES.get(n).traits.resumable}
    assert resumable == builtin == set(RESUME_ARGS)


def test_resume_refuses_what_it_cannot_do(tmp_path, pretrained_backbone):
    from click.testing import CliRunner

    from clplatform.app.cli import cli

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


# ----------------------------------------------------------------------------- run lifecycle
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, pretrained_backbone) -> Path:
    """A real run stopped by a signal after its second experience (checkpoint of experience
    1 on disk), made with umask 022; tests take copies of it (``resumable_copy``)."""
    import shutil as _shutil  # noqa: F401

    out = tmp_path_factory.mktemp("interrupted")
    old_umask = os.umask(0o022)
    try:
        with stopped_after(1):
            clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1, out=out)
    finally:
        os.umask(old_umask)
    run_dir = next(out.iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    return run_dir


@pytest.fixture
def resumable_copy(interrupted_run, tmp_path) -> Path:
    import shutil
    return Path(shutil.copytree(interrupted_run, tmp_path / interrupted_run.name))


def _cli(*args):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    return CliRunner().invoke(cli, [*map(str, args)], prog_name="clplat")


def _refused(*args) -> str:
    """The one line of a command that must end with exit status 2."""
    result = _cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    return lines[0]


def test_files_respect_the_umask(interrupted_run, tmp_path):
    """Atomic writes used to be 0600 whatever the umask (mkstemp), which broke shared caches
    and sweep folders."""
    import stat

    import torch

    from clplatform.cache import atomic_path, write_json
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in interrupted_run.iterdir()}
    assert {"run.json", "config.json", "accuracy.csv", "checkpoint.pt"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "w.pt") as tmp:  # torch.save's path (the weights cache)
            torch.save({"x": torch.zeros(2)}, tmp)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "w.pt").stat().st_mode) == 0o640


@pytest.mark.parametrize("damage, message", [
    ({}, "no 'experience' in it"),
    ("tensor", "holds a Tensor, not a checkpoint's dict"),
    ({"drop": "rng"}, "no 'rng' in it"),
    ({"drop": "evaluator"}, "no 'evaluator' in it"),
    ({"set": ("model", 3)}, "'model' is a int, not a dict"),
    ({"set": ("experience", "1")}, "'experience' is a str, not a int"),
    ({"set": ("experience", 7)}, "experience 7 is not one of the stream's 3"),
    ({"set": ("evaluator", {})}, "corrupt checkpoint"),
    ({"set": ("rng", {"torch": 1})}, "corrupt checkpoint"),
    ({"set": ("strategy", {"clock": []})}, "corrupt checkpoint"),
])
def test_resume_of_a_malformed_checkpoint_is_one_line_naming_it(damage, message,
                                                                resumable_copy):
    import torch
    path = resumable_copy / "checkpoint.pt"
    if damage == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        state = torch.load(path, weights_only=True) if damage else {}
        if "drop" in damage:
            del state[damage["drop"]]
        if "set" in damage:
            state[damage["set"][0]] = damage["set"][1]
        torch.save(state, path)
    before = (resumable_copy / "run.json").read_text()
    line = _refused("run", "--resume", resumable_copy)
    assert str(path) in line and message in line
    assert (resumable_copy / "run.json").read_text() == before  # nothing written


@pytest.mark.parametrize("damage, message", [
    (lambda c: {}, "corrupt file"),
    (lambda c: {**c, "strategy": "naive"}, "corrupt file"),
    (lambda c: {**c, "train": {"seed": 0}}, "corrupt file"),
    (lambda c: {**c, "train": {**c["train"], "lr": "fast"}},
     "'lr' must be a number >= 0, got 'fast'"),  # the records' schema (records.py)
    (lambda c: {**c, "stream": {**c["stream"], "experiences": -3}}, "experiences"),
])
def test_resume_with_a_damaged_config_is_one_line_naming_it(damage, message, resumable_copy):
    path = resumable_copy / "config.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    line = _refused("run", "--resume", resumable_copy)
    assert str(path) in line and message in line


def test_a_malicious_checkpoint_is_refused_in_one_line(resumable_copy, tmp_path):
    import torch
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"experience": 1, "model": Evil()}, resumable_copy / "checkpoint.pt")
    line = _refused("run", "--resume", resumable_copy)
    assert f"unsafe checkpoint {resumable_copy / 'checkpoint.pt'}" in line
    assert "system" in line and "weights_only" not in line
    assert not marker.exists()


def test_a_run_directory_in_use_is_refused(resumable_copy, tmp_path, pretrained_backbone):
    from clplatform.store import run_lock
    # another process holds the run (an flock: the same process opening it again conflicts)
    with run_lock(resumable_copy):
        line = _refused("run", "--resume", resumable_copy)
    assert f"run {resumable_copy} is in use by another process (pid " in line
    # a live run: its resume is refused, the run goes on
    proc = _start(tmp_path / "live", "--epochs", "30")  # experience 1 outlasts the check
    try:
        live = _wait_for("*/checkpoint.pt", tmp_path / "live").parent
        line = _refused("run", "--resume", live)
        assert f"is in use by another process (pid {proc.pid} on " in line
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=60)
    # dead: the OS released its lock, the run resumes (its record says it was resumed)
    record = json.loads((resumable_copy / "run.json").read_text())
    assert _cli("run", "--resume", resumable_copy, "--quiet").exit_code == 0
    after = json.loads((resumable_copy / "run.json").read_text())
    assert after["status"] == "complete" and after["started"] == record["started"]


_KILL_SCRIPT = """
import os, signal, sys
import clplatform, clplatform.store
from clplatform import cache
when = sys.argv[2]
write_json, replace = clplatform.store.write_json, os.replace
def killing_write_json(path, obj):
    if when == "before-complete" and path.name == "run.json" and obj["status"] == "complete":
        os.kill(os.getpid(), signal.SIGKILL)
    write_json(path, obj)
def killing_replace(src, dst):
    if when == "checkpoint" and str(dst).endswith("checkpoint.pt") and os.path.exists(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # the new checkpoint written, not renamed yet
    replace(src, dst)
clplatform.store.write_json = killing_write_json
os.replace = killing_replace
clplatform.run("naive", "glyphs", stream_options=%r, epochs=1, out=sys.argv[1])
"""


@pytest.mark.parametrize("when", ["checkpoint", "before-complete"])
def test_sigkill_around_checkpoint_writes_leaves_a_resumable_run(when, tmp_path,
                                                                 pretrained_backbone):
    from clplatform.cache import temp_files
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT % (TINY_GLYPHS,),
                           str(tmp_path), when], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = next(tmp_path.iterdir())
    assert list_runs([run_dir])["status"][0] == "stale"
    assert (run_dir / "checkpoint.pt").is_file()
    if when == "checkpoint":
        assert temp_files(run_dir, "checkpoint.pt")  # what the kill left
    done = _cli("run", "--resume", run_dir, "--quiet")
    assert done.exit_code == 0, (done.stderr, done.exception)
    run = clplatform.load_run(run_dir)
    assert run.status == "complete" and list(run.experiences["train_exp"]) == [0, 1, 2]
    assert not temp_files(run_dir) and not (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / ".reserve").exists()


class _FullDisk:
    """A disk that fills up: ``posix_fallocate`` (how every clplatform write reserves its
    space) fails with ENOSPC once ``full``; writing a file named ``fills`` fills it, and only
    removing the run's space reserve frees some."""

    def __init__(self, monkeypatch, fills: str | None, full: bool = False):
        import errno
        self.full, self.fills = full, fills
        allocate, unlink = os.posix_fallocate, os.unlink

        def fallocate(fd, offset, length):
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if self.fills and name.startswith(f".{self.fills}."):
                self.full = True
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return allocate(fd, offset, length)

        def remove(path, *args, **kwargs):
            if os.path.basename(path) == ".reserve":
                self.full = False
            return unlink(path, *args, **kwargs)
        monkeypatch.setattr(os, "posix_fallocate", fallocate)
        monkeypatch.setattr(os, "unlink", remove)


def test_disk_full_names_the_file_and_marks_the_run_failed(tmp_path, monkeypatch,
                                                           pretrained_backbone):
    from clplatform.cache import temp_files
    from clplatform.errors import UserError
    _FullDisk(monkeypatch, fills="checkpoint.pt")
    with pytest.raises(UserError, match=r"cannot write .*/checkpoint\.pt: No space left"):
        clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1, out=tmp_path)
    run_dir = next(tmp_path.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert "checkpoint.pt: No space left on device" in record["reason"]
    assert list_runs([run_dir])["reason"][0] == record["reason"]
    assert not temp_files(run_dir) and not (run_dir / ".reserve").exists()


def test_a_completely_full_disk_leaves_no_run_directory(tmp_path, monkeypatch,
                                                        pretrained_backbone):
    _FullDisk(monkeypatch, fills=None, full=True)
    line = _refused("run", "--strategy", "naive", *TINY, "--epochs", "1",
                    "--out", tmp_path / "runs", "--quiet")
    assert "No space left on device" in line and str(tmp_path / "runs") in line
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_internal_error_is_one_line_naming_its_traceback_file(tmp_path, monkeypatch,
                                                                 pretrained_backbone):
    from clplatform import metrics

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug in the metrics")
    monkeypatch.setattr(metrics, "summarize", broken)
    result = _cli("run", "--strategy", "naive", *TINY, "--epochs", "1", "--out", tmp_path,
                  "--quiet")
    run_dir = next(tmp_path.iterdir())
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"clplat: internal error: ZeroDivisionError: a bug in the metrics (full traceback in "
        f"{run_dir / 'traceback.txt'}; --debug prints it)"]
    text = (run_dir / "traceback.txt").read_text()
    assert text.startswith("Traceback") and "in broken" in text
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    # no run directory yet: the file goes to the cache folder; --debug prints the traceback
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("clplatform.app.runner.dry_run", broken)
    result = _cli("--debug", "run", "--dry-run")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    saved = list((tmp_path / "cache" / "errors").glob("clplat-traceback-*.txt"))
    assert len(saved) == 1 and "in broken" in saved[0].read_text()
    assert last == (f"clplat: internal error: ZeroDivisionError: a bug in the metrics "
                    f"(full traceback in {saved[0]})")


def test_an_eof_error_is_an_internal_error_not_an_interruption(tmp_path, monkeypatch):
    """click turns any EOFError (pickle's "Ran out of input", say) into Abort, which used
    to read "interrupted", exit 130."""
    def broken(*_args, **_kwargs):
        raise EOFError("Ran out of input")
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("clplatform.app.runner.dry_run", broken)
    result = _cli("run", "--dry-run")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "clplat: internal error: EOFError: Ran out of input (full traceback in ")
    assert "interrupted" not in result.stderr
