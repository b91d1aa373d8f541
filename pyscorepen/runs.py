"""The run folder contract (other tools rely on it):

    runs/<algo>-<task>-s<seed>/
      config.json       resolved TrainConfig
      cpu_policy.json   the automatic CPU kernel policy the run started with (ISA, threads, source,
                        thresholds, limits: pyscorepen.ops.backend.cpu_policy); later processes keep it
      metrics.jsonl     one JSON object per evaluation: step, return_mean, return_std,
                        normalized_score_mean, losses, penalty and rollout statistics
                        (every key, its unit and meaning: docs/metrics.md)
      summary.json      algo, task, seed, steps, return_mean, return_std, normalized_score_*,
                        (cliff) final_distance_to_goal_mean
      checkpoint-<step>.pt  the last K training states (agent, model buffer, RNG, logging
                        state) for resuming; the newest readable one is used
      dynamics-fit-<epoch>.pt, score-fit-<step>.pt  in-progress pretraining (removed when done)
      debug-<step>.pt   state at a divergence (NaN/inf); never used for resuming
      dynamics.pt       trained dynamics ensemble      score.pt   trained score model
                        (each {'fingerprint', 'state_dict'}: see model_fingerprint)
      pretrain.json     their training statistics (epochs, holdout MSE, DSM loss, samples/s)
      policy.pt         final agent state
      eval_returns.json final evaluation's per-episode returns (VaR curve of the report)
      penalty_sample.json  penalties on sampled model and real transitions (pyscorepen.diagnostics)
      learning_curve.png, penalty_heatmap.png (cliff)
      tb/               TensorBoard event files (only with --tensorboard)
      report.html       written by `python -m pyscorepen.report <run>`
      .lock             who holds the folder (see RunLock); locked while a process trains in it
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pyscorepen.errors import PyScorePenError

log = logging.getLogger(__name__)

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT, DYNAMICS, SCORE, POLICY = "checkpoint-<step>.pt", "dynamics.pt", "score.pt", "policy.pt"
PRETRAIN = "pretrain.json"
CHECKPOINT_PREFIX, DYNAMICS_FIT, SCORE_FIT, DEBUG = "checkpoint", "dynamics-fit", "score-fit", "debug"
HEATMAP, CURVE = "penalty_heatmap.png", "learning_curve.png"
EVAL_RETURNS, PENALTY_SAMPLE = "eval_returns.json", "penalty_sample.json"
CPU_POLICY = "cpu_policy.json"

log = logging.getLogger(__name__)


def default_run_dir(algo: str, task: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_")
    return Path("runs") / f"{algo}-{slug}-s{seed}"


# ------------------------------------------------------------------------------ durable writes
def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable) -> None:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temp file in the same folder, which
    is flushed, fsynced and renamed over ``path`` (then the folder is fsynced). A crash at any
    point leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj, path: Path) -> None:
    import torch
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def dumps_json(obj, **kwargs) -> str:
    """The one JSON encoder of the library: strict JSON, so NaN/inf raise ValueError instead of
    writing ``NaN``/``Infinity`` that other tools cannot read."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def write_json(path: Path, obj) -> None:
    """Strict, atomic, indented JSON file (config.json, summary.json, pretrain.json)."""
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


def first_nonfinite(values: dict, limit: float = math.inf) -> tuple[str, float] | None:
    """The first (key, value) of ``values`` whose number is NaN, +-inf or beyond +-``limit``;
    None if all are fine."""
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= limit:
            return key, value
    return None


def remove_stale_temps(run_dir: Path) -> None:
    """Delete temp files left by a write that a SIGKILL cut short (see :func:`atomic_write`)."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


# ------------------------------------------------------------------------------ metrics, summary
def append_metrics(run_dir: Path, row: dict) -> None:
    line = dumps_json(row) + "\n"          # raises on NaN/inf before anything is written
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class RunFileError(PyScorePenError):
    """A run-folder file that is missing, truncated or corrupt, or saved for other data."""


def read_json(path: Path, what: str) -> dict:
    """A JSON file of a run folder; a cut or corrupt file is a :class:`RunFileError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise RunFileError(f"{path} ({what}) does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path} ({what}) is cut or corrupt: {err}. Restore it, or delete the run folder "
                           "to start over.") from err


def load_torch_file(path: Path, what: str, map_location="cpu", weights_only: bool = True, hint: str = ""):
    """``torch.load`` of a run-folder file; a missing, truncated or corrupt one is a :class:`RunFileError`
    naming the file, what it holds and ``hint`` (how to recover)."""
    import torch
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except FileNotFoundError as err:
        raise RunFileError(f"{path} ({what}) does not exist. {hint}".strip()) from err
    except Exception as err:  # noqa: BLE001 - torch raises many types (EOFError, RuntimeError, pickle errors)
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        raise RunFileError(f"{path} ({what}) cannot be read, it is truncated or corrupt "
                           f"({type(err).__name__}: {first[:200]}). {hint}".strip()) from err


def load_state(module, state: dict, path: Path, what: str, hint: str = "") -> None:
    """``module.load_state_dict(state)``; a state of other shapes or keys is a :class:`RunFileError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFileError(f"{path} ({what}) does not fit this run's model ({first[:300]}). {hint}".strip()) from err


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl. A cut last line (a run killed while writing it) is left out with a
    warning; a corrupt line before it is a :class:`RunFileError`."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == len(lines) - 1:
                log.warning("%s: the last line is cut (%s); it is ignored", path, err)
                break
            raise RunFileError(f"{path} line {i + 1} is corrupt ({err}). Delete that line, or the run "
                               "folder to start over.") from err
        rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (and a line cut by a kill)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(dumps_json(r) + "\n" for r in rows))


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)


# ------------------------------------------------------------------------------ rotated checkpoints
def checkpoint_files(run_dir: Path, prefix: str = CHECKPOINT_PREFIX) -> list[tuple[int, Path]]:
    """``<prefix>-<index>.pt`` files of ``run_dir``, newest (highest index) first."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.pt")
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob(f"{prefix}-*.pt")
             if (m := pattern.fullmatch(p.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(run_dir: Path, prefix: str = CHECKPOINT_PREFIX) -> Path | None:
    """The newest ``<prefix>-<index>.pt`` of ``run_dir`` (unvalidated), or None."""
    found = checkpoint_files(run_dir, prefix)
    return found[0][1] if found else None


def save_checkpoint(state: dict, run_dir: Path, index: int, keep: int, prefix: str = CHECKPOINT_PREFIX) -> Path:
    """Atomically write ``<prefix>-<index>.pt`` and delete all but the newest ``keep`` of them."""
    path = Path(run_dir) / f"{prefix}-{index}.pt"
    atomic_torch_save(state, path)
    for _, old in checkpoint_files(run_dir, prefix)[max(keep, 1):]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def remove_checkpoints(run_dir: Path, prefix: str) -> None:
    for _, path in checkpoint_files(run_dir, prefix):
        with contextlib.suppress(OSError):
            path.unlink()


def load_latest_checkpoint(run_dir: Path, required: Iterable[str], prefix: str = CHECKPOINT_PREFIX,
                           map_location=None, quarantine: bool = True) -> dict | None:
    """The newest ``<prefix>-<index>.pt`` that loads and holds the ``required`` keys; None if none.

    An unreadable or incomplete one is renamed to ``*.pt.corrupt`` (out of the rotation; not with
    ``quarantine=False``, for read-only tools) with a one-line warning saying which older
    checkpoint is used instead.
    """
    import torch
    candidates = checkpoint_files(run_dir, prefix)
    for i, (_, path) in enumerate(candidates):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
            missing = [k for k in required if k not in state] if isinstance(state, dict) else ["(not a dict)"]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            return state
        except Exception as err:  # noqa: BLE001 - any failure means "not a good checkpoint"
            reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
            later = (f"falling back to {candidates[i + 1][1].name}" if i + 1 < len(candidates)
                     else "no older one left; starting this stage over")
            moved = f"moved to {path.name}.corrupt, " if quarantine else ""
            log.warning("%s is unreadable (%s); %s%s", path, reason, moved, later)
            if quarantine:
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".corrupt"))
    return None


def save_debug_checkpoint(state: dict, run_dir: Path, index: int | str) -> Path:
    """``debug-<index>.pt`` (a step, or a pretraining stage): the state at a divergence, kept
    apart from the resumable checkpoints."""
    path = Path(run_dir) / f"{DEBUG}-{index}.pt"
    atomic_torch_save(state, path)
    return path


# ------------------------------------------------------------------------------ interrupts
class GracefulInterrupt:
    """While active, SIGINT/SIGTERM only set :attr:`signum`; the training loops poll
    :attr:`requested` after each update, checkpoint and stop. A second signal exits at once
    (the newest checkpoint is intact: every write is atomic)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self) -> "GracefulInterrupt":
        with contextlib.suppress(ValueError):          # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class RunInUseError(PyScorePenError):
    """Another live process holds the run folder (:class:`RunLock`)."""


def _proc_locks() -> str | None:
    """The kernel's table of held file locks (Linux ``/proc/locks``), None where there is none."""
    try:
        return Path("/proc/locks").read_text()
    except OSError:
        return None


class RunLock:
    """Exclusive use of a run folder by this process while it trains there.

    Two processes in one folder (the same command started twice, or two suites with the same
    --out) would overwrite each other's checkpoints, metrics and models. The lock is an ``flock``
    on ``<folder>/.lock``, so the OS releases it when the holder ends in any way, ``kill -9``
    included: there is no stale lock to clean up. The file keeps the holder's pid, host and start
    time for the error message; it is never deleted (deleting a lock file races with a process
    that opened it just before). Where ``fcntl`` does not exist (Windows) nothing is locked.
    """

    NAME = ".lock"

    def __init__(self, run_dir: Path, option: str = "--out"):
        self.run_dir, self.option, self.fd = Path(run_dir), option, None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:   # no flock on this platform
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / self.NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PyScorePenError(f"{self.option} {self.run_dir}: the run folder is not writable "
                                  f"({err.strerror or err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that wrote nothing yet"
            os.close(fd)
            raise RunInUseError(
                f"{self.option} {self.run_dir} is in use by another process ({holder}). Two processes in one run "
                "folder would overwrite each other's checkpoints and results. Wait for it to finish, or stop it "
                "(SIGTERM/Ctrl-C checkpoints, and rerunning the same command resumes), or use another "
                f"{self.option}.") from None
        import socket
        import time
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)   # releases the flock
            self.fd = None

    @classmethod
    def holder(cls, run_dir: Path) -> str | None:
        """Who trains in ``run_dir`` now ("pid N on host, since ..."), or None when nobody does.

        Read without taking the lock: a probe that locked the file, even for a moment, could make a
        run starting at that moment fail with :class:`RunInUseError`. On Linux the kernel's table of
        held locks (``/proc/locks``) says whether a flock is held on this ``.lock`` file (its device
        and inode); elsewhere the holder's pid is checked for life (``os.kill(pid, 0)``), which a
        pid reused after the holder ended would fool. The text is what the holder wrote."""
        path = Path(run_dir) / cls.NAME
        try:
            text = path.read_text(errors="replace").strip()
            stat = path.stat()
        except OSError:
            return None
        table = _proc_locks()
        if table is not None:
            device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
            held = any(fields[1] == "FLOCK" and device in fields
                       for fields in (line.split() for line in table.splitlines()) if len(fields) > 1)
            return (text or "a process that wrote nothing yet") if held else None
        match = re.match(r"pid (\d+) on (\S+),", text)
        if match is None:
            return None
        import socket
        if match.group(2) != socket.gethostname():
            return text + " (another host: not checked)"
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            return None
        except PermissionError:   # alive, another user's
            pass
        return text


def fault_injection_point(point: str, index: int) -> None:
    """Fault injection for the kill-and-resume tests: with ``PYSCOREPEN_TEST_KILL_AT=point:index``
    (e.g. ``dynamics_epoch:3``), the process sends itself ``PYSCOREPEN_TEST_SIGNAL`` (KILL, TERM
    or INT; default KILL) when it reaches that point."""
    target = os.environ.get("PYSCOREPEN_TEST_KILL_AT")
    if target and target == f"{point}:{index}":
        sig = getattr(signal, "SIG" + os.environ.get("PYSCOREPEN_TEST_SIGNAL", "KILL"))
        os.kill(os.getpid(), sig)


def summarize(result, task) -> dict[str, float]:
    """Statistics of an evaluation: return, normalized score and VaR (see
    :func:`pyscorepen.evaluation_metrics.summarize_returns`), plus the cliff task's final
    distance to the goal."""
    from pyscorepen.evaluation_metrics import summarize_returns
    out = summarize_returns(result.returns, task)
    if result.final_distances:
        d = np.asarray(result.final_distances)
        out["final_distance_to_goal_mean"] = float(d.mean())
        out["final_distance_to_goal_std"] = float(d.std())
    if result.trajectories and getattr(task, "trajectory_metrics", None) is not None:
        out.update(task.trajectory_metrics(result.trajectories))   # risky task: hazard-entry rate
    return out


# ------------------------------------------------------------------------------ config changes
def flatten(d: dict, prefix: str = "") -> dict:
    """{'cliff': {'dataset_size': 3}} -> {'cliff.dataset_size': 3}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, ignore=()) -> list[str]:
    """'cliff.dataset_size: 2000 → 3000' for every differing field (dotted names), ``ignore`` left out."""
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in ignore or key in ignore:
            continue
        if json.dumps(a.get(key)) != json.dumps(b.get(key)):
            changes.append(f"{key}: {json.dumps(a.get(key, '(absent)'))} → {json.dumps(b.get(key, '(absent)'))}")
    return changes


def trained_steps(run_dir: Path) -> int:
    """Gradient steps a run folder has already recorded (summary.json, else its last metrics row)."""
    run_dir = Path(run_dir)
    steps = 0
    if (run_dir / SUMMARY).exists():
        try:
            steps = int(read_json(run_dir / SUMMARY, "the run summary").get("steps", 0))
        except (RunFileError, AttributeError, TypeError, ValueError) as err:   # rewritten when the run ends
            log.warning("%s is unreadable (%s); counting the steps of %s instead", run_dir / SUMMARY, err, METRICS)
    rows = read_metrics(run_dir)
    return max([steps] + [int(r.get("step", 0)) for r in rows])


# ------------------------------------------------------------------------------ model fingerprints
def dataset_identity(task) -> dict:
    """What identifies a task's offline data: its name, size, dims, source info and a content hash."""
    data = task.dataset
    digest = hashlib.sha256()
    for t in (data.obs, data.actions, data.rewards, data.next_obs, data.terminals):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    source = {k: v for k, v in task.info.items()
              if k in ("dataset_id", "goal", "boxes", "dataset_size", "dataset_seed", "max_action")}
    return {"task": task.name, **source, "num_transitions": len(data), "obs_dim": data.obs_dim,
            "action_dim": data.action_dim, "sha256": digest.hexdigest()[:16]}


def model_fingerprint(kind: str, identity: dict, model_config) -> dict:
    """What a trained model depends on: ``identity`` (:func:`dataset_identity`) and its config, less the
    fields the config class lists in ``NOT_IN_FINGERPRINT`` (how the model is computed, not what it
    is: a model saved before such a field existed, or with it set otherwise, still matches)."""
    from dataclasses import asdict
    config = asdict(model_config)
    for name in getattr(model_config, "NOT_IN_FINGERPRINT", ()):
        config.pop(name, None)
    return json.loads(json.dumps({"kind": kind, "dataset": identity, "config": config}))


def save_model(path: Path, state_dict: dict, fingerprint: dict) -> None:
    """dynamics.pt / score.pt: ``{'fingerprint', 'state_dict'}``, written atomically (:func:`atomic_write`)."""
    atomic_torch_save({"fingerprint": fingerprint, "state_dict": state_dict}, path)


def load_model(path: Path, what: str, fingerprint: dict | None, map_location="cpu", hint: str = "") -> dict:
    """The state dict of a saved model, after checking its fingerprint against ``fingerprint``.

    A mismatch is a :class:`RunFileError` naming each difference; a file saved before fingerprints
    existed (a bare state dict) loads with a warning."""
    saved = load_torch_file(path, what, map_location=map_location, hint=hint)
    if not isinstance(saved, dict):
        raise RunFileError(f"{path} ({what}) does not hold a model state. {hint}".strip())
    if "state_dict" not in saved or "fingerprint" not in saved:
        log.warning("%s has no fingerprint (saved by an older version); cannot check it matches this run", path)
        return saved
    if fingerprint is not None:
        changes = config_changes(saved["fingerprint"], fingerprint)
        if changes:
            raise RunFileError(f"{path} ({what}) was trained for other data or another model config: "
                               + "; ".join(changes[:8]) + (" …" if len(changes) > 8 else "")
                               + f" (saved → this run). {hint}".rstrip())
    return saved["state_dict"]
