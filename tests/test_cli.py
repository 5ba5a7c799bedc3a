import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clplatform.app.cli import cli

TINY = ["--stream-opt", "experiences=3", "--stream-opt", "samples_per_class=6",
        "--stream-opt", "test_samples_per_class=3", "--epochs", "1", "--quiet"]


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), prog_name="clplat")
    return result


@pytest.mark.parametrize("command", [[], ["run"], ["list"], ["pretrain"]])
def test_help_on_every_command(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage: clplat" in result.output
    assert "--help" in result.output


def test_run_json_prints_exactly_one_json_object(runs_dir, pretrained_backbone):
    result = invoke("run", "--strategy", "simplecil", *TINY, "--out", str(runs_dir), "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # the whole stdout is one JSON document
    assert set(payload) == {"run_dir", "summary"}
    run_dir = payload["run_dir"]
    assert os.path.dirname(run_dir) == str(runs_dir)
    assert sorted(os.listdir(run_dir)) == ["accuracy.csv", "config.json", "experiences.csv",
                                           "report.html",
                                           "run.json", "summary.json"]
    assert 0 < payload["summary"]["final_accuracy"] <= 1
    with open(os.path.join(run_dir, "summary.json")) as fh:
        assert json.load(fh)["final_accuracy"] == payload["summary"]["final_accuracy"]


def test_run_prints_a_readable_summary(runs_dir, pretrained_backbone):
    result = invoke("run", "--strategy", "linear-probe", *TINY, "--out", str(runs_dir))
    assert result.exit_code == 0, result.stderr
    assert "final accuracy A_T" in result.stdout and "forgetting" in result.stdout
    assert "accuracy (%) on each test experience" in result.stdout
    assert "linear-probe" in result.stdout


def test_list_shows_hyper_parameters_with_defaults_and_help():
    result = invoke("list", "strategies", "-v")
    assert result.exit_code == 0
    assert "ewc_lambda = 1.0" in result.stdout and "mem_size = 200" in result.stdout
    assert "weight of the quadratic penalty" in result.stdout
    short = invoke("list", "strategies").stdout
    assert "simplecil" in short and "ewc_lambda" not in short
    assert "glyphs-domains" in invoke("list", "streams").stdout
    assert "timm:<model-name>" in invoke("list", "backbones", "-v").stdout


def test_toml_config_and_command_line_precedence(tmp_path, runs_dir, pretrained_backbone):
    config = tmp_path / "exp.toml"
    config.write_text(f"""
[strategy]
name = "replay"
mem_size = 40

[stream]
name = "glyphs"
experiences = 3
samples_per_class = 6
test_samples_per_class = 3

[train]
epochs = 1
seed = 4
batch_size = 16
out = "{runs_dir}"
""")
    result = invoke("run", "--config", str(config), "--seed", "2", "--set", "mem_size=30",
                    "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    run_dir = json.loads(result.stdout)["run_dir"]
    with open(os.path.join(run_dir, "config.json")) as fh:
        resolved = json.load(fh)
    assert resolved["strategy"] == {"name": "replay", "mem_size": 30}      # CLI wins
    assert resolved["train"]["seed"] == 2 and resolved["train"]["batch_size"] == 16
    assert resolved["train"]["epochs"] == 1 and resolved["stream"]["experiences"] == 3
    assert resolved["stream"]["seed"] == 2  # the stream follows the run seed


BAD_INPUTS = [
    (["--strategy", "nope"], "unknown strategy 'nope'; valid names: agem"),
    (["--stream", "nope"], "unknown stream 'nope'; valid names: avalanche:<Benchmark>, "
                           "cifar100, cub, "),
    (["--stream", "nope"], "or a Python callable file.py:function"),
    (["--backbone", "nope"], "unknown backbone 'nope'; valid names: timm:<model-name>"),
    (["--strategy", "ewc", "--set", "lambda=1"], "valid keys: decay_factor, ewc_lambda, mode"),
    (["--stream-opt", "bogus=1"], "unknown option 'bogus' for stream 'glyphs'; valid keys"),
    (["--strategy", "ewc", "--set", "ewc_lambda=abc"], "invalid value 'abc' for ewc_lambda"),
    (["--epochs", "-1"], "invalid value -1 for epochs"),
    (["--epochs", "0"], "invalid value 0 for epochs ([train]): must be >= 1"),
    (["--epochs", "two"], "invalid value 'two' for epochs"),
    (["--lr", "fast"], "invalid value 'fast' for lr"),
    (["--device", "tpu"], "invalid value 'tpu' for device"),
    (["--config", "missing.toml"], "config file not found: missing.toml"),
    (["--set", "novalue"], "--set expects key=value"),
    (["--bogus-flag"], "No such option"),
    (["--backbone-weights", "missing.pt"], "backbone weights file not found: missing.pt"),
    (["--stream-opt", "experiences=100"], "must be <= 62"),
    (["--strategy", "qprompt", "--set", "bits=3"], "invalid value 3 for bits"),
    (["--strategy", "sema", "--backbone", "timm:resnet18", "--backbone-opt", "pretrained=false"],
     "sema works on timm VisionTransformer backbones only; timm:resnet18 is a ResNet"),
    (["--strategy", "lftl", "--stream", "glyphs-domains", "--backbone", "timm:resnet18",
      "--backbone-opt", "pretrained=false"], "tune_blocks=1 needs a timm VisionTransformer"),
    (["--strategy", "prompt", "--set", "e_layers=6"], "g_layers + e_layers = 8 but the "
                                                      "backbone has 6 blocks"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_no_run_dir(args, message, runs_dir):
    result = invoke("run", *args, "--out", str(runs_dir), "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize("content, message", [
    ("[strategy\nname=1", "invalid TOML"),
    ("[model]\nx = 1", "unknown table or key 'model'"),
    ("[train]\nepochs = 'many'", "invalid value 'many' for epochs"),
    ("[strategy]\nname = 3", "[strategy] name must be a string"),
])
def test_bad_config_files(tmp_path, runs_dir, content, message):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = invoke("run", "--config", str(config), "--out", str(runs_dir))
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_pretrain_command_reports_and_copies_weights(tmp_path, pretrained_backbone):
    target = tmp_path / "copy.pt"
    result = invoke("pretrain", "--out", str(target), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert str(pretrained_backbone[0]) in result.stdout
    assert target.read_bytes() == pretrained_backbone[0].read_bytes()


def test_real_subprocess_run_json(runs_dir, pretrained_backbone):
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "clplatform.app.cli", "run", "--strategy",
                           "naive", *TINY, "--out", str(runs_dir), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert os.path.isfile(os.path.join(payload["run_dir"], "accuracy.csv"))
    bad = subprocess.run([sys.executable, "-m", "clplatform.app.cli", "run", "--strategy", "x"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        bad.stderr.strip()] and "unknown strategy 'x'" in bad.stderr


def test_timm_backbone_with_local_weights_end_to_end(tmp_path, runs_dir):
    import timm
    import torch
    weights = tmp_path / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
               .state_dict(), weights)
    result = invoke("run", "--strategy", "linear-probe", "--backbone",
                    "timm:vit_tiny_patch16_224", "--backbone-weights", str(weights),
                    "--backbone-opt", "img_size=32", *TINY, "--out", str(runs_dir), "--json")
    assert result.exit_code == 0, result.stderr
    run_dir = json.loads(result.stdout)["run_dir"]
    with open(os.path.join(run_dir, "config.json")) as fh:
        backbone = json.load(fh)["backbone"]
    assert backbone["name"] == "timm:vit_tiny_patch16_224"
    assert backbone["weights"] == str(weights) and backbone["img_size"] == 32
    with open(os.path.join(run_dir, "experiences.csv")) as fh:
        header = fh.readline().split(",")
        first = dict(zip(header, fh.readline().split(",")))
    assert int(first["params_frozen"]) > 5_000_000  # ViT-Tiny's 5.5M frozen parameters


def test_a_setting_the_strategy_does_not_use_is_named(runs_dir, pretrained_backbone):
    result = invoke("run", "--strategy", "simplecil", *TINY, "--epochs", "4", "--lr", "0.1",
                    "--out", str(runs_dir), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert ("clplat: warning: strategy 'simplecil' does not use epochs, lr; its own "
            "hyper-parameters are set with --set") in result.stderr


def test_python_api_replay_prints_no_deprecation_warning(tmp_path, pretrained_backbone):
    """Avalanche's @deprecated re-enables DeprecationWarning on each call (simplefilter), so
    the platform must not call deprecated functions (replay's storage_policy.update)."""
    from pathlib import Path
    script = ("import clplatform\n"
              "run = clplatform.run(strategy='replay', stream='glyphs', epochs=1, "
              "strategy_options={'mem_size': 20}, out=%r, stream_options=dict("
              "experiences=3, samples_per_class=6, test_samples_per_class=3))\n"
              "print(type(run.summary['final_accuracy']).__name__)\n" % str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "float"  # as the README says
    assert "Warning" not in done.stderr, done.stderr[-2000:]


def test_empty_out_is_refused_and_epochs_0_only_where_epochs_mean_nothing(
        tmp_path, monkeypatch, pretrained_backbone):
    monkeypatch.chdir(tmp_path)  # where an empty --out used to put the run
    for args in (["run", "--out", ""], ["run", "--out", " ", "--dry-run"],
                 ["sweep", "--strategies", "naive", "--out", ""]):
        result = invoke(*args, "--quiet") if args[0] == "run" else invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [
            "clplat: error: --out is empty: name a folder (e.g. --out runs)"]
    assert list(tmp_path.iterdir()) == []
    # simplecil takes no epochs: a warning, and the run keeps its own setting
    result = invoke("run", "--strategy", "simplecil", "--epochs", "0", "--dry-run",
                    *TINY[:-3])
    assert result.exit_code == 0, result.stderr
    assert "does not use epochs" in result.stderr
    assert json.loads(result.stdout)["train"]["epochs"] == 1
