"""The default backbone: vit-mini (shipped pre-trained), unless $CLPLATFORM_BACKBONE names
another (the suite's conftest sets vit-glyphs; these tests remove or change it)."""
import json

import pytest
from click.testing import CliRunner

from clplatform.app.cli import cli
from clplatform.app.spec import BACKBONE_ENV, DEFAULT_BACKBONE, make_spec


def dry_run(*args):
    result = CliRunner().invoke(cli, ["run", "--dry-run", *args], prog_name="clplat")
    return result


@pytest.mark.parametrize("value", [None, "", "  "])
def test_the_default_backbone_is_vit_mini(value, monkeypatch):
    if value is None:
        monkeypatch.delenv(BACKBONE_ENV, raising=False)
    else:
        monkeypatch.setenv(BACKBONE_ENV, value)
    assert DEFAULT_BACKBONE == "vit-mini"
    assert make_spec().backbone == "vit-mini"
    result = dry_run("--strategy", "sema")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["backbone"]["name"] == "vit-mini" and config["backbone"]["pretrained"]
    assert config["stream"]["name"] == "glyphs"
    # a named backbone wins over the default
    named = json.loads(dry_run("--backbone", "vit-glyphs").stdout)
    assert named["backbone"]["name"] == "vit-glyphs"


def test_the_environment_names_another_default(monkeypatch):
    monkeypatch.setenv(BACKBONE_ENV, "timm:vit_tiny_patch16_224")
    config = json.loads(dry_run("--backbone-opt", "pretrained=false").stdout)
    assert config["backbone"]["name"] == "timm:vit_tiny_patch16_224"
    assert config["backbone"]["model_name"] == "vit_tiny_patch16_224"


def test_an_unknown_backbone_in_the_environment_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv(BACKBONE_ENV, "vit-nope")
    result = dry_run()
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["clplat: error: unknown backbone 'vit-nope'; valid names: "
                     "timm:<model-name>, vit-glyphs, vit-mini ($CLPLATFORM_BACKBONE names it)"]


@pytest.mark.slow
def test_the_default_run_of_sema_on_vit_mini(tmp_path, monkeypatch):
    """`clplat run --strategy sema` as a user types it: glyphs, the shipped vit-mini, all
    defaults (measured: 90.7 % final accuracy, 99.9 % task-aware, 65 s on 2 idle cores)."""
    monkeypatch.delenv(BACKBONE_ENV, raising=False)
    result = CliRunner().invoke(cli, ["run", "--strategy", "sema", "--out", str(tmp_path),
                                      "--quiet", "--json"], prog_name="clplat")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    config = json.loads((tmp_path / payload["run_dir"] / "config.json").read_text())
    assert config["backbone"]["name"] == "vit-mini"
    summary = payload["summary"]
    assert summary["final_accuracy"] > 0.85
    assert summary["final_task_accuracy"] > 0.97
    assert summary["forgetting"] < 0.10
