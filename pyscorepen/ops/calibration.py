"""Per-machine calibrations of the automatic CPU policy: where they live, what they are keyed by,
and the rules that turn measured speed ratios into a threshold or a limit.

The built-in policy (:data:`pyscorepen.ops.backend.CPP_MIN_ROWS`, :data:`~pyscorepen.ops.backend.
CPP_MAX_ROWS` and their per-vendor tables) was measured on a few machines. ``python -m
pyscorepen.calibrate`` measures the same shape classes on *this* machine and stores the thresholds
and limits here; :func:`pyscorepen.ops.backend.cpp_min_rows` and :func:`~pyscorepen.ops.backend.
cpp_max_rows` then use them in place of the built-in ones, but only for the exact machine, ISA, thread count, torch version
and extension build they were measured with (:func:`machine_key`). A rebuilt extension, another
torch or another thread count falls back to the built-in tables until it is calibrated too.

The file: ``$PYSCOREPEN_CPU_POLICY`` if that names a file, else
``$XDG_CACHE_HOME/pyscorepen/cpu_policy.json`` (``~/.cache/...``); ``PYSCOREPEN_CPU_POLICY=builtin``
ignores every calibration. It holds a list of entries (machine key, thresholds, limits, the measured
ratios); calibrating again replaces the entry of the same key.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import platform
import warnings
from pathlib import Path

import torch

log = logging.getLogger("pyscorepen")

ENV_VAR = "PYSCOREPEN_CPU_POLICY"
BUILTIN = "builtin"
FORMAT = 1
NEVER = 1 << 62   # a threshold no batch reaches: auto never picks cpp (pyscorepen.ops.backend.NEVER)


def policy_file() -> Path | None:
    """The calibration file this process reads and ``calibrate`` writes; None with
    ``PYSCOREPEN_CPU_POLICY=builtin``."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value == BUILTIN:
        return None
    if value:
        return Path(value).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyscorepen" / "cpu_policy.json"


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of Linux ``/proc/cpuinfo`` ({} where it cannot be read)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if not line.strip():
                    break   # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (:func:`cpuinfo`), with family/model/stepping where the name is generic
    (VMs often report just "AMD EPYC"); ``platform.processor()`` elsewhere."""
    fields = cpuinfo()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']} model {fields.get('model', '?')} stepping {fields.get('stepping', '?')})"
    return name


@functools.lru_cache(maxsize=1)
def extension_build() -> str | None:
    """A short hash of the compiled extension's file: kernels change with the build, so a calibration
    holds for the build it measured. None without the extension."""
    from pyscorepen.ops import _registry
    if not _registry.EXTENSION_LOADED:
        return None
    import pyscorepen._C as extension
    digest = hashlib.sha256()
    with open(extension.__file__, "rb") as so:
        for block in iter(lambda: so.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def machine_key(isa: str | None, threads: int) -> dict:
    """What a calibration is valid for: this CPU, the C++ ops' ISA, the torch thread count, torch's
    version and the extension build."""
    return {"cpu": cpu_model(), "isa": isa, "threads": int(threads), "torch": torch.__version__,
            "build": extension_build()}


def min_rows_threshold(ratios: dict[int, float]) -> int:
    """The smallest measured batch from which cpp was at least as fast as the reference at *every*
    larger measured batch too (ratio = ref time / cpp time >= 1); :data:`NEVER` when it lost at the
    largest. The built-in tables follow the same rule."""
    threshold = NEVER
    for batch in sorted(ratios, reverse=True):
        if ratios[batch] < 1.0:
            break
        threshold = batch
    return threshold


def max_rows_limit(ratios: dict[int, float]) -> int:
    """The rule of the whole-step ops' limits (:data:`pyscorepen.ops.backend.CPP_MAX_ROWS`): the
    largest measured batch up to which cpp was at least as fast as the module path at *every* smaller
    measured batch too; :data:`NEVER` (no limit) when it won at every batch measured, 0 (never) when
    it lost at the smallest."""
    limit = 0
    for batch in sorted(ratios):
        if ratios[batch] < 1.0:
            return limit
        limit = batch
    return NEVER


class CalibrationError(ValueError):
    """A calibration file that cannot be used (unreadable, not JSON, another format)."""


def read_entries(path: Path) -> list[dict]:
    """The entries of ``path`` ([] if it does not exist); :class:`CalibrationError` if unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CalibrationError(f"{path}: {err.strerror or err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path}: not JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), list):
        raise CalibrationError(f"{path}: not a pyscorepen CPU policy file of format {FORMAT}")
    entries = []
    for entry in data["entries"]:
        thresholds = entry.get("thresholds") if isinstance(entry, dict) else None
        limits = entry.get("limits", {}) if isinstance(entry, dict) else None
        if not (isinstance(thresholds, dict) and isinstance(entry.get("machine"), dict)
                and all(isinstance(v, int) and v >= 1 for v in thresholds.values())):
            raise CalibrationError(f"{path}: an entry without a machine key or with a threshold that is not a "
                                   "positive integer")
        if not (isinstance(limits, dict) and all(isinstance(v, int) and v >= 0 for v in limits.values())):
            raise CalibrationError(f"{path}: an entry with a batch limit that is not an integer >= 0")
        entries.append(entry)
    return entries


def write_entry(path: Path, entry: dict) -> None:
    """Add ``entry`` to ``path`` (atomically), replacing the thresholds and limits it measured in the
    entry with the same machine key (the other shape classes' stay). An unusable existing file is
    replaced, and said so."""
    try:
        entries = read_entries(path)
    except CalibrationError as err:
        log.warning("replacing an unusable CPU policy file: %s", err)
        entries = []
    for old in entries:   # a calibration of some shape classes keeps the others' earlier thresholds
        if old["machine"] == entry["machine"]:
            entry = {**entry, "thresholds": {**old["thresholds"], **entry["thresholds"]},
                     "limits": {**old.get("limits", {}), **entry.get("limits", {})},
                     "ratios": {**old.get("ratios", {}), **entry.get("ratios", {})}}
    _write_entries(path, [e for e in entries if e["machine"] != entry["machine"]] + [entry])


def forget(path: Path, match: dict) -> int:
    """Remove the entries whose machine key contains ``match``; returns how many."""
    entries = read_entries(path)
    kept = [e for e in entries if any(e["machine"].get(k) != v for k, v in match.items())]
    if len(kept) != len(entries):
        _write_entries(path, kept)
    return len(entries) - len(kept)


def _write_entries(path: Path, entries: list[dict]) -> None:
    from pyscorepen.runs import write_json   # strict JSON, atomic (temp file, fsync, rename)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": FORMAT, "entries": entries})


@functools.lru_cache(maxsize=None)
def _entries_cached(path: Path | None) -> tuple[dict, ...]:
    if path is None:
        return ()
    try:
        return tuple(read_entries(path))
    except CalibrationError as err:
        warnings.warn(f"pyscorepen: ignoring the CPU policy calibration ({err}); the built-in policy applies. "
                      f"Recalibrate with `python -m pyscorepen.calibrate`, or set {ENV_VAR}={BUILTIN}.",
                      stacklevel=2)
        return ()


@functools.lru_cache(maxsize=None)
def calibrated_entry(isa: str | None, threads: int) -> dict | None:
    """The calibration of this machine at ``isa`` and ``threads`` threads, or None. Cached (it runs
    on every automatic dispatch): :func:`clear_cache` reads the file, and ``$PYSCOREPEN_CPU_POLICY``,
    again."""
    if isa is None:
        return None
    entries = _entries_cached(policy_file())
    if not entries:   # no calibration: skip hashing the extension for the key
        return None
    key = machine_key(isa, threads)
    for entry in entries:
        if entry["machine"] == key:
            return entry
    return None


def clear_cache() -> None:
    """Read ``$PYSCOREPEN_CPU_POLICY`` and the file again on the next lookup (after ``calibrate``
    wrote it, or in tests that change either)."""
    _entries_cached.cache_clear()
    calibrated_entry.cache_clear()


def new_entry(isa: str, threads: int, thresholds: dict[str, int], ratios: dict[str, dict[int, float]],
              rounds: int, limits: dict[str, int] | None = None) -> dict:
    """A calibration of ``isa`` at ``threads`` threads: the shape classes' ``thresholds``, the
    whole-step ops' ``limits`` and the ref / cpp ``ratios`` per class and batch they came from."""
    return {"machine": machine_key(isa, threads), "thresholds": thresholds, "limits": limits or {},
            "ratios": {k: {str(b): round(r, 4) for b, r in v.items()} for k, v in ratios.items()},
            "rounds": rounds, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
