"""Start-up cost: commands that only describe things import no torch/Avalanche stack."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "avalanche", "timm", "torchvision", "pandas")


def _modules_after(*args: str) -> tuple[list[str], str, str]:
    """Run ``clplat ARGS`` in a fresh interpreter; the heavy modules it imported, its output."""
    code = ("import json, sys\n"
            "from clplatform.app.cli import cli\n"
            f"sys.argv = ['clplat', *{list(args)!r}]\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), "
            "file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1]), done.stdout, done.stderr


@pytest.mark.parametrize("args", [("list", "strategies", "-v"), ("list", "strategies"),
                                  ("--help",), ("run", "--help")])
def test_describing_commands_import_no_torch_or_avalanche(args):
    imported, out, _ = _modules_after(*args)
    assert imported == []
    assert out.strip()


def test_list_strategies_still_shows_every_option():
    _, out, _ = _modules_after("list", "strategies", "-v")
    # registered by modules whose torch code is now imported lazily
    for line in ("simplecil", "sema", "qprompt", "lftl", "ewc_lambda = 1.0",
                 "threshold = 2.0", "train defaults: epochs=5, batch_size=32, lr=0.00375"):
        assert line in out, line


def test_lazily_exported_names_resolve():
    import clplatform
    import clplatform.strategies as strategies
    from clplatform.strategies.simplecil import PrototypeHead
    from clplatform.strategies.sema import SEMAModel
    assert clplatform.run.__module__ == "clplatform.app.runner"
    assert clplatform.load_run.__module__ == "clplatform.store"
    assert strategies.StrategyContext.__name__ == "StrategyContext"
    assert PrototypeHead.__module__ == "clplatform.strategies.prototype_head"
    assert SEMAModel.__name__ == "SEMAModel"
    with pytest.raises(AttributeError):
        strategies.no_such_name  # noqa: B018
