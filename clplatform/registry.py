"""Registries of strategies, streams and backbones, in the spirit of timm's ``register_model``.

A component is registered with its name, a typed options dataclass (hyper-parameters of a
strategy, options of a stream or backbone) and one line of help::

    @register_strategy("ewc", options=EWCOptions, help="Elastic weight consolidation")
    def ewc(ctx, opts): ...

and built by name with ``clplatform.create_strategy``/``create_stream``/``create_backbone``
(:mod:`clplatform.app.factories`), which validate the options (one place, one message)
before calling the builder.

Registering is cheap: a module that registers components imports torch, Avalanche or timm
inside its builders, not at its top, so that listing them (``clplat list strategies -v``)
imports none of them; a package re-exports its heavy classes with :func:`lazy_exports`.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .contract import ComponentTraits, StrategyTraits, make_traits
from .errors import UserError
from .options import build_options


def lazy_exports(module: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``module``: ``exports`` maps a public name to
    the module defining it (a relative name is read as in an ``import`` statement of
    ``module``), imported on first access, so ``from module import Name`` works without
    importing it up front::

        __getattr__ = lazy_exports(__name__, {"SEMAModel": ".model"})
    """
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        own = sys.modules[module]
        value = getattr(importlib.import_module(exports[name], own.__package__), name)
        setattr(own, name, value)  # once: later lookups are plain
        return value
    return __getattr__


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    options: type | None
    help: str
    traits: ComponentTraits = field(default_factory=ComponentTraits)

    @property
    def display(self) -> str:
        return self.traits.display or self.name

    def make_options(self, values: Mapping[str, Any] | None = None, what: str = "") -> Any:
        return build_options(self.options, values or {}, what or self.name)


class Registry:
    """Names -> :class:`Entry`; built-in components are imported on first use."""

    def __init__(self, kind: str, builtin_module: str, entry_point_group: str | None = None,
                 traits: type = ComponentTraits):
        self.kind = kind
        self.traits = traits
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, options: type | None = None, help: str = "",
                 **traits: Any) -> Callable:
        """Decorator registering a builder (function or class) under ``name``."""
        if options is not None and not dataclasses.is_dataclass(options):
            raise TypeError(f"options of {self.kind} {name!r} must be a dataclass")
        record = make_traits(self.traits, self.kind, name, traits)

        def decorator(builder: Callable) -> Callable:
            old = self._entries.get(name)
            if old is not None and _definition(old.builder) != _definition(builder):
                raise TypeError(f"{self.kind} {name!r} is registered twice: by "
                                f"{_origin(old.builder)} and by {_origin(builder)}")
            self._entries[name] = Entry(name, builder, options,
                                        help or (builder.__doc__ or "").strip().split("\n")[0],
                                        record)
            return builder
        return decorator

    def resolve(self, name: str, options: Mapping[str, Any] | None = None
                ) -> tuple[Entry, dict[str, Any]]:
        """The entry of ``name`` and its raw options: ``name:<value>`` names an entry whose
        ``suffix_option`` trait receives ``<value>`` (``timm:resnet18``)."""
        options = dict(options or {})
        head, sep, tail = name.partition(":")
        if sep and head in self.names() and self._entries[head].traits.suffix_option:
            entry = self._entries[head]
            if not tail:
                raise UserError(f"{self.kind} {name!r} needs a value after the colon, e.g. "
                                f"{entry.display}")
            return entry, {**options, entry.traits.suffix_option: tail}
        return self.get(name), options

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtin_module)
            if self._group:
                self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Installed packages declaring ``clplatform.streams``/``clplatform.strategies`` entry
        points. Loading the object registers it if it uses ``@register_*``; a plain builder
        is registered under the entry point's name (no options). A plugin that fails to
        load is named in a warning and left out."""
        from importlib.metadata import entry_points
        for point in entry_points(group=self._group):
            try:
                with old_names_refused():
                    obj = point.load()
            except Exception as exc:  # noqa: BLE001  (a broken plugin must not stop clplat)
                reason = old_import_name(exc, point.value) or f"{type(exc).__name__}: {exc}"
                print(f"clplat: warning: cannot load {self.kind} plugin {point.name!r} "
                      f"({point.value}): {reason}", file=sys.stderr)
                continue
            if point.name not in self._entries and callable(obj):  # a plain builder
                self.register(point.name, plugin=point.value)(obj)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            shown = [self._entries[n].display for n in self.names()]
            raise UserError(f"unknown {self.kind} {name!r}; valid names: {', '.join(shown)}")
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


STRATEGIES = Registry("strategy", "clplatform.strategies", "clplatform.strategies",
                      traits=StrategyTraits)
STREAMS = Registry("stream", "clplatform.streams", "clplatform.streams")
BACKBONES = Registry("backbone", "clplatform.models")

# the top-level packages of clplatform before 0.2, now inside it
OLD_PACKAGES = ("streams", "strategies", "reports")


class _OldNames:
    """A ``sys.meta_path`` finder refusing the pre-0.2 top-level names (unless another
    distribution provides a package of that name): an old clplatform left installed beside
    the new one must not be imported by a plugin written against it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if path is None and name in OLD_PACKAGES and not _provided_by_another(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _provided_by_another(name: str) -> bool:
    from importlib.metadata import packages_distributions
    return any(d.lower() != "clplatform" for d in packages_distributions().get(name, []))


@contextmanager
def old_names_refused() -> Iterator[None]:
    """While loading a plugin or a user's stream file: an import of ``streams``,
    ``strategies`` or ``reports`` fails (see :func:`old_import_name`)."""
    finder = _OldNames()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def old_import_name(exc: BaseException, what: str) -> str | None:
    """For an import of a pre-0.2 top-level package name (``import strategies``, ``from
    streams import ...``) that failed: ``FILE:LINE imports 'strategies', which is now
    'clplatform.strategies'`` (the file and line of the import statement; ``what`` when it
    is not a file of the user's); else None."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not name or name.split(".")[0] not in OLD_PACKAGES:
        return None
    skip = (str(Path(importlib.__file__).parent), str(Path(__file__).parent))
    frames = [(file, line) for file, line in _frames(exc.__traceback__)
              if not file.startswith("<") and not file.startswith(skip)]
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else what
    return f"{where} imports {name!r}, which is now {'clplatform.' + name!r}"


def _frames(tb) -> list[tuple[str, int]]:
    found = []
    while tb is not None:
        found.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    return found


def _origin(builder: Callable) -> str:
    """Where a builder is defined, for messages: ``module.name``."""
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', '?')}"


def _definition(builder: Callable) -> tuple[str, str]:
    """What identifies a builder's definition: its source file and name. The same definition
    registered again — a module imported twice, or a file loaded under another module name
    (a stream file given as ``file.py:function`` that is also installed) — is not a
    duplicate."""
    code = getattr(builder, "__code__", None)
    module = sys.modules.get(getattr(builder, "__module__", None) or "")
    file = code.co_filename if code is not None else getattr(module, "__file__", None)
    if not file:
        return _origin(builder), ""
    return str(Path(file).resolve()), getattr(builder, "__qualname__", "?")


register_strategy = STRATEGIES.register
register_stream = STREAMS.register
register_backbone = BACKBONES.register

