"""Loggers (``--log tensorboard``, ``--log wandb``): the files they write, read back, hold
the run's records and per-epoch losses; stdout stays one JSON object; bad or missing
loggers are one line before a run starts; a resume does not log a step twice; a sweep
passes --log to its runs."""
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import clplatform
from clplatform import checkpoint
from clplatform.app.cli import cli
from clplatform.interrupt import RunInterrupted

from conftest import TINY_GLYPHS

TINY = [a for k, v in TINY_GLYPHS.items() for a in ("--stream-opt", f"{k}={v}")]
EPOCHS = 2
EXPERIENCES = TINY_GLYPHS["experiences"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


# ----------------------------------------------------------------------------- reading back
def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the event files in ``folder``, as TensorBoard shows them
    (purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's transaction log,
    LevelDB's log format (32 KiB blocks; each chunk: CRC-32, length, type — full, first,
    middle, last) after a 7-byte header, each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pos += 7
        parts += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # full or last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def wandb_history(path: Path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in record.history.item}
            for record in wandb_records(path) if record.WhichOneof("record_type") == "history"]


def wandb_scalars(history: list[dict], axis: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(value of ``axis``, value)], like :func:`tensorboard_scalars`."""
    scalars: dict[str, list] = {}
    for row in history:
        if axis in row:
            for key, value in row.items():
                if not key.startswith("_") and key != axis:
                    scalars.setdefault(key, []).append((row[axis], value))
    return scalars


def check_records(run, experience_scalars, loss_scalars, progress_losses=None):
    """The logged scalars are the run's records: a[i, j] at step i + 1 (0: before
    training), the summary after the last experience, one loss per epoch."""
    accuracy = run.accuracy
    for j in range(EXPERIENCES):
        logged = experience_scalars[f"accuracy/experience_{j}"]
        expected = accuracy[accuracy["eval_exp"] == j].sort_values("train_exp")
        assert [step for step, _ in logged] == [t + 1 for t in expected["train_exp"]]
        assert [v for _, v in logged] == pytest.approx(list(expected["accuracy"]), abs=1e-6)
    steps = [step for step, _ in experience_scalars["metrics/final_accuracy"]]
    assert steps == list(range(1, EXPERIENCES + 1))
    for name in ("final_accuracy", "average_incremental_accuracy", "forgetting", "bwt"):
        assert experience_scalars[f"metrics/{name}"][-1][1] == pytest.approx(
            run.summary[name], abs=1e-6)
    assert [step for step, _ in experience_scalars["metrics/forgetting"]] == [2, 3]  # not
    # defined after one experience: left out
    losses = loss_scalars["train/loss"]
    assert len(losses) == EPOCHS * EXPERIENCES
    steps = [step for step, _ in losses]
    assert steps == sorted(set(steps)) and steps[0] > 0  # iterations, increasing
    assert all(0 < v < 50 for _, v in losses)
    if progress_losses is not None:  # each experience's last epoch, as the progress said
        last = [v for _, v in losses][EPOCHS - 1::EPOCHS]
        assert last == pytest.approx(progress_losses, abs=1e-4)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, pretrained_backbone):
    """``clplat run --log tensorboard --log wandb --json`` in a process of its own (W&B
    writes from a service process: stdout is checked as a user sees it)."""
    out = tmp_path_factory.mktemp("logged")
    result = subprocess.run(
        [sys.executable, "-m", "clplatform", "run", "--strategy", "naive", *TINY,
         "--epochs", str(EPOCHS), "--out", str(out), "--log", "tensorboard",
         "--log", "wandb", "--json"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items()  # offline, no error reporting
             if k not in ("WANDB_MODE", "WANDB_ERROR_REPORTING")})
    assert result.returncode == 0, result.stderr
    return result


def test_json_stdout_stays_one_object_with_loggers_on(logged_run):
    document = json.loads(logged_run.stdout)  # nothing else on stdout
    assert set(document) == {"run_dir", "summary"}
    assert "wandb" not in logged_run.stderr.lower()  # silent
    run = clplatform.load_run(document["run_dir"])
    assert run.config["loggers"] == ["tensorboard", "wandb"]


def _progress_losses(stderr: str) -> list[float]:
    return [float(x) for x in re.findall(r"trained: .*loss (\d+\.\d+)", stderr)]


def test_tensorboard_event_files_hold_the_records(logged_run):
    run = clplatform.load_run(json.loads(logged_run.stdout)["run_dir"])
    root = run.path / "tensorboard"
    check_records(run, tensorboard_scalars(root / "experiences"),
                  tensorboard_scalars(root / "training"), _progress_losses(logged_run.stderr))


def test_wandb_offline_run_holds_the_records(logged_run):
    run = clplatform.load_run(json.loads(logged_run.stdout)["run_dir"])
    (path,) = (run.path / "wandb").glob("offline-run-*/run-*.wandb")  # offline: no server
    history = wandb_history(path)
    check_records(run, wandb_scalars(history, "experiences_trained"),
                  wandb_scalars(history, "iteration"), _progress_losses(logged_run.stderr))
    config = next(r.run.config for r in wandb_records(path)
                  if r.WhichOneof("record_type") == "run")
    keys = {item.key: json.loads(item.value_json) for item in config.update}
    assert keys["strategy"]["name"] == "naive" and keys["train"]["epochs"] == EPOCHS
    start = json.loads((path.parent / "logs" / "debug-core.log").read_text().splitlines()[0])
    assert start["msg"] == "main: starting server" and start["disable-analytics"] is True


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--log", "foo"], "--log foo: unknown logger; choose from tensorboard, wandb"),
    (["--log", "tensorboard,mlflow"], "--log mlflow: unknown logger"),
])
def test_an_unknown_logger_is_one_line_and_leaves_no_run(args, message, tmp_path):
    result = invoke("run", "--strategy", "naive", *TINY, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clplat: error: {message}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("logger, module", [("wandb", "wandb"),
                                            ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_logger_package_is_one_line_before_the_run(logger, module, tmp_path,
                                                             monkeypatch):
    import clplatform.evaluator  # noqa: F401  (Avalanche, which imports both itself, first)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    result = invoke("run", "--strategy", "naive", *TINY, "--out", tmp_path / "out",
                    "--log", logger)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(
        f"clplat: error: --log {logger}: cannot import {logger} (ModuleNotFoundError")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_logger_that_cannot_start_is_one_line_and_leaves_no_run(tmp_path, monkeypatch,
                                                                  pretrained_backbone):
    """W&B online without a key (the user's WANDB_MODE): the TensorBoard writer already
    open is closed and the run directory removed."""
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login()")
    monkeypatch.setattr(wandb, "init", refuse)
    result = invoke("run", "--strategy", "naive", *TINY, "--out", tmp_path / "out",
                    "--log", "tensorboard,wandb")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "clplat: error: --log wandb: cannot start a W&B run: UsageError: api_key not "
        "configured (no-tty). call wandb.login()"]
    assert not any((tmp_path / "out").iterdir())


def _check_sweep_run(run, strategy):
    assert run.config["strategy"]["name"] == strategy
    assert run.config["loggers"] == ["tensorboard"]
    scalars = tensorboard_scalars(run.path / "tensorboard" / "experiences")
    last = run.accuracy[run.accuracy["train_exp"] == run.accuracy["train_exp"].max()]
    assert scalars["accuracy/experience_0"][-1][1] == pytest.approx(
        float(last[last["eval_exp"] == 0]["accuracy"].iloc[0]), abs=1e-6)


def test_a_sweep_checks_and_passes_its_loggers(tmp_path, pretrained_backbone):
    """Checked before anything runs; every cell's spec carries them to run_cell, the function
    both executors call in their worker (here in this process)."""
    from clplatform.app.spec import make_spec
    from clplatform.app.sweep import _spec_dict, plan, run_cell
    result = invoke("sweep", "--strategies", "naive", "--log", "bar", *TINY,
                    "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "--log bar: unknown logger" in result.stderr
    assert not (tmp_path / "bad").exists()
    base = make_spec(stream_options=TINY_GLYPHS, epochs=1, loggers=("tensorboard",))
    cells = plan(["naive", "simplecil"], ["glyphs"], [0], {}, base)
    assert [c.spec.loggers for c in cells] == [["tensorboard"]] * 2
    result = run_cell(_spec_dict(cells[1].spec), str(tmp_path / cells[1].id), threads=1)
    assert result["status"] == "complete", result
    _check_sweep_run(clplatform.load_run(tmp_path / cells[1].id), "simplecil")


@pytest.mark.slow
def test_a_two_run_sweep_logs_every_run(tmp_path, pretrained_backbone):
    """The command line, local executor (a process per run): 40 s on 2 busy cores."""
    result = invoke("sweep", "--strategies", "naive,simplecil", "--epochs", "1",
                    "--log", "tensorboard", *TINY, "--workers", "2",
                    "--threads-per-run", "1", "--out", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    runs = sorted((clplatform.load_run(p) for p in (tmp_path / "sweep").iterdir()
                   if p.is_dir()), key=lambda r: r.config["strategy"]["name"])
    for run, strategy in zip(runs, ["naive", "simplecil"], strict=True):
        _check_sweep_run(run, strategy)


# ----------------------------------------------------------------------------- resume
def test_a_resume_continues_in_the_same_logger_folders_without_a_step_twice(
        tmp_path, pretrained_backbone, monkeypatch):
    """Stopped after experience 1 was logged but before its checkpoint: the resume trains
    experience 1 again; TensorBoard shows each step once, W&B continues the same run id."""
    save = checkpoint.save

    def stop_before_second_checkpoint(run_dir, strategy, evaluator, done):
        if done == 1:
            raise RunInterrupted(signal.SIGTERM)
        save(run_dir, strategy, evaluator, done)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save", stop_before_second_checkpoint)
        with pytest.raises(RunInterrupted):
            clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=EPOCHS,
                           out=tmp_path, loggers=["tensorboard", "wandb"])
    (run_dir,) = tmp_path.iterdir()
    root = run_dir / "tensorboard"
    before = tensorboard_scalars(root / "training")["train/loss"]
    assert len(before) == 2 * EPOCHS  # experience 1 was logged
    run = clplatform.resume(run_dir)
    assert run.status == "complete" and run.config["loggers"] == ["tensorboard", "wandb"]
    check_records(run, tensorboard_scalars(root / "experiences"),
                  tensorboard_scalars(root / "training"))
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name  # one run id, two processes
    resumed = wandb_history(files[1])
    assert [r["experiences_trained"] for r in resumed if "experiences_trained" in r] == [2, 3]
