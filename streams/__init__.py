"""Stream builders: each registers an Avalanche benchmark under a name (``@register_stream``).

Built-in offline streams: ``glyphs`` (default), ``glyphs-domains``, ``glyphs-pretrain``,
``digits``. See :mod:`streams.common` for the conventions every stream follows.
"""
from . import digits, glyphs  # noqa: F401  (registration)
from .common import StreamInfo, class_incremental, classification_dataset, domain_incremental

DEFAULT_STREAM = "glyphs"

__all__ = ["StreamInfo", "class_incremental", "classification_dataset", "domain_incremental",
           "DEFAULT_STREAM"]
