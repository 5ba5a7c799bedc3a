"""Property-based: random option values and config files thrown at `clplat run --dry-run`
(which validates and builds everything) never produce a traceback — exit 0, or exit 2 with
one line on stderr."""
import dataclasses

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clplatform.cli import cli
from clplatform.registry import STRATEGIES

from conftest import TINY_GLYPHS

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]
VALUES = st.one_of(
    st.integers(-3, 70).map(str), st.just("1000000000"), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "none", "", "auto", "every", "kmeans", "ptq", "lftl",
                     "1e-3", "0x10", "[1, 2]", "sans,mono", "=", "€"]),
    st.text(max_size=6))


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
    args = ["run", "--dry-run", "--strategy", strategy, *TINY]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        args += ["--set", f"{key}={draw(VALUES)}"]
    for option in draw(st.lists(st.sampled_from(["--epochs", "--lr", "--batch-size", "--seed",
                                                 "--device"]), max_size=2, unique=True)):
        args += [option, draw(VALUES)]
    if draw(st.booleans()):
        key = draw(st.sampled_from(["experiences", "jitter", "seed", "bogus"]))
        args += ["--stream-opt", f"{key}={draw(VALUES)}"]
    config = None
    if draw(st.booleans()):
        table = draw(st.sampled_from(["strategy", "stream", "train", "backbone", "nonsense"]))
        key = draw(st.sampled_from(keys + ["epochs", "lr", "name", "experiences"]))
        config = draw(st.one_of(st.just(f"[{table}]\n{key} = {_toml_value(draw(VALUES))}\n"),
                                st.text(max_size=30)))
    return args, config


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=command_lines())
def test_random_options_never_crash(case, tmp_path_factory, pretrained_backbone):
    args, config = case
    if config is not None:
        path = tmp_path_factory.mktemp("cfg") / "fuzz.toml"
        path.write_text(config, encoding="utf-8")
        args = args + ["--config", str(path)]
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(cli, args + ["--out", str(out)], prog_name="clplat")
    assert result.exit_code in (0, 2), (args, config, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clplat: error: "), (args, lines)
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
