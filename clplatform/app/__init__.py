"""The application layer: what a user drives — one run (:mod:`.runner`), a grid of runs
(:mod:`.sweep`), the command line (:mod:`.cli`). It imports the kernel (``clplatform/*.py``)
and the components (``clplatform.streams``, ``clplatform.strategies``,
``clplatform.reports``); nothing below it imports it."""
