"""The contract between the platform and its components, in one place.

**Traits** — what the platform must know about a registered component before building it,
declared as keyword arguments of ``@register_strategy``/``@register_stream``/
``@register_backbone`` and kept as a frozen record (:class:`StrategyTraits`,
:class:`ComponentTraits`); an unknown keyword is an error naming it.

**Strategy hooks** — what the platform asks of a built strategy (an Avalanche training
template) besides ``train(experience)``: :class:`StrategyHooks` declares every optional hook
with its default. Built-in strategies derive from ``clplatform.strategies.Strategy``, which
mixes it into Avalanche's ``SupervisedTemplate``; a plain Avalanche template (e.g. the
baselines) is used as it is and gets the defaults (:func:`hooks`).

This module imports neither torch nor Avalanche: ``clplat list`` reads the traits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones import Backbone, ClassifierModel


@dataclass(frozen=True)
class TrainDefaults:
    """Training settings a strategy uses when the user sets none (``[train]``, ``--epochs``,
    ``--batch-size``, ``--lr``): the platform's, overridden per strategy by the
    ``train_defaults`` trait. The one place these numbers live."""
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.003

    def updated(self, values: Mapping[str, Any] | None) -> "TrainDefaults":
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown training default {unknown[0]!r}; valid: epochs, "
                            "batch_size, lr")
        return dataclasses.replace(self, **values)


@dataclass
class TrainSettings:
    """Resolved training settings shared by all strategies (``[train]`` in a config file);
    unset values are the platform's :class:`TrainDefaults`."""
    epochs: int = TrainDefaults.epochs
    batch_size: int = TrainDefaults.batch_size
    lr: float = TrainDefaults.lr
    seed: int = 0
    device: str = "cpu"
    # 0: by device. 256 on a GPU; 128 on a CPU, where bigger batches outgrow the caches
    # (one evaluation pass of vit-glyphs over 992 test images: 0.28 s at 128, 0.49 s at 256)
    eval_batch_size: int = 0
    #: fp32, bf16 or fp16: autocast on the device, fp32 master weights (clplatform.precision)
    precision: str = "fp32"
    #: GiB of frozen activations (tokens, features) a strategy may cache per experience on its
    #: device; beyond it the frozen part is recomputed per batch (same records)
    cache_gib: float = 4.0
    #: worker processes that decode and transform images (DataLoader num_workers) for the
    #: training loader and for reading experiences into tensors; 0: the main process
    data_workers: int = 0

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_gib * 2 ** 30)

    def __post_init__(self) -> None:
        if not self.eval_batch_size:
            self.eval_batch_size = 256 if str(self.device).startswith("cuda") else 128


@dataclass
class StrategyContext:
    """What a strategy is built with: the backbone, the stream's metadata, the training
    settings, the plugins its template must be given (the evaluator among them) and where it
    reports rounds of label queries (active strategies)."""
    backbone: "Backbone"
    info: Any                      # clplatform.streams.StreamInfo
    train: TrainSettings
    plugins: list = field(default_factory=list)
    avalanche_evaluator: Any = None  # an EvaluationPlugin; default: none (no Avalanche metrics)
    #: ``report_round(strategy, round, labels_used, **values)``: the evaluator's round records
    report_round: Callable[..., None] | None = None

    def classifier(self, freeze_backbone: bool = False) -> "ClassifierModel":
        """Backbone + Avalanche ``IncrementalClassifier`` (grows with the classes seen)."""
        from avalanche.models import IncrementalClassifier

        from .backbones import ClassifierModel
        model = ClassifierModel(self.backbone, IncrementalClassifier(
            self.backbone.num_features, initial_out_features=1))
        return model.freeze_backbone() if freeze_backbone else model

    def sgd(self, params: Iterable["torch.nn.Parameter"], momentum: float = 0.9,
            weight_decay: float = 0.0) -> "torch.optim.Optimizer":
        import torch
        return torch.optim.SGD(params, lr=self.train.lr, momentum=momentum,
                               weight_decay=weight_decay)

    def template_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every Avalanche template takes from the context."""
        from avalanche.training.plugins import EvaluationPlugin
        return {"train_mb_size": self.train.batch_size, "train_epochs": self.train.epochs,
                "eval_mb_size": self.train.eval_batch_size, "device": self.train.device,
                "plugins": list(self.plugins),
                # no Avalanche metrics or loggers: clplatform's evaluator records everything
                "evaluator": self.avalanche_evaluator or EvaluationPlugin(loggers=[])}


@dataclass(frozen=True)
class ComponentTraits:
    """Traits of a stream or backbone."""
    #: how ``clplat list`` and error messages show the name (e.g. ``timm:<model-name>``)
    display: str | None = None
    #: ``name:<value>`` sets this option (``timm:resnet18`` -> model_name="resnet18")
    suffix_option: str | None = None
    #: the entry point (``module:object``) of an installed plugin that registered it
    plugin: str | None = None


@dataclass(frozen=True)
class StrategyRecords:
    """What a strategy's report section is drawn from: the records of the runs of the
    strategies sharing the section, on one stream (pandas tables as
    :class:`clplatform.reports.RunSet` holds them, filtered)."""
    stream: str
    strategies: tuple[str, ...]
    runs: Any               # one row per run: identity, group label, settings, summary
    accuracy: Any           # accuracy records
    experiences: Any        # experience records, with the strategies' own columns
    rounds: Any             # round records of active strategies (empty when none)
    configs: Mapping[str, dict]  # run name -> resolved configuration (hyper-parameters)
    group_by: str           # the column of ``runs``/``experiences`` runs are grouped by
    colors: Mapping[str, tuple]  # group -> matplotlib colour, as in the rest of the report


@dataclass(frozen=True)
class ReportItem:
    """One item of a strategy's report section: a matplotlib figure (embedded, then closed)
    or a table, with its caption."""
    caption: str
    figure: Any = None
    table: Any = None       # a pandas DataFrame


@dataclass(frozen=True, eq=False)
class ReportSection:
    """A section a strategy contributes to ``report.html`` and the comparison report (the
    ``report`` trait): ``build(records)`` turns a :class:`StrategyRecords` into
    :class:`ReportItem` s, an empty list when the records hold nothing to show (old records
    without the columns). Strategies registered with the same section share one section on
    the same axes (the prompt methods' selection accuracy)."""
    title: str
    build: Callable[[StrategyRecords], list[ReportItem]]


@dataclass(frozen=True)
class StrategyTraits(ComponentTraits):
    """Traits of a strategy."""
    #: trained once on the whole stream (``strategy.train(list_of_experiences)``)
    joint: bool = False
    #: experience 0 is labelled, later ones come with labels only through an oracle handed to
    #: ``train(experience, oracle=...)``; its options define ``budget_per_round`` and ``rounds``
    active: bool = False
    #: writes a checkpoint after every experience; ``clplat run --resume`` works
    resumable: bool = False
    #: training settings the strategy does not read (setting them is a warning)
    unused_train: tuple[str, ...] = ()
    #: training settings used when the user sets none
    train_defaults: TrainDefaults = field(default_factory=TrainDefaults)
    #: iterations with the same batch shape can cost different FLOPs: count every iteration
    varying_iteration_cost: bool = False
    #: the section the strategy adds to reports, drawn from its records
    report: ReportSection | None = None
    #: trains PYRA's token-merging modulation (backbone option ``pyra=true``) with its
    #: adapters or prompts (:func:`clplatform.models.tome.pyra_to_train`)
    trains_pyra: bool = False


def make_traits(cls: type, kind: str, name: str, values: Mapping[str, Any]):
    """``cls(**values)`` with the keyword arguments of a ``register`` call; an unknown one is
    a ``TypeError`` naming it and the valid ones (a typo such as ``resumeable=True`` must not
    pass silently)."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise TypeError(f"unknown trait {unknown[0]!r} of {kind} {name!r}; valid traits: "
                        f"{', '.join(valid)}")
    values = dict(values)
    if "train_defaults" in values and not isinstance(values["train_defaults"], TrainDefaults):
        values["train_defaults"] = TrainDefaults().updated(values["train_defaults"])
    if "unused_train" in values:
        values["unused_train"] = tuple(values["unused_train"])
    return cls(**values)


class StrategyHooks:
    """The optional hooks of a strategy, with their defaults. Everything the platform reads
    from a strategy besides Avalanche's template interface is declared here.

    Set by the platform:

    - ``context``: the :class:`clplatform.strategies.StrategyContext` the strategy was built
      with (backbone, stream metadata, training settings, plugins, ``report_round``).

    Read by the platform:

    - :attr:`iteration_kind` — FLOP counting: the evaluator counts one iteration per distinct
      (batch shape, ``iteration_kind``) and reuses the count for the others; a strategy whose
      iterations of one shape differ in cost sets it before each iteration (or registers
      ``varying_iteration_cost=True`` to have every iteration counted).
    - :attr:`builds_own_optimizers` — the strategy builds its optimizers within an experience,
      so the template's optimizer is not checkpointed.
    - :meth:`experience_extras` — extra columns of the experience records.
    - :meth:`selected_experiences` — task/prompt selection, scored by the evaluator.
    - :meth:`checkpoint_state` / :meth:`restore_checkpoint_state` — what a resume needs beyond
      the model's state dict, the optimizer and the Avalanche plugins the platform knows.

    Handed to the strategy: the label oracle of an active strategy, as the ``oracle`` keyword
    of ``train(experience, oracle=...)`` (Avalanche passes it on to ``_train_exp``); rounds of
    label queries go to the evaluator through ``context.report_round``.
    """

    context: Any = None
    iteration_kind: Hashable | None = None
    builds_own_optimizers: bool = False

    def experience_extras(self) -> dict[str, Any]:
        """Values stored in the experience records after each trained experience, prefixed
        with the strategy's name (``sema.adapters_added``): numbers or short strings.
        ``params_added`` and ``stored_bytes`` feed the expansion and memory columns."""
        return {}

    def selected_experiences(self) -> "torch.Tensor | None":
        """After an evaluation forward: the experience each sample of the batch was routed
        to (prompt/task selection), or None when the strategy selects nothing. The evaluator
        records how often it matches the sample's true experience."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """Tensors and plain values a resume needs besides the model's weights."""
        return {}

    def restore_checkpoint_state(self, state: dict[str, Any], experiences: list) -> None:
        """Called on resume before the weights are loaded, with :meth:`checkpoint_state`'s
        dict and the finished experiences: regrow the modules the strategy added."""


_DEFAULT_HOOKS = StrategyHooks()


def hooks(strategy: Any) -> StrategyHooks:
    """``strategy`` itself when it declares the hooks, else their defaults (a plain Avalanche
    template): the one way the platform reads a hook."""
    return strategy if isinstance(strategy, StrategyHooks) else _DEFAULT_HOOKS


RoundReporter = Callable[..., None]


def check_strategy(built: Any, name: str) -> Any:
    """What a strategy builder returned, checked: an Avalanche training template; hooks of
    the old duck-typed kind (methods named like the hooks on a class that does not derive
    from :class:`StrategyHooks`) would be ignored, so they are an error naming them."""
    if not callable(getattr(built, "train", None)) or not hasattr(built, "model"):
        raise UserError(f"strategy {name!r} built a {type(built).__name__}, not an Avalanche "
                        "training template (derive from clplatform.strategies.Strategy)")
    if not isinstance(built, StrategyHooks):
        declared = [h for h in ("experience_extras", "checkpoint_state", "selected_experiences",
                                "restore_checkpoint_state", "iteration_kind")
                    if hasattr(type(built), h)]
        if declared:
            raise UserError(f"strategy {name!r} ({type(built).__name__}) defines "
                            f"{', '.join(declared)} but does not derive from "
                            "clplatform.strategies.Strategy (or clplatform.contract."
                            "StrategyHooks), so the platform would never call them")
    return built
