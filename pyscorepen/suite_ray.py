"""Running the suite's train commands as Ray tasks (``python -m pyscorepen.suite ... --ray [ADDRESS]``).

Each (algorithm, dataset, seed) is one Ray task that runs the same ``python -m
pyscorepen.train`` command the local suite runs, with a CPU request equal to the run's threads
(``--threads N`` among its arguments, else ``--threads-per-run``; OMP/MKL_NUM_THREADS are set
to it). Fault tolerance comes from the run folder: the train CLI resumes a folder from its last
checkpoint, so a retried task continues where the lost one stopped. A task is retried (up to
``--ray-max-retries`` times) when

* its Ray worker or node dies (Ray's own task retry; the train process dies with its worker,
  through ``PR_SET_PDEATHSIG``, so two processes never write one folder), or
* its train process is killed by a signal (exit status < 0, or 137/143 from a shell or from
  the SIGTERM handler): a preempted or OOM-killed run.

A run that exits with an error of its own (a bad config, a divergence) is not retried: it would
fail the same way. Every node must see the suite folder at the same path (a shared filesystem)
and have pyscorepen installed. ``pip install -e .[ray]`` installs Ray.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator

from pyscorepen.errors import PyScorePenError

RETRY_EXIT_CODES = (137, 143)
"""Exit statuses that mean "killed from outside" (128 + SIGKILL / SIGTERM)."""


class RunKilled(RuntimeError):
    """The train process was killed by a signal; Ray retries the task (``retry_exceptions``)."""


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise PyScorePenError(
            f"--ray needs the 'ray' package, which is not installed ({err}). Install it with "
            "`pip install -e .[ray]` (or `pip install ray`) on this machine and on every node of the "
            "cluster, or run the suite without --ray (locally, one run after another).") from None
    return ray


def threads_of(cmd: list[str], default: int) -> int:
    """The run's ``--threads N`` (the last one wins, as in the CLI), else ``default``."""
    threads = default
    for i, arg in enumerate(cmd):
        if arg == "--threads" and i + 1 < len(cmd):
            threads = int(cmd[i + 1])
        elif arg.startswith("--threads="):
            threads = int(arg.split("=", 1)[1])
    return max(1, threads)


def _die_with_parent() -> None:   # runs in the child between fork and exec (Linux)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def train_task(cmd: list[str], threads: int) -> dict:
    """Body of the Ray task: one train process. Raises :class:`RunKilled` when it was killed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, *cmd[1:]]     # this node's interpreter
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if proc.returncode < 0 or proc.returncode in RETRY_EXIT_CODES:
        raise RunKilled(f"train process killed (exit {proc.returncode}): {' '.join(cmd)}")
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "stderr_tail": "\n".join(proc.stderr.strip().splitlines()[-5:]) if proc.returncode else ""}


def run_on_ray(address: str, jobs: list[tuple[tuple, list[str], int]], max_retries: int) -> Iterator[tuple[tuple, dict]]:
    """Submit every job ``(key, cmd, threads)`` as a task; yields ``(key, result)`` as runs finish.

    ``address``: ``local`` starts Ray on this machine (all its CPUs), anything else is passed to
    ``ray.init(address=...)`` (``auto``, ``host:6379``, ``ray://host:10001``). A task that still
    fails after its retries yields ``{'returncode': None, 'stderr_tail': <the Ray error>}``.
    """
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")    # no network calls home
    import logging
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=False,
                 logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise PyScorePenError(f"could not connect to the Ray cluster at {address!r}: {err}. Start one with "
                              "`ray start --head` and pass its address (or `--ray` alone for a local one).") from None
    try:
        remote = ray.remote(train_task)
        pending = {}
        for key, cmd, threads in jobs:
            ref = remote.options(num_cpus=threads, max_retries=max_retries, retry_exceptions=[RunKilled],
                                 name=f"pyscorepen.train {' '.join(map(str, key))}").remote(cmd, threads)
            pending[ref] = key
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            t0 = time.perf_counter()
            try:
                result = ray.get(done[0])
            except (ray.exceptions.RayError, RunKilled) as err:
                result = {"returncode": None, "wall_s": round(time.perf_counter() - t0, 2),
                          "stderr_tail": f"failed after {max_retries} retries: {str(err).strip()[-600:]}"}
            yield key, result
    finally:
        ray.shutdown()
