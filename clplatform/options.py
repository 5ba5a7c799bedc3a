"""Typed options: the one place where option values are parsed and validated.

Strategy hyper-parameters, stream options and backbone options are dataclasses whose fields
are declared with :func:`opt` (default, one-line help, allowed range or choices). Values may
come as strings from the command line (``--set lr=0.1``) or typed from TOML; both go through
:func:`build_options`, which names the bad key or value and the allowed ones.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import field
from typing import Any, Mapping

from .errors import UserError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
        choices: typing.Sequence[Any] | None = None) -> Any:
    """A dataclass field with help text and an allowed range or set of values."""
    meta = {"help": help, "min": min, "max": max,
            "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def parse_assignments(items: typing.Iterable[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is a UserError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    base, optional = _strip_optional(tp)
    origin = typing.get_origin(base)
    if origin in (tuple, list):
        inner = typing.get_args(base)[0]
        name = f"list of {getattr(inner, '__name__', inner)}"
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" or none" if optional else "")


def _coerce(value: Any, tp: Any, what: str) -> Any:
    base, optional = _strip_optional(tp)
    if optional and (value is None or (isinstance(value, str)
                                       and value.strip().lower() in ("none", "null", ""))):
        return None
    origin = typing.get_origin(base)
    try:
        if origin in (tuple, list):
            inner = typing.get_args(base)[0]
            items = (value.split(",") if isinstance(value, str) else
                     list(value) if isinstance(value, (list, tuple)) else [value])
            items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
            return origin(_coerce(i, inner, what) for i in items)
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if base is str:
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"invalid value {value!r} for {what}: expected {type_name(tp)}") from None
    raise TypeError(f"unsupported option type {tp!r} for {what}")


def _check(value: Any, f: dataclasses.Field, what: str) -> None:
    meta = f.metadata
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if v is None:
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise UserError(f"invalid value {v!r} for {what}: choose from "
                            f"{', '.join(map(str, meta['choices']))}")
        if meta.get("min") is not None and v < meta["min"]:
            raise UserError(f"invalid value {v!r} for {what}: must be >= {meta['min']}")
        if meta.get("max") is not None and v > meta["max"]:
            raise UserError(f"invalid value {v!r} for {what}: must be <= {meta['max']}")


def build_options(cls: type | None, values: Mapping[str, Any], what: str) -> Any:
    """An instance of the options dataclass ``cls`` from ``values`` (strings or typed)."""
    if cls is None:
        if values:
            raise UserError(f"{what} takes no options; got {', '.join(sorted(values))}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise UserError(f"unknown option {unknown[0]!r} for {what}; valid keys: {valid}")
    kwargs = {}
    for key, raw in values.items():
        label = f"{key} ({what})"
        value = _coerce(raw, types_[key], label)
        _check(value, fields[key], label)
        kwargs[key] = value
    instance = cls(**kwargs)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def describe_options(cls: type | None) -> list[dict[str, Any]]:
    """One dict per field: name, type, default, help, range/choices (for ``clplat list -v``)."""
    if cls is None:
        return []
    types_ = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = ""
        if f.metadata.get("choices") is not None:
            allowed = "|".join(map(str, f.metadata["choices"]))
        elif f.metadata.get("min") is not None or f.metadata.get("max") is not None:
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            allowed = (f">= {lo}" if hi is None else f"<= {hi}" if lo is None
                       else f"{lo} to {hi}")
        rows.append({"name": f.name, "type": type_name(types_[f.name]), "default": default,
                     "allowed": allowed, "help": f.metadata.get("help", "")})
    return rows


def options_dict(instance: Any) -> dict[str, Any]:
    """A JSON-able dict of an options instance (tuples become lists)."""
    if instance is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(instance).items()}


# ----------------------------------------------------------------------------- memory
# training holds every parameter about three times: weights, gradients, optimizer state
TRAINING_COPIES = 3
FLOAT_BYTES = 4


def available_memory(device: str) -> int | None:
    """Bytes free for new tensors on ``device`` (CPU: the kernel's MemAvailable); None when
    unknown."""
    import torch
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def build_within_memory(builder, context: Any, options: Any, what: str) -> Any:
    """``builder(context, options)`` (a strategy), refused with a UserError when it cannot fit
    in memory, before anything is trained or written. Two checks, one message:

    - an options dataclass that defines ``parameters_added(width, depth, classes) -> int``
      (the parameters the strategy creates in its first experience, from the options and the
      backbone's width, number of blocks and the stream's classes; strategies that grow
      while training need it) is checked against the memory available on the device,
      counting ``TRAINING_COPIES`` float32 copies of each parameter;
    - any strategy: an allocation that fails while it is built (CPU or GPU) is reported with
      the bytes it asked for, not as a traceback.
    """
    import re

    import torch
    device = context.train.device
    if options is not None:
        changed = [f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)
                   if f.default is not dataclasses.MISSING
                   and getattr(options, f.name) != f.default]
        what += f" with {', '.join(changed)}" if changed else ""
    estimate = getattr(options, "parameters_added", None)
    if callable(estimate):
        model = context.backbone.model
        blocks = getattr(model, "blocks", None)
        count = int(estimate(context.backbone.num_features,
                             len(blocks) if blocks is not None else 0,
                             len(context.info.classes)))
        needed = count * FLOAT_BYTES * TRAINING_COPIES
        free = available_memory(device)
        if free is not None and needed > free:
            raise UserError(
                f"{what} needs about {format_bytes(needed)} to train "
                f"({count:,} parameters x {TRAINING_COPIES}: weights, gradients, optimizer "
                f"state) but {format_bytes(free)} is available on {device}; lower its sizes")
    try:
        return builder(context, options)
    except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
        message = str(exc)
        if not (isinstance(exc, torch.OutOfMemoryError) or "allocate" in message):
            raise
        asked = re.search(r"allocate (\d+) bytes", message)
        size = (format_bytes(int(asked.group(1))) if asked else
                (re.search(r"allocate ([\d.]+ [KMGT]?i?B)", message) or [None, "memory"])[1])
        free = available_memory(device)
        raise UserError(f"{what} cannot be built: it needs {size} in one "
                        f"tensor" + (f" and {format_bytes(free)} is available on {device}"
                                     if free is not None else "") + "; lower its sizes") from None
