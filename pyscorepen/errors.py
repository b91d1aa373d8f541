"""User-facing errors: the CLIs print their message (no traceback) and exit with status 2.

Every entry point runs through :func:`cli_main`, which also accepts ``--debug`` (anywhere on
the command line) to show the full traceback instead of the one-paragraph message.
"""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_HELP = " Pass --debug to see the traceback of an error."


class PyScorePenError(Exception):
    """Base class of errors caused by user input (missing dataset, bad option, corrupt file)."""


def _message(err: BaseException) -> str:
    if isinstance(err, PyScorePenError):
        return str(err)
    # an OSError that no check anticipated (disk full, permission, ...): still one paragraph
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return f"{err.strerror or err}{where}"


def cli_main(fn, argv: list[str] | None, print_result: bool = True) -> int:
    """Run ``fn(argv)`` for a CLI. A JSON-able result is printed (exit 0), an int is returned
    as the exit status, a user error (:class:`PyScorePenError`, OSError) prints one paragraph
    and exits 2. ``--debug`` anywhere in ``argv`` is removed and re-raises such errors."""
    import json
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        result = fn(argv)
    except (PyScorePenError, OSError) as err:
        if debug:
            raise
        print(f"error: {_message(err)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(result, int):
        return result
    if print_result:
        print(json.dumps(result, indent=2))
    return 0


class DivergenceError(PyScorePenError):
    """A loss, Q-value, rollout statistic or evaluation return became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint; the same command resumes.

    Not a :class:`PyScorePenError`: the CLI exits 0 after SIGINT and 143 (128 + 15) after SIGTERM.
    """

    def __init__(self, signum: int, where: str, run_dir):
        import signal
        self.signum, self.where, self.run_dir = signum, where, run_dir
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name} during {where}")

    @property
    def exit_code(self) -> int:
        import signal
        return 143 if self.signum == signal.SIGTERM else 0


def report(fn, *args) -> int:
    """Run ``fn(*args)`` for a CLI: print its JSON-able result, or a user error as one line (exit 2)."""
    return cli_main(lambda _argv: fn(*args), [])
