"""CPU thread counts of a run: one place that decides them, so no default oversubscribes.

OpenMP worker threads spin at their barriers: two runs whose torch threads together exceed the
cores they share slow down by an order of magnitude, not by the share they lose (measured on 2
cores: a 2-thread run next to one other 1-thread process fell from ~50 to 2-3 steps/s). So:

* a run uses ``--threads`` intra-op threads and one inter-op thread; the default is
  ``$OMP_NUM_THREADS`` when set (an explicit choice) and otherwise the cores this process may run
  on (``os.sched_getaffinity``: a container's or ``taskset``'s CPU set, not the machine's cores,
  which is what torch would pick by itself);
* the suite runs ``parallel`` runs at once and gives each ``cores // parallel`` threads.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("pyscorepen")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity set; ``os.cpu_count`` where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` if set to a positive integer, else :func:`available_cores`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (``threads`` or :func:`default_threads`) and one inter-op
    thread. Returns the intra-op count in effect."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        from pyscorepen.errors import PyScorePenError
        raise PyScorePenError(f"--threads must be at least 1, got {n}.")
    cores = available_cores()
    if n > cores:
        log.warning("--threads %d is more than the %d cores this process may use: OpenMP threads will "
                    "share cores and slow each other down", n, cores)
    torch.set_num_threads(n)
    try:   # only possible before the first inter-op parallel work of the process
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch.get_num_threads()


def divide_cores(parallel: int, cores: int | None = None) -> int:
    """Threads for each of ``parallel`` concurrent runs on ``cores`` cores (default: this process's):
    ``cores // parallel``, at least 1 (more runs than cores then share cores one thread each)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, parallel))
