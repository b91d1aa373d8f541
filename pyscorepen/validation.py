"""Input validation shared by every entry point, run before any file is written.

Value ranges are declared once, in the docstring of each config field, as
``Range: [lo, hi]`` (interval notation; ``(``/``)`` exclude the bound, ``inf`` is unbounded).
For a tuple field the range applies to every element and the tuple must not be empty; a
field typed ``X | None`` also accepts None. Floats must be finite whatever the range says.
``--help`` therefore shows each range, and :func:`check_ranges` enforces the same text.

:func:`validate_train_config` adds the checks across fields and against the registries
(algorithm and penalty names, elites <= ensemble members, cliff boxes, device, output folder);
:func:`validate_task` the checks that need the loaded task. Every problem found is reported in
one :class:`ConfigError` (a :class:`~pyscorepen.errors.PyScorePenError`), named by its CLI flag.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import os
import re
import textwrap
import types
import typing
from pathlib import Path

from pyscorepen.errors import PyScorePenError

_RANGE = re.compile(r"Range:\s*([\[(])\s*([-+.\w]+)\s*,\s*([-+.\w]+)\s*([\])])")


class ConfigError(PyScorePenError):
    """An invalid option value (out of its documented range, unknown name, inconsistent fields)."""


@dataclasses.dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool

    def __contains__(self, x: float) -> bool:
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below

    def __str__(self) -> str:
        fmt = lambda v: "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.15g}"
        return f"{'[' if self.lo_closed else '('}{fmt(self.lo)}, {fmt(self.hi)}{']' if self.hi_closed else ')'}"


def parse_range(doc: str | None) -> Interval | None:
    """The ``Range: [lo, hi)`` declared in a field docstring (None if there is none)."""
    m = _RANGE.search(doc or "")
    if m is None:
        return None
    return Interval(float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]")


@functools.lru_cache(maxsize=None)
def field_docstrings(cls: type) -> dict[str, str]:
    """{field name: docstring} of a dataclass, read from its source (the string under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):   # no source (frozen app): no ranges to read
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = nxt.value.value
    return docs


def _strip(tp):
    """(base type, is_tuple, allows_none, extras) of a field annotation."""
    extras = ()
    if typing.get_origin(tp) is typing.Annotated:
        tp, *extras = typing.get_args(tp)
    allows_none = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        allows_none = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else tp
    is_tuple = typing.get_origin(tp) is tuple
    if is_tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        tp = args[0] if args and all(a is args[0] for a in args) else object
    return tp, is_tuple, allows_none, tuple(extras)


def numeric_fields(cls: type) -> list[tuple[str, type, bool]]:
    """(name, int|float, is_tuple) of every numeric field of a dataclass (bools excluded)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        base, is_tuple, _, _ = _strip(hints[f.name])
        if base in (int, float):
            out.append((f.name, base, is_tuple))
    return out


def nested_fields(cls: type) -> list[tuple[str, type, bool]]:
    """(name, dataclass type, flag prefix omitted) of the nested config groups of a dataclass."""
    import tyro
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        base, _, _, extras = _strip(hints[f.name])
        if dataclasses.is_dataclass(base):
            out.append((f.name, base, tyro.conf.OmitArgPrefixes in extras))
    return out


def flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def range_problems(obj, prefix: str = "") -> list[str]:
    """Every numeric field of ``obj`` (recursively) outside its documented range."""
    cls = type(obj)
    docs = field_docstrings(cls)
    problems = []
    for name, base, is_tuple in numeric_fields(cls):
        value = getattr(obj, name)
        if value is None:
            continue
        interval = parse_range(docs.get(name))
        values = list(value) if is_tuple else [value]
        shown = " ".join(map(str, values)) if is_tuple else str(value)
        if is_tuple and not values:
            problems.append(f"{flag(prefix, name)} needs at least one value")
            continue
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (base is int and not float(v).is_integer()):
                problems.append(f"{flag(prefix, name)} {shown}: expected {base.__name__} values")
                break
            if not math.isfinite(v):
                problems.append(f"{flag(prefix, name)} {shown}: must be a finite number")
                break
            if interval is not None and v not in interval:
                what = "every value must be in" if is_tuple else "must be in"
                problems.append(f"{flag(prefix, name)} {shown}: {what} {interval}")
                break
    for name, sub, omit_prefix in nested_fields(cls):
        problems += range_problems(getattr(obj, name), prefix if omit_prefix else f"{prefix}{name}.")
    return problems


def check_ranges(obj) -> None:
    raise_problems(range_problems(obj))


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid option(s): " + "; ".join(problems) + ". Nothing was written; "
                          "see --help for each option's valid range.")


# ------------------------------------------------------------------------------------------ checks
def device_problems(device: str) -> list[str]:
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return [f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)"]
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return [f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu"]
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return [f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)"]
    elif dev.type not in ("cpu", "mps", "xpu"):
        return [f"--device {device}: unsupported device type '{dev.type}'"]
    return []


def output_dir_problems(path: str | Path, option: str = "--out") -> list[str]:
    """A folder that will be created or written: it must not be a file and must be writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return [f"{option} {path}: is a file, not a folder"]
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{option} {path}: {existing} is a file, not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{option} {path}: {existing} is not writable"]
    return []


def validate_train_config(config) -> None:
    """Everything about a :class:`~pyscorepen.config.TrainConfig` that needs no data."""
    from pyscorepen.algos import ALGORITHMS
    from pyscorepen.penalties import PENALTIES
    problems = range_problems(config)
    if config.algo not in ALGORITHMS:
        problems.append(f"--algo {config.algo}: unknown; choose one of {', '.join(ALGORITHMS)}")
    else:
        algorithm = ALGORITHMS[config.algo]
        names = algorithm.penalties if config.penalties is None else config.penalties
        unknown = [n for n in names if n not in PENALTIES]
        if unknown:
            problems.append(f"--penalties {' '.join(names)}: unknown {', '.join(unknown)}; "
                            f"available: {', '.join(sorted(PENALTIES))}")
        elif names and not algorithm.uses_model:
            problems.append(f"--penalties {' '.join(names)}: penalties need model rollouts; "
                            f"--algo {config.algo} has none")
    dyn = config.dynamics
    if dyn.num_elites > dyn.ensemble_size:
        problems.append(f"--dynamics.num-elites {dyn.num_elites}: more elites than ensemble members "
                        f"(--dynamics.ensemble-size {dyn.ensemble_size})")
    if config.ref_min is not None and config.ref_max is not None and not config.ref_max > config.ref_min:
        problems.append(f"--ref-max {config.ref_max} must be larger than --ref-min {config.ref_min}")
    if config.task == "cliff":
        try:
            config.cliff.box_array()
        except ValueError as err:
            problems.append(f"--boxes {' '.join(map(str, config.cliff.boxes))}: {err}")
    problems += device_problems(config.device)
    if config.out is not None:
        problems += output_dir_problems(config.out)
    if config.pretrained_from is not None and not Path(config.pretrained_from).is_dir():
        problems.append(f"--pretrained-from {config.pretrained_from}: no such run folder")
    raise_problems(problems)


def validate_task(config, task) -> None:
    """Checks that need the loaded task (dataset size, reference returns)."""
    from pyscorepen.algos import ALGORITHMS
    problems = []
    n = len(task.dataset)
    holdout = min(int(n * config.dynamics.holdout_ratio), config.dynamics.max_holdout)
    if ALGORITHMS[config.algo].uses_model and (holdout < 1 or holdout >= n):
        problems.append(f"the dataset has {n} transitions: --dynamics.holdout-ratio "
                        f"{config.dynamics.holdout_ratio} leaves {holdout} for the holdout and {n - holdout} "
                        "for training; both need at least one")
    lo, hi = task.ref_min_score, task.ref_max_score
    if lo is not None and hi is not None and not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        detail = ""
        if task.name == "cliff":
            c = config.cliff
            detail = (f": with --goal {' '.join(map(str, c.goal))} no policy earns a reward in "
                      f"--episode-steps {c.episode_steps} (the goal must be reachable: within "
                      f"{c.init_half_width + c.max_action * c.episode_steps:g} of the origin per axis)")
        problems.append(f"task {task.name}: the random-policy and expert reference returns are {lo} and {hi}, "
                        f"so the normalized score is undefined{detail}")
    raise_problems(problems)
