from dataclasses import dataclass
from typing import Optional

import pytest

from clplatform.errors import UserError
from clplatform.options import build_options, describe_options, opt, parse_assignments


@dataclass
class Example:
    rate: float = opt(0.5, "a rate", min=0, max=1)
    count: int = opt(3, "a count", min=1)
    mode: str = opt("a", "a mode", choices=("a", "b"))
    flag: bool = opt(False, "a flag")
    names: tuple[str, ...] = opt(("x", "y"), "names", choices=("x", "y", "z"))
    limit: Optional[int] = opt(None, "optional limit")


def test_strings_are_coerced_to_field_types():
    o = build_options(Example, {"rate": "0.25", "count": "7", "mode": "b", "flag": "yes",
                                "names": "z,x", "limit": "none"}, "example")
    assert (o.rate, o.count, o.mode, o.flag, o.names, o.limit) == (0.25, 7, "b", True,
                                                                    ("z", "x"), None)


def test_typed_values_from_toml_pass_through():
    o = build_options(Example, {"rate": 1, "count": 2, "flag": True, "names": ["y"],
                                "limit": 4}, "example")
    assert (o.rate, o.count, o.flag, o.names, o.limit) == (1.0, 2, True, ("y",), 4)


@pytest.mark.parametrize("values, fragment", [
    ({"rate": "abc"}, "expected float"),
    ({"rate": "1.5"}, "must be <= 1"),
    ({"count": "0"}, "must be >= 1"),
    ({"count": "2.5"}, "expected int"),
    ({"count": True}, "expected int"),
    ({"mode": "c"}, "choose from a, b"),
    ({"names": "x,w"}, "choose from x, y, z"),
    ({"flag": "maybe"}, "expected bool"),
    ({"rate": "inf"}, "expected float"),
    ({"nope": "1"}, "valid keys: count, flag, limit, mode, names, rate"),
])
def test_bad_values_name_the_key_and_the_rule(values, fragment):
    with pytest.raises(UserError) as err:
        build_options(Example, values, "example")
    assert fragment in str(err.value)
    assert list(values)[0] in str(err.value)


def test_parse_assignments():
    assert parse_assignments(["a=1", "b-c = x=y"], "--set") == {"a": "1", "b_c": "x=y"}
    with pytest.raises(UserError, match="--set expects key=value"):
        parse_assignments(["novalue"], "--set")


def test_describe_lists_defaults_and_help():
    rows = {r["name"]: r for r in describe_options(Example)}
    assert rows["rate"]["default"] == 0.5 and rows["rate"]["allowed"] == "0 to 1"
    assert rows["mode"]["allowed"] == "a|b" and rows["limit"]["type"] == "int or none"
    assert rows["count"]["help"] == "a count"
