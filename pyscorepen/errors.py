"""User-facing errors: the CLIs print their message (no traceback) and exit with status 2."""


class PyScorePenError(Exception):
    """Base class of errors caused by user input (missing dataset, bad option, corrupt file)."""
