"""What to run, resolved: a run's specification (names and raw options, from a config file
and the command line or the Python API), :func:`resolve` — the one place that validates a
specification (names, options, training settings) without building anything, used by a run,
a dry run and every cell of a sweep — and the specification of a stored run
(:func:`resume_spec`), which a resume starts from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..contract import TrainDefaults, TrainSettings
from ..errors import UserError
from ..options import build_options, opt
from ..registry import BACKBONES, STRATEGIES, Entry

DEFAULT_STRATEGY = "naive"
#: the backbone of a run that names none; the environment variable names another
#: (the test suite sets it to the smaller, faster vit-glyphs)
DEFAULT_BACKBONE = "vit-mini"
BACKBONE_ENV = "CLPLATFORM_BACKBONE"
DEFAULT_OUT = "runs"
DEFAULT_SEED = 0
IMAGE_CACHE_GIB = 50.0  # ImageNet-R at 256 x 256 (train + test): 24000 x 192 KiB = 4.4 GiB
CONFIG_TABLES = ("strategy", "stream", "backbone", "train")


@dataclass
class TrainOptions:
    """``[train]`` options; unset values come from the strategy's defaults, then these."""
    epochs: int | None = opt(None, "training epochs per experience (default: the strategy's, "
                                   f"else {TrainDefaults.epochs})", min=1, max=10000)
    batch_size: int | None = opt(None, "training mini-batch size (default: the strategy's, "
                                       f"else {TrainDefaults.batch_size})", min=1, max=65536)
    lr: float | None = opt(None, f"learning rate (default: the strategy's, else "
                                 f"{TrainDefaults.lr})", min=0, max=100)
    seed: int = opt(DEFAULT_SEED, "seed of Python, NumPy, torch and of the stream", min=0,
                    max=2**31 - 1)
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    out: str = opt(DEFAULT_OUT, "folder that receives the run directory")
    flops: str = opt("sampled", "training FLOP counting: each distinct iteration once "
                     "(sampled), every operation (full), or none (off)",
                     choices=("sampled", "full", "off"))
    precision: str = opt("fp32", "training precision: fp32, or autocast to bf16/fp16 on the "
                         "device with fp32 master weights (fp16 on CUDA: loss scaling)",
                         choices=("fp32", "bf16", "fp16"))
    cache_gib: float = opt(TrainSettings.cache_gib, "GiB of frozen activations a strategy may "
                           "cache per experience on its device (beyond: recomputed per batch, "
                           "same records)", min=0)
    data_workers: int = opt(0, "processes that decode and transform images (file-backed "
                                "streams); 0: the main process. A stream with random "
                                "augmentation draws differently with another count",
                            min=0, max=64)
    image_cache: str | None = opt(None, "folder of memory-mapped uint8 copies of file "
                                        "streams' decoded images, reused by later epochs "
                                        "and runs (same records); none: held in memory")
    image_cache_gib: float = opt(IMAGE_CACHE_GIB, "disk budget of --image-cache (all its "
                                 "files); an experience beyond it is decoded from its "
                                 "files at every read",
                                 min=0)
    keep_model: bool = opt(False, "keep the final model (RUN_DIR/checkpoint.pt, resumable "
                                  "strategies) for `clplat compress`")

    def validate(self) -> None:
        from ..store import check_output_folder  # pandas: not for `clplat list`
        check_output_folder(self.out)
        if self.image_cache and os.path.exists(self.image_cache) and \
                not os.path.isdir(self.image_cache):
            raise UserError(f"--image-cache {self.image_cache} is not a folder")


def env_backbone() -> str:
    """The backbone ``$CLPLATFORM_BACKBONE`` names ("" when unset or blank)."""
    return os.environ.get(BACKBONE_ENV, "").strip()


def default_backbone() -> str:
    """The backbone of a run that names none: ``$CLPLATFORM_BACKBONE``, else vit-mini."""
    return env_backbone() or DEFAULT_BACKBONE


@dataclass
class RunSpec:
    """What to run: names and raw (unvalidated) options, as given by the user."""
    strategy: str = DEFAULT_STRATEGY
    stream: str = "glyphs"
    backbone: str = field(default_factory=default_backbone)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    stream_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    # --log: tools the run also reports to (clplatform.app.loggers); config.json "loggers"
    loggers: list[str] = field(default_factory=list)


def read_config_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A TOML file with ``[strategy]``, ``[stream]``, ``[backbone]``, ``[train]`` tables."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"invalid TOML in {path}: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_TABLES))
    if unknown:
        raise UserError(f"unknown table or key {unknown[0]!r} in {path}; "
                        f"valid tables: {', '.join(CONFIG_TABLES)}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{name!r} in {path} must be a table ([{name}])")
        for key, value in table.items():
            if isinstance(value, dict):
                raise UserError(f"nested table {name}.{key} in {path} is not allowed")
    return data


def preset_tables(name: str, config: Mapping[str, dict] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """The config tables of recipe preset ``name`` (:mod:`clplatform.app.presets`) with a
    config file's tables over them: a file's value wins, and a file naming another component
    than the preset drops the preset's options of that component."""
    from .presets import get_preset
    preset = get_preset(name)
    if not preset.is_recipe:
        raise UserError(f"preset {name!r} compares {len(preset.strategies)} strategies: "
                        f"use clplat sweep --preset {name}")
    merged = {}
    for key in CONFIG_TABLES:
        under, over = dict(preset.tables.get(key, {})), dict((config or {}).get(key, {}))
        if "name" in over and "name" in under and over["name"] != under["name"]:
            under = {}
        merged[key] = {**under, **over}
    return merged


def make_spec(config: str | os.PathLike | None = None, *, preset: str | None = None,
              strategy: str | None = None,
              stream: str | None = None, backbone: str | None = None,
              strategy_options: Mapping[str, Any] | None = None,
              stream_options: Mapping[str, Any] | None = None,
              backbone_options: Mapping[str, Any] | None = None,
              loggers: list[str] | tuple[str, ...] | str | None = None,
              **train: Any) -> RunSpec:
    """Merge a recipe preset, a config file and explicit values (explicit values win, then
    the file's). ``loggers``: ``--log`` values (names or comma lists,
    :func:`clplatform.app.loggers.parse_loggers`)."""
    from .loggers import parse_loggers
    data = read_config_file(config) if config else {}
    if preset is not None:
        data = preset_tables(preset, data)
    tables = {k: dict(data.get(k, {})) for k in CONFIG_TABLES}
    names = {k: tables[k].pop("name", None) for k in ("strategy", "stream", "backbone")}
    for key, value in names.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"[{key}] name must be a string, got {value!r}")
    spec = RunSpec()
    spec.strategy = strategy or names["strategy"] or spec.strategy
    spec.stream = stream or names["stream"] or spec.stream
    spec.backbone = backbone or names["backbone"] or spec.backbone
    # options in the file belong to the component named there; a different name on the
    # command line starts from that component's defaults
    keep = {k: (names[k] is None or names[k] == getattr(spec, k)) for k in names}
    spec.strategy_options = {**(tables["strategy"] if keep["strategy"] else {}),
                             **(strategy_options or {})}
    spec.stream_options = {**(tables["stream"] if keep["stream"] else {}),
                           **(stream_options or {})}
    spec.backbone_options = {**(tables["backbone"] if keep["backbone"] else {}),
                             **(backbone_options or {})}
    spec.train = {**tables["train"], **{k: v for k, v in train.items() if v is not None}}
    spec.loggers = parse_loggers(loggers)
    return spec


def train_options(spec: RunSpec, strategy_entry) -> tuple[TrainOptions, list[str]]:
    """The validated ``[train]`` settings of ``spec`` — what a run checks first and a sweep
    checks for every cell before any starts — and the settings given that the strategy does
    not use (registered ``unused_train``): those are left out, unchecked (``--epochs 0`` means
    nothing to a strategy that takes no epochs)."""
    unused = [k for k in strategy_entry.traits.unused_train
              if spec.train.get(k) is not None]
    used = {k: v for k, v in spec.train.items() if k not in unused}
    return build_options(TrainOptions, used, "[train]"), unused


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    return device


@dataclass
class Resolved:
    """A specification checked and resolved, nothing built: the registry entries and the
    validated options of strategy, stream and backbone, and the training settings."""
    spec: "RunSpec"
    strategy: Entry
    hparams: Any                 # the strategy's options instance
    stream: Any                  # clplatform.streams.StreamSource
    backbone: Entry
    backbone_options: Any        # the backbone's options instance
    train: TrainOptions
    unused: list[str]            # training settings given that the strategy does not use
    loggers: list[str] = field(default_factory=list)  # checked: known and importable

    @property
    def defaults(self) -> TrainDefaults:
        return self.strategy.traits.train_defaults

    def settings(self) -> TrainSettings:
        """The training settings: the user's, else the strategy's defaults; the device
        resolved (``auto``: a GPU when there is one)."""
        train, defaults = self.train, self.defaults
        return TrainSettings(
            epochs=train.epochs if train.epochs is not None else defaults.epochs,
            batch_size=train.batch_size or defaults.batch_size,
            lr=train.lr if train.lr is not None else defaults.lr,
            seed=train.seed, device=resolve_device(train.device), precision=train.precision,
            cache_gib=train.cache_gib, data_workers=train.data_workers)

    @property
    def label(self) -> str:
        """Strategy, stream and seed: the start of the run directory's name."""
        return f"{self.spec.strategy}-{self.stream.label}-s{self.train.seed}"


def resolve(spec: RunSpec, check_stream: bool = True) -> Resolved:
    """Every name and option of ``spec`` checked (one line naming what is wrong), nothing
    built: strategy, stream (a name, ``avalanche:<Benchmark>``, a Python callable or a
    benchmark object) and backbone (a name or ``timm:<model-name>``) with their options, and
    the ``[train]`` settings, and the loggers (known names, packages that import).
    ``check_stream=False``: the stream is left as named (``Resolved.stream`` None), for a
    preset's recipe shown without its dataset."""
    from clplatform.streams import StreamSource
    from .loggers import check_loggers
    strategy = STRATEGIES.get(spec.strategy)
    stream = StreamSource(spec.stream, spec.stream_options) if check_stream else None
    try:
        backbone, backbone_values = BACKBONES.resolve(spec.backbone, spec.backbone_options)
    except UserError as exc:
        if spec.backbone == env_backbone():
            raise UserError(f"{exc} (${BACKBONE_ENV} names it)") from None
        raise
    train, unused = train_options(spec, strategy)
    hparams = strategy.make_options(spec.strategy_options, f"strategy {spec.strategy!r}")
    backbone_options = backbone.make_options(backbone_values, f"backbone {spec.backbone!r}")
    if getattr(backbone_options, "pyra", False) and not strategy.traits.trains_pyra:
        able = [n for n in STRATEGIES.names() if STRATEGIES.get(n).traits.trains_pyra]
        raise UserError(f"strategy {spec.strategy!r} does not train PYRA (backbone option "
                        f"pyra=true); the strategies that do: {', '.join(able)}; without "
                        "pyra, merge_tokens alone is ToMe")
    loggers = check_loggers(spec.loggers)
    return Resolved(spec, strategy, hparams, stream, backbone, backbone_options, train, unused,
                    loggers)


# ----------------------------------------------------------------------------- stored runs
# keys config.json adds to a stream's options (derived from the built stream)
DERIVED_STREAM_KEYS = ("name", "scenario", "classes", "experiences_in_stream")


def resume_spec(run_dir: str | os.PathLike) -> RunSpec:
    """The RunSpec of the run in ``run_dir``, from its config.json (a damaged one is a
    one-line error naming it)."""
    from ..store import CONFIG_FILE, load_run
    run = load_run(run_dir)
    try:
        return spec_from_config(run.config)
    except UserError as exc:
        raise UserError(f"{Path(run_dir) / CONFIG_FILE}: {exc}") from None
    except (LookupError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"corrupt file {Path(run_dir) / CONFIG_FILE}: {type(exc).__name__} "
                        f"{exc}".strip()) from None


def spec_from_config(config: dict[str, Any]) -> RunSpec:
    """The RunSpec that reproduces a run from its resolved config.json."""
    strategy, stream, backbone = (dict(config[k]) for k in ("strategy", "stream", "backbone"))
    train = config["train"]
    spec = RunSpec()
    spec.strategy = strategy.pop("name")
    spec.strategy_options = strategy
    spec.stream = stream["name"]
    spec.stream_options = {k: v for k, v in stream.items() if k not in DERIVED_STREAM_KEYS}
    if "domains" in stream and not stream["domains"]:
        spec.stream_options.pop("domains")
    spec.backbone = backbone.pop("name")
    spec.backbone_options = backbone
    spec.loggers = list(config.get("loggers", []))  # absent before --log existed
    unused = STRATEGIES.get(spec.strategy).traits.unused_train
    spec.train = {"seed": train["seed"], "device": train.get("device_requested", "auto"),
                  "flops": train.get("flops", "sampled"), "out": train["out"],
                  # absent before --precision and the cache budget existed
                  "precision": train.get("precision", "fp32"),
                  "cache_gib": train.get("cache_gib", TrainSettings.cache_gib),
                  "data_workers": train.get("data_workers", 0),
                  "image_cache": train.get("image_cache"),
                  "image_cache_gib": train.get("image_cache_gib", IMAGE_CACHE_GIB),
                  "keep_model": train.get("keep_model", False),
                  **{k: train[k] for k in ("epochs", "batch_size", "lr") if k not in unused}}
    return spec
