"""Property-based: random option values and config files thrown at `clplat run --dry-run`
(which validates and builds everything) never produce a traceback — exit 0, or exit 2 with
one line on stderr. Streams include the user's own: stream functions that raise or return
garbage, and an image folder holding an unreadable file."""
import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clplatform.app.cli import cli
from clplatform.registry import STRATEGIES

from conftest import TINY_GLYPHS

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]
VALUES = st.one_of(
    st.integers(-3, 70).map(str), st.just("1000000000"), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "none", "", "auto", "every", "kmeans", "ptq", "lftl",
                     "1e-3", "0x10", "[1, 2]", "sans,mono", "=", "€", "-1", "4294967295",
                     "4294967296", "18446744073709551616"]),
    st.text(max_size=6))

# the user's own streams: functions that fail in every way a stream function can
STREAM_FUNCTIONS = """
import numpy as np
x = np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8)
y = np.arange(24) % 3
def good(**kw):
    return {"train": (x, y), **kw}
def raises(kind="key", **kw):
    raise {"runtime": RuntimeError, "value": ValueError}.get(kind, KeyError)("no")
def garbage(kind="five", **kw):
    return {"five": {"train": 5}, "triple": {"train": (x, y, y)}, "list": [x, y],
            "nan": {"train": (x, np.where(y == 2, np.nan, y))}}.get(kind, (1, 2, 3))
def empty(**kw):
    from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
    return CLScenario([EagerCLStream("train", []), EagerCLStream("test", [])])
"""
USER_STREAMS = ["good", "raises", "garbage", "empty", "folder"]
USER_KEYS = ["experiences", "test_fraction", "seed", "kind", "class_names", "skip_bad"]


def _user_stream(base, name: str) -> list[str]:
    """``--stream`` and options of the user's stream ``name`` (files written once)."""
    from PIL import Image
    functions, folder = base / "fuzz_streams.py", base / "folder"
    if not functions.exists():
        rng = np.random.default_rng(0)
        for c in "abc":
            (folder / c).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                    folder / c / f"{i}.png")
        (folder / "a" / "broken.png").write_bytes(b"not a png")
        functions.write_text(STREAM_FUNCTIONS)
    if name == "folder":
        return ["--stream", "folder", "--stream-opt", f"root={folder}"]
    return ["--stream", f"{functions}:{name}"]


def _keys(strategy: str) -> list[str]:
    try:
        options = STRATEGIES.get(strategy).options
    except Exception:  # noqa: BLE001  (an unknown name: any key will do)
        return ["bogus"]
    return [f.name for f in dataclasses.fields(options)] if options else ["bogus"]


def _toml_value(value: str):
    try:
        return repr(int(value))
    except ValueError:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def command_lines(draw):
    strategy = draw(st.sampled_from(STRATEGIES.names() + ["nope"]))
    keys = _keys(strategy) + ["bogus"]
    stream = draw(st.sampled_from(["glyphs", "digits", *USER_STREAMS]))
    stream_args = {"glyphs": TINY, "digits": ["--stream", "digits"]}.get(
        stream, ["{user:" + stream + "}"])  # the user's files are made in the test
    args = ["run", "--dry-run", "--strategy", strategy, *stream_args]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        args += ["--set", f"{key}={draw(VALUES)}"]
    for option in draw(st.lists(st.sampled_from(["--epochs", "--lr", "--batch-size", "--seed",
                                                 "--device"]), max_size=2, unique=True)):
        args += [option, draw(VALUES)]
    if draw(st.booleans()):
        key = draw(st.sampled_from(["experiences", "jitter", "seed", "bogus"] + (
            USER_KEYS if stream in USER_STREAMS else [])))
        args += ["--stream-opt", f"{key}={draw(VALUES)}"]
    config = None
    if draw(st.booleans()):
        table = draw(st.sampled_from(["strategy", "stream", "train", "backbone", "nonsense"]))
        key = draw(st.sampled_from(keys + ["epochs", "lr", "name", "experiences", "seed"]))
        config = draw(st.one_of(st.just(f"[{table}]\n{key} = {_toml_value(draw(VALUES))}\n"),
                                st.text(max_size=30)))
    return args, config


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=command_lines())
def test_random_options_never_crash(case, tmp_path_factory, pretrained_backbone):
    args, config = case
    if args[4].startswith("{user:"):
        base = tmp_path_factory.getbasetemp() / "user-streams"
        base.mkdir(exist_ok=True)
        args = args[:4] + _user_stream(base, args[4][6:-1]) + args[5:]
    if config is not None:
        path = tmp_path_factory.mktemp("cfg") / "fuzz.toml"
        path.write_text(config, encoding="utf-8")
        args = args + ["--config", str(path)]
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(cli, args + ["--out", str(out)], prog_name="clplat")
    assert result.exit_code in (0, 2), (args, config, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:  # one error line; before it only warnings about the data
        lines = result.stderr.strip().splitlines()  # (an image skipped, a cache rebuilt)
        assert lines and lines[-1].startswith("clplat: error: "), (args, lines)
        assert all(line.startswith(("clplat: warning: skipped unreadable image",
                                    "clplat: warning: rebuilding unreadable cache"))
                   for line in lines[:-1]), (args, lines)
    assert not any(out.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    # in range, but no machine holds them: refused from the options, before anything runs
    (["--strategy", "qprompt", "--set", "g_length=1000000000"], "g_length=1000000000 needs"),
    (["--strategy", "prompt", "--set", "e_length=1000000000"], "e_length=1000000000 needs"),
    (["--strategy", "lftl", "--set", "bottleneck=1000000000"], "bottleneck=1000000000 needs"),
    (["--strategy", "sema", "--set", "bottleneck=1000000000"], "bottleneck=1000000000 needs"),
    (["--strategy", "sema", "--set", "rd_hidden=1000000000"], "rd_hidden=1000000000 needs"),
    # more labels than the target experiences hold
    (["--strategy", "lftl", "--set", "rounds=10", "--set", "budget_per_round=0.2"],
     "target experience 1 has"),
])
def test_sizes_and_budgets_that_cannot_run(args, message, tmp_path, pretrained_backbone):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", *args, *TINY, "--quiet", "--out", str(out)],
                                prog_name="clplat")
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), lines
    assert message in lines[0], lines
    if "needs" in message:  # the memory it would take, against what there is
        assert " TB to train " in lines[0] and " available on cpu" in lines[0], lines
    assert not out.exists()


def test_an_allocation_failing_while_a_strategy_is_built_is_one_error():
    """Any strategy, estimate or not: a tensor too large for the machine while it is built
    (here 2^48 floats, 1.1 PB) is a UserError naming the bytes, not a traceback."""
    from types import SimpleNamespace

    from clplatform.errors import UserError
    from clplatform.options import build_within_memory
    context = SimpleNamespace(train=SimpleNamespace(device="cpu"))
    with pytest.raises(UserError, match=r"strategy 'huge' cannot be built: it needs "
                                        r"1,125.9 TB in one tensor and [\d.,]+ [KMGT]?B is "
                                        r"available on cpu; lower its sizes"):
        build_within_memory(lambda ctx, opts: torch.empty(2 ** 48), context, None,
                            "strategy 'huge'")
    assert build_within_memory(lambda ctx, opts: 7, context, None, "strategy 'small'") == 7
