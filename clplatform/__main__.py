"""``python -m clplatform``: the ``clplat`` command."""
from clplatform.app.cli import main

main()
