"""clplatform: a continual-learning simulation platform on Avalanche streams and timm backbones.

Python API::

    import clplatform
    run = clplatform.run(strategy="naive", stream="glyphs", epochs=1)
    run.summary["final_accuracy"], run.accuracy, run.experiences, run.config
    clplatform.load_run("runs/<id>")
    clplatform.resume("runs/<id>")       # an interrupted run, after its last experience
    clplatform.compress("runs/<id>", method="resrep", ratio=0.6)  # run with keep_model=True
"""
import warnings as _warnings

# Noise from dependencies that says nothing about the user's run: Avalanche warns when no
# logger is attached (clplatform records metrics itself), about its own deprecated internals,
# and qpsolvers (imported by Avalanche's GEM) about optional solvers.
_warnings.filterwarnings("ignore", message="No loggers specified")
_warnings.filterwarnings("ignore", message="no QP solver found")
_warnings.filterwarnings("ignore", message="Call to deprecated function update",
                         category=DeprecationWarning)
_warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"avalanche\.")
# Avalanche 0.6's ParamData.expand (EWC/SI with growing heads) indexes with a list
_warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional")
# a registered strategy class is called as Class(context, options): Avalanche 0.6 wants
# keyword-only constructor arguments and says so on every build
_warnings.filterwarnings("ignore", message="Avalanche is transitioning to strategy constructors")

from .errors import UserError  # noqa: E402
from .registry import (lazy_exports, register_backbone, register_strategy,  # noqa: E402
                       register_stream)

# torch, Avalanche and pandas load with the first run or record, not with the package
# (``clplat list`` and ``--help`` need none of them); the application layer is named here
# by module name only (the kernel imports nothing of it)
__getattr__ = lazy_exports(__name__, {
    "run": ".app.runner", "resume": ".app.runner", "compress": ".app.compress", "Run": ".store", "load_run": ".store",
    "create_stream": ".app.factories", "create_backbone": ".app.factories",
    "create_strategy": ".app.factories", "Strategy": ".strategies.base"})

__version__ = "0.2.0"

__all__ = ["run", "resume", "compress", "load_run", "Run", "UserError", "register_strategy", "register_stream",
           "register_backbone", "create_strategy", "create_stream", "create_backbone"]
