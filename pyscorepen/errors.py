"""User-facing errors: the CLIs print their message (no traceback) and exit with status 2."""


class PyScorePenError(Exception):
    """Base class of errors caused by user input (missing dataset, bad option, corrupt file)."""


def report(fn, *args) -> int:
    """Run ``fn(*args)`` for a CLI: print its JSON-able result, or a user error as one line (exit 2)."""
    import json
    import sys
    try:
        result = fn(*args)
    except PyScorePenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
