"""The one exception type for mistakes a user can make.

Anything raised as :class:`UserError` reaches the command line as one line on stderr and
exit status 2; every other exception is a bug in clplatform (or in a plugged-in component).
"""


class UserError(Exception):
    """A bad option, unknown name, malformed file or config: the user can fix it."""


# a bug's traceback is saved to a file by clplatform.cache.save_traceback
