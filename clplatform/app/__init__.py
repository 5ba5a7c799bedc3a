"""The application layer: what a user drives — the specification of a run and its one
resolution (:mod:`.spec`: ``resolve(spec)``, ``resume_spec(run_dir)``), one run and its
resume (:mod:`.runner`), the public factories (:mod:`.factories`), a grid of runs
(:mod:`.sweep`), the command line (:mod:`.cli`). It imports the kernel (``clplatform/*.py``)
and the components (``clplatform.streams``, ``clplatform.strategies``, ``clplatform.reports``,
``clplatform.models``); nothing below it imports it (``tests/test_layers.py``)."""
