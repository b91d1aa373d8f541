"""The C allocator settings of a pyscorepen command-line process.

A training step allocates and frees several MB of activations and gradients: the dynamics fit
(7 members x 4 x 200 SiLU, 256 rows) allocates 8 saved-activation buffers of 1.5 MB and the weight
gradients on every step, and COMBO's critic chunks allocate 2 MB buffers. glibc gives freed memory at
the top of the heap back to the OS once more than ``M_TRIM_THRESHOLD`` bytes are free there. By
default that threshold is 2x the largest block mmapped so far, a few MB. So every step gives its
buffers back, and the next step faults them in again, page by page. Measured on the dynamics fit,
one thread, AMD EPYC Zen 5: 420-840 minor page faults per step and ~10 % of the step's samples in
the kernel (perf). With both thresholds raised: 1-3 faults per step and 4-16 % less CPU time per
step, in four interleaved process pairs (benches/README.md, "Session 10"). `tests/test_allocator.py`
checks the page faults.

:func:`tune_malloc` sets, once per process:

* ``M_TRIM_THRESHOLD`` to 1 GiB: freed memory stays mapped, up to 1 GiB more than the peak in use;
* ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's upper limit): blocks up to 32 MiB come from the reusable
  heap. Larger ones (datasets, the model buffer) are still mmapped and unmapped on free.

Only the command-line entry points call it (``pyscorepen.train``, ``.collect``, ``.profile``). They
own their process. Code that imports pyscorepen as a library keeps its allocator as it is, and can
call :func:`tune_malloc` itself. Nothing is changed when:

* ``PYSCOREPEN_MALLOC=default`` is set;
* the process already chose its allocator settings: ``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_ARENA_MAX`` in the environment, or jemalloc / tcmalloc /
  mimalloc in ``LD_PRELOAD``;
* the C library is not glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("pyscorepen")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's <malloc.h> parameter numbers
TRIM_THRESHOLD_BYTES = 1 << 30                   # 1 GiB
MMAP_THRESHOLD_BYTES = 32 << 20                  # 32 MiB: HEAP_MAX_SIZE / 2 on 64-bit glibc, the largest accepted
_USER_CHOICES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_done: bool | None = None


def _skip_reason() -> str | None:
    if os.environ.get("PYSCOREPEN_MALLOC", "").strip().lower() == "default":
        return "PYSCOREPEN_MALLOC=default"
    for name in _USER_CHOICES:
        if name in os.environ:
            return f"${name} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _OTHER_ALLOCATORS:
        if name in preload:
            return f"{name} is preloaded"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    return None


def tune_malloc() -> bool:
    """Raise glibc's trim and mmap thresholds for this process (module docstring). Returns True if
    both were set (now or by an earlier call), False if skipped or refused. Idempotent."""
    global _done
    if _done is not None:
        return _done
    reason = _skip_reason()
    if reason is not None:
        log.debug("allocator left as it is: %s", reason)
        _done = False
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as error:
        log.debug("allocator left as it is: %s", error)
        _done = False
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success, 0 when glibc refuses the value
    _done = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD,
                                                                                   MMAP_THRESHOLD_BYTES))
    if not _done:
        log.warning("glibc refused the allocator thresholds; training steps may page-fault their buffers")
    return _done


def buffers_kept() -> bool:
    """True when :func:`tune_malloc` set its thresholds in this process, so a step's freed buffers
    stay mapped for the next step. The automatic choice of ``dynamics_fit_step`` asks this
    (pyscorepen/ops/dynamics_fit_step.py): its step frees ~16 MB at once, which glibc's default
    thresholds hand back to the OS and fault in again on every step."""
    return bool(_done)
