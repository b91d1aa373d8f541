"""Per-dataset default hyperparameters (``defaults.toml``, sources cited in the file)."""
from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    import tomli as tomllib

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")

_LEVEL_ALIASES = {"mixed": "medium-replay", "med-expert": "medium-expert"}


def load_defaults(path: str | Path | None = None) -> dict:
    with open(path or DEFAULTS_FILE, "rb") as f:
        return tomllib.load(f)


def dataset_key(task: str) -> str | None:
    """'mujoco/hopper/medium-v0' (or any path ending in <env>/<level>-vN) -> 'hopper-medium'."""
    parts = [p for p in re.split(r"[/\\]", task.rstrip("/\\")) if p and p != "data"]
    if len(parts) < 2:
        return None
    level = re.sub(r"-v\d+$", "", parts[-1])
    return f"{parts[-2].lower()}-{_LEVEL_ALIASES.get(level, level)}"


def dataset_defaults(algo: str, task: str, defaults: dict | None = None, algorithm_wide: bool = True) -> dict:
    """The defaults.toml entries of ``algo`` for ``task``: its algorithm-wide [algorithm.<algo>]
    table (unless ``algorithm_wide`` is False), then its per-dataset table (each the algorithm's
    own or, failing that, the one of the algorithm it inherits from); later entries win."""
    defaults = load_defaults() if defaults is None else defaults
    parent = defaults.get("inherit", {}).get(algo, "")
    wide = defaults.get("algorithm", {})
    out = dict(wide.get(algo) or wide.get(parent, {})) if algorithm_wide else {}
    key = dataset_key(task)
    table = defaults.get(algo) or defaults.get(parent, {})
    if key:
        out.update(table.get(key, {}))
    return out


def preset_args(algo: str, defaults: dict | None = None) -> list[str]:
    """Train CLI arguments selecting a suite algorithm name (see [presets])."""
    defaults = load_defaults() if defaults is None else defaults
    return list(defaults.get("presets", {}).get(algo, ["--algo", algo]))


def to_cli_args(values: dict) -> list[str]:
    """{'rollout.length': 5, 'mopo_lambda': 1.0} -> ['--rollout.length', '5', '--mopo-lambda', '1.0']."""
    args: list[str] = []
    for key, value in values.items():
        *groups, name = [part.replace("_", "-") for part in key.split(".")]
        flag = "--" + ".".join([*groups, name])
        if isinstance(value, bool):   # tyro's negation of a nested flag: --group.no-name
            args.append(flag if value else "--" + ".".join([*groups, "no-" + name]))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args
