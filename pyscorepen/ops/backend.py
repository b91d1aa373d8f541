"""The one place that chooses which kernel runs an op.

Backends:

* ``ref``    the pure-PyTorch ``<op>_ref`` (any device, any dtype);
* ``cpp``    the C++ CPU kernel of the compiled extension (float32 CPU tensors);
* ``triton`` ``pyscorepen.kernels.<op>.<op>_triton`` (CUDA tensors; CPU tensors only when
             ``TRITON_INTERPRET=1`` is set, which is how it is tested without a GPU);
* ``cuda``   a CUDA kernel of the compiled extension (CUDA builds only).

Choice, per call: the ``backend=`` argument, else the ``PYSCOREPEN_BACKEND`` environment
variable, else ``auto``. An explicit request for an unavailable backend raises
:class:`BackendUnavailableError`; ``auto`` falls back along ``triton -> cuda -> ref`` for CUDA
tensors and ``cpp -> ref`` for CPU tensors, and logs (INFO, once per op/device) what it picked.

On CPU, ``auto`` also follows a measured speed policy (:data:`CPP_MIN_ROWS`): the ``cpp`` kernel
is chosen only from the batch size where it beat the reference for that op's shape class on the
ISA the C++ ops run (:func:`cpu_isa`: ``avx512``, ``avx2`` or ``generic``, the ATen fallback).
Whole-step ops that replace a module path (the fused SAC update) run only up to a batch size
instead (:data:`CPP_MAX_ROWS`), where their fused passes start to lose to the module path.
``python -m pyscorepen.calibrate`` measures those thresholds on this machine, and auto then uses them
instead (:mod:`pyscorepen.ops.calibration`; ``PYSCOREPEN_CPU_POLICY=builtin`` ignores them).
``$PYSCOREPEN_CPU_ISA`` (read once by the extension) or :func:`set_cpu_isa` picks the ISA.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
from typing import Callable, Iterator

import torch
from torch import Tensor

from pyscorepen.ops import calibration as _calibration

log = logging.getLogger("pyscorepen")

BACKENDS = ("ref", "cpp", "triton", "cuda")
ENV_VAR = "PYSCOREPEN_BACKEND"
_AUTO_ORDER = {"cuda": ("triton", "cuda", "ref"), "cpu": ("cpp", "ref")}

_REFERENCES: dict[str, Callable] = {}
_triton_cache: dict[str, Callable | None] = {}
_triton_errors: dict[str, str] = {}
_announced: set[tuple[str, str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend (or CPU ISA) cannot run this op on these tensors."""


# ------------------------------------------------------------------ CPU ISA of the C++ ops
CPU_ISAS = ("avx512", "avx2", "generic")
CPU_ISA_ENV_VAR = "PYSCOREPEN_CPU_ISA"


def _extension():
    from pyscorepen.ops import _registry
    if not _registry.EXTENSION_LOADED:
        return None
    import pyscorepen._C as extension
    return extension if hasattr(extension, "cpu_isa") else None   # None: a build older than the ISA choice


def cpu_isa() -> str | None:
    """ISA the C++ CPU ops run: ``"avx512"``, ``"avx2"`` or ``"generic"`` (ATen fallback); None
    without the extension. Raises BackendUnavailableError when ``$PYSCOREPEN_CPU_ISA`` names an ISA
    this CPU lacks (or no ISA at all)."""
    extension = _extension()
    if extension is None:
        return None
    try:
        return extension.cpu_isa()
    except ValueError as error:
        raise BackendUnavailableError(str(error)) from None


def available_cpu_isas() -> tuple[str, ...]:
    """ISAs this CPU and build support, best first (empty without the extension)."""
    extension = _extension()
    return tuple(extension.cpu_isas()) if extension is not None else ()


def avx512_emulated() -> bool:
    """True in a test build (``PYSCOREPEN_AVX512_EMULATION=1``) whose ``"avx512"`` kernels run on
    emulated intrinsics: correct, but slow, and never the automatic choice."""
    extension = _extension()
    return bool(extension is not None and getattr(extension, "avx512_emulated", lambda: False)())


def set_cpu_isa(name: str) -> str:
    """Switch the C++ CPU ops to ``name`` (one of :data:`CPU_ISAS` or ``"auto"``, the best one);
    returns the previous ISA. An ISA this CPU or build lacks raises BackendUnavailableError."""
    extension = _extension()
    if extension is None:
        raise BackendUnavailableError(f"cannot select the CPU ISA {name!r}: the C++ extension is not loaded")
    try:
        return extension.set_cpu_isa(name)
    except ValueError as error:
        raise BackendUnavailableError(str(error)) from None


@contextlib.contextmanager
def forced_cpu_isa(name: str) -> Iterator[str]:
    """``with forced_cpu_isa("avx2"):`` run the C++ CPU ops on ``name``, then restore the previous ISA."""
    previous = set_cpu_isa(name)
    try:
        yield name
    finally:
        set_cpu_isa(previous)


@contextlib.contextmanager
def requested_backend(name: str | None) -> Iterator[None]:
    """``with requested_backend("ref"):`` set ``$PYSCOREPEN_BACKEND`` to ``name`` (None: unset, i.e.
    auto) for the block, then restore what it was."""
    previous = os.environ.get(ENV_VAR)
    if name is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


# Automatic CPU policy: the smallest batch (rows) from which auto picks ``cpp`` over ``ref``, per
# op shape class and ISA (NEVER: auto always runs the reference there); below it auto runs the
# reference. backend= / $PYSCOREPEN_BACKEND run whatever they name. A threshold is the smallest
# batch from which every measured batch had cpp >= 1.0x ref, on every machine measured.
#
# Measured (python benches/cpu_policy.py, 2026-12-02): ref/cpp time ratio, thread CPU time, one
# torch thread, Intel Xeon (AVX-512, 2 vCPUs shared with ~8 other jobs, load 5-9); "avx2" ran
# with MKL / oneDNN / ATen capped to AVX2 too (what an AVX2-only CPU sees); batch: ratio.
#   rollout_step   (7 x 4x200 SiLU, score net 3x256)
#       avx512   1: 0.73  16: 1.15  64: 1.17  256: 1.28  4096: 2.03 (Zen 4, idle: 256: 1.33, 50k: 2.6)
#       avx2     1: 0.49  16: 0.97  64: 1.11  256: 1.20  4096: 2.09
#       generic  1: 1.09  16: 1.03  64: 1.05  256: 1.15  4096: 1.35
#   score_penalty  (3x256 SiLU)
#       avx512   1: 0.48  16: 1.03  64: 1.04  256: 1.16  4096: 1.24  50k: 2.66
#       avx2     1: 0.29  16: 0.91  64: 1.01  256: 1.11  4096: 1.24  50k: 2.30
#       generic  1: 0.95  16: 0.98  64: 0.95  256: 0.95  4096: 1.13  50k: 2.47
#   soft_value     (actor 2x256 ReLU, twin critics 2x256)
#       avx512   1: 1.43  16: 2.19  64: 1.73  256: 1.66  12150: 2.75
#       avx2     1: 0.79  16: 1.49  64: 1.43  256: 1.34  12150: 1.71
#       generic  1: 1.25  16: 1.15  64: 1.06  256: 1.15  12150: 1.39
#   ensemble_mlp/relu  (forward + all gradients, critics E=2 [23, 256, 256, 1], x shared)
#       avx512   1: 0.36  8: 0.47  32: 0.65  64: 0.80  128: 0.90  256: 1.07  3840: 1.13
#                (Zen 4, idle: 64: 0.99  128: 1.02  256: 1.17  3840: 1.24)
#                (Intel Xeon, idle, bench_ensemble_mlp.py 2026-12-02 16:21 UTC, best rounds:
#                 256: 0.99 (1 thread), 0.87 (2 threads); 3840: 1.25, 1.17) -> threshold 3840
#       avx2     1: 0.26  8: 0.44  32: 0.62  64: 0.79  128: 0.89  256: 0.99  3840: 0.86
#       generic  every size 0.68-0.76
#   ensemble_mlp/silu  (dynamics E=7 [23, 4x200, 36], x per member)
#       avx512   32: 0.57  64: 0.73  128: 0.78  256: 0.94  1024: 1.06   (Zen 4: 256: 0.95)
#       avx2     32: 0.67  64: 0.83  128: 0.85  256: 0.96  1024: 1.04
#       generic  every size 0.66-0.74
# "generic" was measured on x86-64 (ISA forced, MKL AVX-512 underneath); on other CPUs (aarch64)
# it is the only path and has not been measured: rerun benches/cpu_policy.py there.
NEVER = _calibration.NEVER   # a threshold no batch reaches: auto always runs the reference
CPP_MIN_ROWS: dict[str, dict[str, int]] = {
    "rollout_step": {"avx512": 16, "avx2": 64, "generic": 1},
    "score_penalty": {"avx512": 16, "avx2": 64, "generic": 4096},
    "soft_value": {"avx512": 1, "avx2": 16, "generic": 1},
    "ensemble_mlp/relu": {"avx512": 3840, "avx2": NEVER, "generic": NEVER},
    "ensemble_mlp/silu": {"avx512": 1024, "avx2": 1024, "generic": NEVER},
    # the whole fit step as one op vs the module path (rows per member): see
    # pyscorepen/ops/dynamics_fit_step.py; the SiLU ensemble's thresholds, the generic ISA unmeasured
    "dynamics_fit_step": {"avx512": 1024, "avx2": 1024, "generic": NEVER},
}


# Per CPU vendor, where the reference is much slower than on the machines measured above: torch's
# CPU GEMMs are MKL's, and MKL runs a slower code path on AMD CPUs (same-process sgemm probe 8192 x
# 256 x 256, 1 thread, on an AMD EPYC Zen 5 (family 26, full-width AVX-512): 61-98 GFLOP/s, while
# our kernels reach 190-225 GFLOP/s there). An entry replaces CPP_MIN_ROWS[shape class][ISA] on
# that vendor's CPUs; what is not listed falls back to CPP_MIN_ROWS.
#
# Measured (python benches/cpu_policy.py, 2026-12-02 session 5, thread CPU time, one torch
# thread, AMD EPYC family 26 model 2 (Zen 5), 2 vCPUs shared with two 1-thread jobs; "avx2" with
# MKL / oneDNN / ATen capped to AVX2, the stand-in for a Zen 3); batch: ref/cpp ratio.
#   rollout_step        avx512  1: 0.53  16: 1.97  64: 2.09  256: 2.17  4096: 2.70
#                       avx2    1: 0.26  16: 1.12  64: 1.22  256: 1.19  4096: 1.50
#   score_penalty       avx512  1: 0.56  16: 1.97  64: 2.20  256: 2.34  4096: 2.42  50k: 4.36
#                       avx2    1: 0.32  16: 1.11  64: 1.21  256: 1.26  4096: 1.25  50k: 2.31
#   soft_value          avx512  1: 1.35  16: 2.85  64: 2.71  256: 2.63  12150: 3.61
#                       avx2    1: 0.76  16: 1.65  64: 1.50  256: 1.42  12150: 1.91
#   ensemble_mlp/relu   avx512  1: 0.55  8: 0.91  32: 1.41  64: 1.85  128: 1.93  256: 2.43  3840: 2.30
#                       avx2    1: 0.40  8: 0.68  32: 0.89  64: 1.15  128: 1.19  256: 1.36  3840: 1.31
#   ensemble_mlp/silu   avx512  32: 1.09  64: 1.30  128: 1.27  256: 1.56  1024: 1.81
#                       avx2    32: 0.59  64: 0.86  128: 0.95  256: 1.10  1024: 1.24
# A whole dynamics-fit minibatch (Hopper sizes, E = 7, batch 256, loss + backward + Adam; idle,
# wall clock): ref 18.4 ms, cpp 13.5 ms on 1 thread (1.37x); 11.2 vs 8.3 ms on 2 threads.
# The Zen 4 figures in the comment above (ensemble SiLU 256: 0.95) predate the current ensemble
# kernels (the 256-row weight-gradient slabs) and were not re-measured: no Zen 4 this session.
#
# Checked on a native AVX2-only Zen 3 (AMD EPYC family 25 model 1; session 12, 2026-12-03, idle,
# `python benches/cpu_policy.py --rounds 7`, thread CPU time, best rounds; batch: ref/cpp):
#   rollout_step        avx2    1: 0.63  16: 1.49  64: 1.32  256: 1.22  4096: 2.02
#   score_penalty       avx2    1: 0.47  16: 1.21  64: 1.04  256: 1.01  4096: 1.30  50k: 1.88
#                               (--rounds 15: 16: 1.22  64: 1.14  256: 1.10  4096: 1.19  50k: 2.11)
#   soft_value          avx2    1: 1.81  16: 2.28  64: 1.71  256: 1.34  12150: 1.90
# and, as medians of 15-25 paired rounds after the row skew of the training operands (skewed_ld in
# csrc/pyscorepen.cpp): ensemble_mlp/relu 32: 0.92  64: 1.08  128: 1.07  256: 1.15  3840: 1.55;
# ensemble_mlp/silu 128: 0.96  256: 1.03  1024: 1.15. Every AVX2 threshold below holds there.
#
# A "<vendor>/family<N>" entry (cpu family of /proc/cpuinfo, :func:`cpu_vendor_keys`) replaces the
# vendor's entry on that family. AMD family 25 (0x19) is Zen 3 (AVX2 only, measured above) and Zen 4
# (AVX-512 on 256-bit units); Zen 5 is family 26. Measured on a Zen 4 (family 25 model 17; session
# 18, 2026-12-04, idle 2-vCPU VM; the AVX-512 kernels with 128-row slabs and the unrolled k loop),
# `python -m pyscorepen.calibrate --threads 1 2 --dry-run` twice; batch: ref/cpp, 1 / 2 threads:
#   ensemble_mlp/silu   32: 0.94 0.82 / 1.19 1.11   64: 1.11 0.90 / 1.05 1.07   128: 1.02 1.03 / 1.24 1.25
#                       256: 1.10 1.07 / 1.15 1.17   1024: 1.26 1.23 / 1.39 1.39
#   dynamics_fit_step   64: 1.25 1.26 / 1.39 1.39   128: 1.27 1.15 / 1.33 1.31   256: 1.07 1.16 / 1.18 1.22
# (64 is the smallest batch of that sweep; the Zen 5 entry's 32 was not measured here). Every other
# class held at the AMD entries: rollout_step 16: 1.31 1.29 / 1.13 1.04, score_penalty 16: 1.19 1.17 /
# 1.48 0.99 (1.17 at 16 in benches/cpu_policy.py, 1 thread), soft_value from 1 (1.13-1.18),
# ensemble_mlp/relu 32: 1.16-1.24, sac_update no limit (1.11-1.22 at 4 096).
CPP_MIN_ROWS_BY_VENDOR: dict[str, dict[str, dict[str, int]]] = {
    "amd/family25": {
        "ensemble_mlp/silu": {"avx512": 128},
        "dynamics_fit_step": {"avx512": 64},
    },
    "amd": {
        "rollout_step": {"avx512": 16, "avx2": 16},
        "score_penalty": {"avx512": 16, "avx2": 16},
        "soft_value": {"avx512": 1, "avx2": 16},
        "ensemble_mlp/relu": {"avx512": 32, "avx2": 64},
        "ensemble_mlp/silu": {"avx512": 32, "avx2": 256},
        "dynamics_fit_step": {"avx512": 32, "avx2": 256},
    },
}


# The other rule: whole-step ops that replace a module path auto runs only *up to* a batch size
# (critic rows), where their fused passes start to lose to the module path's MKL GEMMs. Per op and
# ISA, the largest batch up to which every measured batch had cpp >= 1.0x the module path; NEVER:
# no limit (it won at every batch measured); 0: never. An unmeasured ISA uses "generic".
#
# sac_update (SAC.update as one op vs SAC.update with fused_update=False: the per-ISA auto choice of
# every op, fused Adam; pyscorepen/ops/sac_update.py). Measured 2026-12-02, CPU time per update
# (median of 9-22 interleaved rounds), 1 thread, Intel Xeon (AVX-512; "avx2" / "generic" forced with
# forced_cpu_isa), 2 vCPUs shared with ~9 other jobs, S=17, A=6, (256, 256) nets; fused / module
# path (fused / update_ref):
#   avx512   B=1: 1.74x (2.34x)  32: 1.72x (2.16x)  256: 1.53x (1.83x)  1024: 1.21x (1.61x)
#   avx2     B=1: 1.47x (1.97x)  32: 1.40x (1.71x)  256: 1.09x (1.29x)  1024: 0.94x (1.08x)
#   generic  B=1: 2.15x (2.83x)  32: 1.74x (2.20x)  256: 1.07x (1.21x)  1024: 0.79x (0.94x)
# (avx2 / generic: the op's critic passes run the ensemble_mlp kernels, which lose to MKL there at
# large batches; the module path runs MKL for them.)
CPP_MAX_ROWS: dict[str, dict[str, int]] = {
    "sac_update": {"avx512": NEVER, "avx2": 256, "generic": 256},
}

# Per CPU vendor, as CPP_MIN_ROWS_BY_VENDOR (MKL, which the module path runs its critic passes on,
# takes a slower code path on AMD CPUs). Measured 2026-12-03 (session 12) on a native AVX2-only AMD
# EPYC Zen 3 (family 25 model 1), idle, paired same-process rounds (median of 12-20), module path /
# fused op, S=17, A=6, (256, 256) nets:
#   SAC   B=32: 2.30x (1 thread)   256: 1.41x (1), 1.75x (2 threads)   1024: 1.24x (1), 1.34x (2)
#   COMBO B=256 (+ 3 x 10 x 128 sampled rows = 4 096 critic rows): 1.12x (1), 1.20x (2)
# So on AMD AVX2 no limit; AMD AVX-512 (Zen 5, session 5-11 runs) had none already.
CPP_MAX_ROWS_BY_VENDOR: dict[str, dict[str, dict[str, int]]] = {
    "amd": {"sac_update": {"avx512": NEVER, "avx2": NEVER}},
}


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``"amd"``, ``"intel"`` or ``"other"``: the vendor of this CPU (Linux ``/proc/cpuinfo``;
    ``"other"`` where it cannot be read). Selects :data:`CPP_MIN_ROWS_BY_VENDOR`."""
    vendor = _calibration.cpuinfo().get("vendor_id", "")
    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, "other")


def cpu_vendor_keys() -> tuple[str, ...]:
    """The keys of :data:`CPP_MIN_ROWS_BY_VENDOR` / :data:`CPP_MAX_ROWS_BY_VENDOR` that describe this
    CPU, most specific first: ``"<vendor>/family<N>"`` (``/proc/cpuinfo``'s cpu family), then
    ``"<vendor>"``; e.g. ``("amd/family25", "amd")`` on a Zen 3 or Zen 4."""
    return _vendor_keys(cpu_vendor())


@functools.lru_cache(maxsize=4)
def _vendor_keys(vendor: str) -> tuple[str, ...]:
    family = _calibration.cpuinfo().get("cpu family", "").strip()
    return ((f"{vendor}/family{family}",) if family.isdigit() else ()) + (vendor,)


def _vendor_entry(tables: dict[str, dict[str, dict[str, int]]], name: str, isa: str | None) -> int | None:
    """The most specific vendor table's entry for ``name`` on ``isa`` (:func:`cpu_vendor_keys`), or None."""
    for key in cpu_vendor_keys():
        entry = tables.get(key, {}).get(name, {})
        if isa in entry:
            return entry[isa]
    return None


def builtin_min_rows(shape_class: str, isa: str | None) -> int:
    """The built-in threshold of ``shape_class`` on ``isa`` and this CPU's vendor and family
    (:data:`CPP_MIN_ROWS_BY_VENDOR`, else :data:`CPP_MIN_ROWS`); 0 for a shape class the tables do
    not measure yet (no policy)."""
    measured = _vendor_entry(CPP_MIN_ROWS_BY_VENDOR, shape_class, isa)
    return measured if measured is not None else CPP_MIN_ROWS.get(shape_class, {}).get(isa, 0)


def builtin_max_rows(op: str, isa: str | None) -> int:
    """The built-in batch limit of ``op`` on ``isa`` and this CPU's vendor and family
    (:data:`CPP_MAX_ROWS_BY_VENDOR`, else :data:`CPP_MAX_ROWS`; an unmeasured ISA: its "generic"
    entry). :data:`NEVER`: no limit."""
    measured = _vendor_entry(CPP_MAX_ROWS_BY_VENDOR, op, isa)
    table = CPP_MAX_ROWS[op]
    return measured if measured is not None else table.get(isa, table["generic"])


_pinned: dict[str, dict[str, int]] | None = None   # {"thresholds": ..., "limits": ...}, pinned_cpu_policy


def _in_force(table: str, name: str, isa: str, builtin: Callable[[str, str], int]) -> int:
    """Entry ``name`` of the policy's ``table`` ("thresholds" or "limits") on ``isa``: a pinned
    policy, else this machine's calibration at the current thread count, else ``builtin``."""
    if _pinned is not None and name in _pinned[table]:
        return _pinned[table][name]
    entry = _calibration.calibrated_entry(isa, torch.get_num_threads())
    if entry is not None and name in entry.get(table, {}):
        return entry[table][name]
    return builtin(name, isa)


def cpp_min_rows(shape_class: str) -> int:
    """Threshold of the automatic policy for ``shape_class`` on the current ISA: a policy pinned by
    :func:`pinned_cpu_policy` (a resumed run keeps the one it started with), else this machine's
    calibration at the current thread count (``python -m pyscorepen.calibrate``;
    :mod:`pyscorepen.ops.calibration`), else the built-in tables (:func:`builtin_min_rows`). 0 without
    the extension."""
    isa = cpu_isa()
    return 0 if isa is None else _in_force("thresholds", shape_class, isa, builtin_min_rows)


def cpp_max_rows(op: str) -> int:
    """Batch limit (rows) of the automatic policy for the whole-step ``op`` on the current ISA (auto
    runs its cpp kernel up to it), looked up as :func:`cpp_min_rows` (built-in:
    :func:`builtin_max_rows`). :data:`NEVER` (no limit) without the extension."""
    isa = cpu_isa()
    return NEVER if isa is None else _in_force("limits", op, isa, builtin_max_rows)


def cpu_policy(builtin: bool = False) -> dict:
    """The automatic CPU policy in force now: ``isa``, ``threads``, ``source`` ("pinned",
    "calibrated" with its ``file`` and ``created``, or "built-in") and the ``thresholds`` of every
    shape class, and the ``limits`` of the whole-step ops (what a run records in its folder).
    ``builtin=True``: the built-in tables' policy."""
    isa, threads = cpu_isa(), torch.get_num_threads()
    entry = None if builtin else _calibration.calibrated_entry(isa, threads)
    if _pinned is not None and not builtin:
        source = {"source": "pinned"}
    elif entry is not None:
        source = {"source": "calibrated", "file": str(_calibration.policy_file()), "created": entry.get("created")}
    else:
        source = {"source": "built-in"}
    return {"isa": isa, "threads": threads, **source,
            "thresholds": {shape_class: builtin_min_rows(shape_class, isa) if builtin else cpp_min_rows(shape_class)
                           for shape_class in CPP_MIN_ROWS},
            "limits": {op: builtin_max_rows(op, isa) if builtin else cpp_max_rows(op) for op in CPP_MAX_ROWS}}


@contextlib.contextmanager
def pinned_cpu_policy(thresholds: dict[str, int], limits: dict[str, int] | None = None) -> Iterator[None]:
    """Within the block, ``cpp_min_rows`` returns ``thresholds`` (per shape class) and ``cpp_max_rows``
    ``limits`` (per whole-step op) whatever the calibration or the thread count: a resumed run
    dispatches as its first process did. What they do not name follows the usual order."""
    global _pinned
    previous = _pinned
    _pinned = {"thresholds": {k: int(v) for k, v in thresholds.items()},
               "limits": {k: int(v) for k, v in (limits or {}).items()}}
    try:
        yield
    finally:
        _pinned = previous


def register_reference(op: str, reference: Callable) -> None:
    """Called by each op module for its ``<op>_ref``."""
    _REFERENCES[op] = reference


def _triton_kernel(op: str) -> Callable | None:
    """``pyscorepen.kernels.<op>_triton`` or None (reason in ``_triton_errors``); imports triton."""
    if op not in _triton_cache:
        try:
            package = importlib.import_module("pyscorepen.kernels")
            kernel = getattr(package, f"{op}_triton")
            usable, why = package.triton_usable()
            if not usable:
                raise RuntimeError(why)
            _triton_cache[op] = kernel
        except Exception as error:  # noqa: BLE001 - triton missing / broken install / no GPU driver
            _triton_cache[op] = None
            _triton_errors[op] = f"{type(error).__name__}: {error}"
    return _triton_cache[op]


def _reason_unavailable(op: str, backend: str, tensor: Tensor) -> str | None:
    """None when ``backend`` can run ``op`` on ``tensor``'s device/dtype, else why not."""
    from pyscorepen.ops import _registry

    if backend == "ref":
        return None
    if backend == "cpp":
        if not _registry.EXTENSION_LOADED:
            return f"the C++ extension pyscorepen._C is not loaded ({_registry.EXTENSION_ERROR})"
        if op in _registry.MISSING_FROM_EXTENSION:
            return ("the loaded pyscorepen._C was built from an older csrc/ without this op "
                    "(rebuild: pip install --no-build-isolation -e .)")
        if tensor.device.type != "cpu":
            return f"it runs on CPU tensors only, got {tensor.device}"
        if tensor.dtype != torch.float32:
            return f"it supports float32 only, got {tensor.dtype}"
        return None
    if backend == "cuda":
        if op not in _registry.EXTENSION_CUDA_OPS:
            return "the extension was built without a CUDA kernel for this op"
        if not tensor.is_cuda:
            return f"it runs on CUDA tensors only, got {tensor.device}"
        return None
    if backend == "triton":
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return f"it needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {tensor.device}"
        if _triton_kernel(op) is None:
            return f"pyscorepen.kernels.{op}_triton cannot run here ({_triton_errors[op]})"
        return None
    raise ValueError(f"unknown pyscorepen backend {backend!r}; choose one of {BACKENDS} or 'auto'")


def available_backends(op: str, tensor: Tensor) -> list[str]:
    """Backends able to run ``op`` on tensors like ``tensor`` (device and dtype), in BACKENDS order."""
    return [name for name in BACKENDS if _reason_unavailable(op, name, tensor) is None]


def resolve_backend(op: str, tensor: Tensor, backend: str | None = None, *, auto_skip: tuple[str, ...] = (),
                    rows: int | None = None, shape_class: str | None = None) -> str:
    """Backend name that will run ``op`` for inputs like ``tensor``.

    ``backend`` (per call) beats ``$PYSCOREPEN_BACKEND`` beats ``auto``. ``auto_skip``: backends
    the automatic choice passes over for this call; explicit requests ignore it. ``rows`` (the
    batch size) applies the speed policy :data:`CPP_MIN_ROWS` of ``shape_class`` (default: ``op``)
    to ``cpp`` on CPU tensors.
    """
    requested = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"unknown pyscorepen backend {requested!r}; choose one of {BACKENDS} or 'auto'")
        reason = _reason_unavailable(op, requested, tensor)
        if reason is not None:
            source = "backend=" if backend is not None else f"{ENV_VAR}="
            raise BackendUnavailableError(f"pyscorepen.{op}: {source}{requested!r} is unavailable: {reason}")
        return requested
    device = "cuda" if tensor.is_cuda else "cpu"
    if rows is not None and device == "cpu" and rows < cpp_min_rows(shape_class or op):
        auto_skip = (*auto_skip, "cpp")
    for name in _AUTO_ORDER[device]:
        if name not in auto_skip and _reason_unavailable(op, name, tensor) is None:
            key = (op, device, name)
            if key not in _announced:
                _announced.add(key)
                log.info("pyscorepen.%s: using the %r backend for %s tensors", op, name, device)
            return name
    raise AssertionError("unreachable: the ref backend is always available")


def run_in_place_op(op: str, backend: str, *args, **kwargs):
    """Run a whole-step op that updates its arguments in place (``sac_update``, ``dynamics_fit_step``)
    on ``backend``: the compiled op under ``no_grad`` (no autograd graph around it), else the kernel
    :func:`get_kernel` gives."""
    if backend == "cpp":
        with torch.no_grad():
            return getattr(torch.ops.pyscorepen, op).default(*args, **kwargs)
    return get_kernel(op, backend)(*args, **kwargs)


def get_kernel(op: str, backend: str) -> Callable:
    """The callable implementing ``op`` on ``backend`` (same signature as ``<op>_ref``)."""
    if backend == "ref":
        return _REFERENCES[op]
    if backend in ("cpp", "cuda"):
        return getattr(torch.ops.pyscorepen, op)
    if backend == "triton":
        kernel = _triton_kernel(op)
        if kernel is None:
            raise BackendUnavailableError(f"pyscorepen.{op}: triton kernel unavailable ({_triton_errors[op]})")
        return kernel
    raise ValueError(f"unknown pyscorepen backend {backend!r}; choose one of {BACKENDS}")
