"""Measure the automatic CPU policy (``pyscorepen.ops.backend.CPP_MIN_ROWS`` and ``CPP_MAX_ROWS``)
on this machine.

For every op shape class, every CPU ISA of the C++ ops that this CPU supports (``avx512``,
``avx2``, ``generic``) and a sweep of batch sizes, times ``ref`` and ``cpp`` interleaved in one
process (best of several rounds, the least disturbed on a shared machine) and prints the
ref/cpp time ratio, cpp's GFLOP/s and its % of the same-run sgemm probe, as a markdown table
(one thread unless ``--threads``)::

    python benches/cpu_policy.py                   # all ops, all ISAs (~5 min on 1 core)
    python benches/cpu_policy.py --ops soft_value --isas avx2 --threads 2

Each ISA runs in its own process with ``PYSCOREPEN_CPU_ISA`` set. For ``avx2`` the libraries the
reference runs on are capped to AVX2 as well (``MKL_ENABLE_INSTRUCTIONS=AVX2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``), so an AVX-512 machine measures what
an AVX2-only CPU would see: the AVX2 kernels against AVX2 MKL, and an AVX2 sgemm probe.
On one thread the times are CPU time of the thread (``time.thread_time``): on a shared machine
that excludes the time the thread waits for a core. A threshold in ``CPP_MIN_ROWS`` is the
smallest batch from which every ratio was >= 1.0; a limit in ``CPP_MAX_ROWS`` (the fused SAC
update, ``ref`` being the module path) the largest up to which every ratio was. The workloads are ``pyscorepen.ops.workloads.SWEEPS``, the
ones ``python -m pyscorepen.calibrate`` times to store a policy for this machine (this script only
prints, for every ISA, with the probe).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import PROBE_SHAPE  # noqa: E402
from pyscorepen.allocator import tune_malloc  # noqa: E402
from pyscorepen.calibrate import best_seconds, measure_ratios  # noqa: E402
from pyscorepen.ops import available_cpu_isas, forced_cpu_isa  # noqa: E402
from pyscorepen.ops.workloads import SWEEPS  # noqa: E402


# Environment of one ISA's measuring process (see the module docstring).
ISA_ENV = {
    "avx512": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "generic": {},
}


def measure(ops, isa, threads, rounds) -> None:
    """The table rows of one ISA, in this process (its environment already set)."""
    tune_malloc()   # as the training CLIs and the calibration: the fit step op's speed depends on it
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    m, k, n = PROBE_SHAPE   # MKL sgemm, the same probe as the benches (there: the better of MKL and oneDNN)
    a, w = torch.randn(m, k), torch.randn(k, n)
    probe_gflops = 2 * m * k * n / best_seconds(lambda _: torch.mm(a, w), None, 4 * rounds, clock) / 1e9
    def row(shape_class, batch, ref, cpp):
        gflops = batch * SWEEPS[shape_class][2] / cpp / 1e9
        print(f"| {shape_class} | {isa} | {batch} | {ref / cpp:.2f} | {gflops:.0f} | "
              f"{100 * gflops / probe_gflops:.0f} % of {probe_gflops:.0f} |", flush=True)

    with forced_cpu_isa(isa):
        for shape_class in ops:   # ref and cpp interleaved: both sides see the same machine load
            measure_ratios(shape_class, rounds, threads, progress=row)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--isas", nargs="*", default=None, help="default: every ISA this CPU supports")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    isas = args.isas or list(available_cpu_isas())
    if args.in_process:
        measure(args.ops, isas[0], args.threads, args.rounds)
        return
    print("| op | ISA | B | ref/cpp | cpp GFLOP/s | cpp % of sgemm (same process, same clock) |\n"
          "|---|---|---:|---:|---:|---:|", flush=True)
    for isa in isas:
        env = {**os.environ, "PYSCOREPEN_CPU_ISA": isa, **ISA_ENV[isa]}
        subprocess.run([sys.executable, os.path.abspath(__file__), "--in-process", "--isas", isa, "--ops", *args.ops,
                        "--threads", str(args.threads), "--rounds", str(args.rounds)], env=env, check=True)


if __name__ == "__main__":
    main()
