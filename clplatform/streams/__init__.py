"""Stream builders: each registers an Avalanche benchmark under a name (``@register_stream``).

Built-in offline streams: ``glyphs`` (default), ``glyphs-domains``, ``glyphs-pretrain``,
``digits``; the miniature world of issue 20 (:mod:`streams.mini`: ``mini-in``,
``mini-r``, ``mini-a``, ``mini-vtab``); the papers' benchmarks read from their files
(:mod:`streams.paper`: ``cifar100``, ``imagenet-r``, ``imagenet-a``, ``vtab``, ``cub``,
``omnibenchmark``, ``objectnet``; lazy image files: :mod:`streams.files`); your data: ``folder`` (image
folders), ``file.py:function`` or ``package.module:function`` (a Python callable), an
in-memory benchmark such as
``from_arrays(x, y)``, and ``avalanche:<Benchmark>`` (Avalanche's classic benchmarks).
See :mod:`streams.common` for the conventions every stream follows.
"""
from __future__ import annotations

import re
from typing import Any

from . import avalanche_classic, custom, digits, domains, files, glyphs, mini, paper  # noqa: F401  (registration)
from .common import StreamInfo, class_incremental, classification_dataset, domain_incremental
from .custom import callable_stream, from_arrays, is_callable_reference

DEFAULT_STREAM = "glyphs"


class StreamSource:
    """Where a run's stream comes from, resolved and validated before anything is built:
    a registered name, ``name:<value>`` of a stream with a ``suffix_option``
    (``avalanche:<Benchmark>``), a Python callable, or a benchmark object.

    :meth:`build` is the one place that decides a stream's seed: a ``seed`` option left
    unset takes the run's seed (the builders read ``opts.seed`` as it is)."""

    def __init__(self, stream: Any, options: dict[str, Any]):
        from clplatform.errors import UserError
        from clplatform.options import options_dict
        from clplatform.registry import STREAMS
        self.options = dict(options)
        self.benchmark = None
        self.entry = self.parsed = None
        if not isinstance(stream, str):
            if not (hasattr(stream, "train_stream") and hasattr(stream, "test_stream")):
                raise UserError(f"a stream is a name or an Avalanche benchmark, not a "
                                f"{type(stream).__name__}")
            if self.options:
                raise UserError("stream options do not apply to a benchmark object")
            self.benchmark = custom.complete_benchmark(stream, "in-memory")
            self.name = self.benchmark.info.name
            self._options_dict = options_dict
            return
        self.name = stream
        head = stream.partition(":")[0]
        if head not in STREAMS.names() and is_callable_reference(stream):
            self._options_dict = options_dict
            return
        try:
            self.entry, values = STREAMS.resolve(stream, self.options)
        except UserError as exc:
            if stream in STREAMS.names() or head in STREAMS.names():
                raise
            raise UserError(f"{exc}, or a Python callable file.py:function / "
                            "package.module:function") from None
        self.parsed = self.entry.make_options(values, f"stream {stream!r}")
        self._options_dict = options_dict

    def build(self, seed: int):
        """The benchmark; ``seed``: the run's seed, for a stream whose own is unset."""
        if self.benchmark is not None:
            return self.benchmark
        if self.entry is None:
            return callable_stream(self.name, self.options, seed)
        if hasattr(self.parsed, "seed") and self.parsed.seed is None:
            self.parsed.seed = seed
        return self.entry.builder(self.parsed)

    def config(self) -> dict[str, Any]:
        """The resolved stream options (after ``build``) for config.json."""
        if self.parsed is not None:
            return self._options_dict(self.parsed)
        return {k: custom._literal(v) for k, v in self.options.items()}

    @property
    def label(self) -> str:
        """A file-name-safe short name for run directories."""
        tail = self.name.rsplit("/", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-") or "stream"


__all__ = ["StreamInfo", "StreamSource", "class_incremental", "classification_dataset",
           "domain_incremental", "from_arrays", "DEFAULT_STREAM"]
