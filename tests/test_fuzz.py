"""Property-based: random option values and config files thrown at `clplat run --dry-run`
(which validates and builds everything) never produce a traceback — exit 0, or exit 2 with
one line on stderr."""
import dataclasses

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clplatform.cli import cli
from clplatform.registry import STRATEGIES

from conftest import TINY_GLYPHS

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]
VALUES = st.one_of(
    st.integers(-3, 70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
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
