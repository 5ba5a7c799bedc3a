import json

import pandas as pd
import pytest

import clplatform
from clplatform.errors import UserError
from clplatform.metrics import summarize
from clplatform.store import new_run_dir

from conftest import TINY_GLYPHS


def test_python_api_run_and_load_run_agree(runs_dir, pretrained_backbone):
    run = clplatform.run(strategy="lwf", stream="glyphs", stream_options=TINY_GLYPHS,
                         epochs=1, seed=3, out=runs_dir, strategy_options={"alpha": 0.5})
    loaded = clplatform.load_run(run.path)
    assert loaded.config == run.config and loaded.summary == run.summary
    pd.testing.assert_frame_equal(loaded.accuracy, run.accuracy)
    assert list(loaded.accuracy.columns[:4]) == ["train_exp", "eval_exp", "accuracy",
                                                 "class_mean_accuracy"]
    assert len(loaded.experiences) == 3
    assert loaded.config["strategy"] == {"name": "lwf", "alpha": 0.5, "temperature": 2.0}
    assert loaded.config["train"]["seed"] == 3 and loaded.config["train"]["epochs"] == 1
    assert loaded.record["status"] == "complete" and loaded.record["ended"]
    assert set(loaded.record["versions"]) >= {"torch", "avalanche-lib", "timm", "python",
                                              "clplatform"}
    # the stored summary is an independent recomputation away from the stored records
    recomputed = summarize(loaded.accuracy)
    for key, value in recomputed.items():
        assert loaded.summary[key] == pytest.approx(value, nan_ok=True) or (
            loaded.summary[key] is None and value != value)


def test_failed_run_is_marked_failed(runs_dir, pretrained_backbone, monkeypatch):
    from clplatform.app import runner

    def boom(self, **_kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(runner.Prepared, "fit", boom)
    with pytest.raises(RuntimeError):
        clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, out=runs_dir)
    (run_dir,) = list(runs_dir.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "disk on fire" in record["reason"]


def test_load_run_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        clplatform.load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="not a run directory"):
        clplatform.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt file .*run.json"):
        clplatform.load_run(tmp_path)


def test_run_directories_are_unique(tmp_path):
    made = {new_run_dir(tmp_path, "x") for _ in range(20)}
    assert len(made) == 20 and all(p.is_dir() for p in made)


def test_unknown_python_api_option_is_a_user_error(runs_dir):
    with pytest.raises(UserError, match="unknown option 'epoch' for \\[train\\]"):
        clplatform.run("naive", "glyphs", epoch=3, out=runs_dir)
    assert not runs_dir.exists()


# ------------------------------------------------------------------ records checked on load
@pytest.fixture(scope="module")
def stored_run(tmp_path_factory, pretrained_backbone):
    """One tiny finished run, copied by each test that spoils it."""
    out = tmp_path_factory.mktemp("stored")
    return clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                          seed=0, out=out).path


def _copy(run_dir, tmp_path, name="run"):
    import shutil
    target = tmp_path / "runs" / name
    shutil.copytree(run_dir, target)
    return target


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _spoil(target, case):
    accuracy = target / "accuracy.csv"
    text = accuracy.read_text()
    if case == "duplicated-row":
        lines = text.splitlines(keepends=True)
        accuracy.write_text("".join(lines + [lines[-1]]))
    elif case == "text-in-number":
        lines = text.splitlines(keepends=True)
        cells = lines[3].split(",")
        cells[2] = "high"
        lines[3] = ",".join(cells)
        accuracy.write_text("".join(lines))
    elif case == "cut-mid-line":
        accuracy.write_text(text[:len(text) * 2 // 3 + 5])
    elif case == "cut-at-line":
        lines = text.splitlines(keepends=True)
        accuracy.write_text("".join(lines[:-1]))
    elif case == "no-strategy":
        _edit_json(target / "config.json", lambda c: c.pop("strategy"))
    elif case == "strategy-string":
        _edit_json(target / "config.json", lambda c: c.update(strategy="ewc"))
    elif case == "stream-string":
        _edit_json(target / "config.json", lambda c: c.update(stream="glyphs"))
    elif case == "absurd-pid":
        _edit_json(target / "run.json", lambda r: r.update(status="running", pid=10 ** 30))
    elif case == "summary-text":
        _edit_json(target / "summary.json", lambda s: s.update(final_accuracy="high"))
    elif case == "experiences-text":
        path = target / "experiences.csv"
        path.write_text(path.read_text().replace("\n0,", "\nzero,", 1))


CORRUPT = [
    ("duplicated-row", "accuracy.csv", "a second row for train_exp=2, eval_exp=2"),
    ("text-in-number", "accuracy.csv", "line 4: 'high' in column 'accuracy' is not a number"),
    ("cut-mid-line", "accuracy.csv", "truncated"),
    ("cut-at-line", "accuracy.csv", "no row for train_exp=2, eval_exp=2"),
    ("no-strategy", "config.json", "missing table 'strategy'"),
    ("strategy-string", "config.json", "'strategy' must be a table"),
    ("stream-string", "config.json", "'stream' must be a table"),
    ("absurd-pid", "run.json", "'pid' must be a process id"),
    ("summary-text", "summary.json", "'final_accuracy' must be a number or null"),
    ("experiences-text", "experiences.csv", "'zero' in column 'train_exp' is not an integer"),
]


@pytest.mark.parametrize("case, name, problem", CORRUPT)
def test_corrupt_records_are_refused_naming_the_file(case, name, problem, stored_run,
                                                      tmp_path):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    target = _copy(stored_run, tmp_path)
    _spoil(target, case)
    with pytest.raises(UserError) as caught:
        clplatform.load_run(target)
    assert str(target / name) in str(caught.value) and problem in str(caught.value)
    for command in ("compare", "report"):
        result = CliRunner().invoke(cli, [command, str(target), "--out",
                                          str(tmp_path / "out.html")])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1
        assert str(target / name) in result.stderr and problem in result.stderr
        assert not (tmp_path / "out.html").exists()


def test_runs_lists_a_corrupt_run_and_paths_relative_to_the_folder(stored_run, tmp_path,
                                                                      monkeypatch):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    good = _copy(stored_run, tmp_path, "good")
    bad = _copy(stored_run, tmp_path, "bad")
    _spoil(bad, "absurd-pid")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["runs", "runs"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"runs/good", "runs/bad"}  # relative, as short as they can be
    assert rows["runs/good"].split()[1] == "complete" and " 3/3 " in rows["runs/good"]
    assert rows["runs/bad"].split()[1] == "corrupt"
    assert f"corrupt file {bad / 'run.json'}: 'pid' must be a process id" in rows["runs/bad"]
    assert str(good) not in result.stdout


def test_a_killed_run_is_stale_in_every_command(stored_run, tmp_path):
    import platform
    import subprocess
    import sys

    from click.testing import CliRunner

    from clplatform.app.cli import cli
    from clplatform.store import list_runs
    _copy(stored_run, tmp_path, "good")
    killed = _copy(stored_run, tmp_path, "killed")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its process id now belongs to no process
    _edit_json(killed / "run.json", lambda r: r.update(status="running", pid=gone.pid,
                                                       host=platform.node()))
    assert clplatform.load_run(killed).status == "stale"
    assert set(list_runs([tmp_path / "runs"])["status"]) == {"complete", "stale"}
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--out",
                                      str(tmp_path / "c.html")])
    assert result.exit_code == 0
    assert f"skipped {killed} (stale; see --include-incomplete)" in result.stderr
