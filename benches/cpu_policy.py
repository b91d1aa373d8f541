"""Measure the automatic CPU policy (``pyscorepen.ops.backend.CPP_MIN_ROWS``) on this machine.

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
smallest batch whose ratio was >= 1.0.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_rollout_step  # noqa: E402
import bench_score_penalty  # noqa: E402
import bench_soft_value  # noqa: E402
from benchutil import PROBE_SHAPE  # noqa: E402
from pyscorepen.ops import available_cpu_isas, forced_cpu_isa, rollout_step, score_penalty, soft_value  # noqa: E402
from pyscorepen.ops.ensemble_mlp import ensemble_mlp  # noqa: E402


def _inference(op, module, batch):
    inputs = module.make_inputs(batch)

    def run(provider):
        with torch.no_grad():
            op(**inputs, backend=provider)
    return run, module.FLOPS_PER_ROW


def _ensemble(members, dims, activation, shared, batch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*(() if shared else (members,)), batch, dims[0], generator=gen).requires_grad_()
    weights = [(torch.randn(members, i, o, generator=gen) / i**0.5).requires_grad_() for i, o in zip(dims, dims[1:])]
    biases = [torch.zeros(members, o, requires_grad=True) for o in dims[1:]]
    leaves = [x, *weights, *biases]

    def run(provider):
        out = ensemble_mlp(x, weights, biases, activation, backend=provider)
        torch.autograd.grad(out.square().sum(), leaves)
    return run, 3 * members * sum(2 * i * o for i, o in zip(dims, dims[1:]))


# shape class -> (batches, factory(batch) -> (run(provider), flops per row))
SWEEPS = {
    "rollout_step": ([1, 16, 64, 256, 4096], lambda b: _inference(rollout_step, bench_rollout_step, b)),
    "score_penalty": ([1, 16, 64, 256, 4096, 50_000], lambda b: _inference(score_penalty, bench_score_penalty, b)),
    "soft_value": ([1, 16, 64, 256, 12_150], lambda b: _inference(soft_value, bench_soft_value, b)),
    "ensemble_mlp/relu": ([1, 8, 32, 64, 128, 256, 3840],
                          lambda b: _ensemble(2, (23, 256, 256, 1), "relu", True, b)),
    "ensemble_mlp/silu": ([32, 64, 128, 256, 1024],
                          lambda b: _ensemble(7, (23, 200, 200, 200, 200, 36), "silu", False, b)),
}


# Environment of one ISA's measuring process (see the module docstring).
ISA_ENV = {
    "avx512": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "generic": {},
}


def best_seconds(run, provider, rounds, clock, min_time=0.02):
    """Best time per call over ``rounds`` rounds of enough calls to last ``min_time``."""
    run(provider)
    start = clock()
    run(provider)
    calls = max(1, int(min_time / max(clock() - start, 1e-6)))
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            run(provider)
        best = min(best, (clock() - start) / calls)
    return best


def measure(ops, isa, threads, rounds) -> None:
    """The table rows of one ISA, in this process (its environment already set)."""
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    m, k, n = PROBE_SHAPE   # MKL sgemm, the same probe as the benches (there: the better of MKL and oneDNN)
    a, w = torch.randn(m, k), torch.randn(k, n)
    probe_gflops = 2 * m * k * n / best_seconds(lambda _: torch.mm(a, w), None, 4 * rounds, clock) / 1e9
    with forced_cpu_isa(isa):
        for shape_class in ops:
            batches, factory = SWEEPS[shape_class]
            for batch in batches:
                run, flops_per_row = factory(batch)
                ref = cpp = float("inf")
                for _ in range(2):   # interleaved: both sides see the same machine load
                    ref = min(ref, best_seconds(run, "ref", rounds, clock))
                    cpp = min(cpp, best_seconds(run, "cpp", rounds, clock))
                gflops = batch * flops_per_row / cpp / 1e9
                print(f"| {shape_class} | {isa} | {batch} | {ref / cpp:.2f} | {gflops:.0f} | "
                      f"{100 * gflops / probe_gflops:.0f} % of {probe_gflops:.0f} |", flush=True)



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
