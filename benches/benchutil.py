"""Helpers shared by the bench files: the sgemm probe and the derived-throughput record."""
from __future__ import annotations

import time

import torch

PROBE_SHAPE = (8192, 256, 256)  # M, K, N: same regime as the 200/256-wide MLP layers


def _best_seconds(fn, repeats=7, wall=False):
    # one thread: CPU time of the process (what `--benchmark-timer time.process_time` measures on
    # a shared machine, see benches/README.md); several threads, or `wall`: wall time
    clock = time.process_time if torch.get_num_threads() == 1 and not wall else time.perf_counter
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def cpu_isa() -> str:
    """ISA the C++ CPU ops run in this process (``$PYSCOREPEN_CPU_ISA``), or why there is none."""
    from pyscorepen.ops import cpu_isa as current
    from pyscorepen.ops.backend import avx512_emulated
    isa = current() or "none (extension not loaded)"
    if isa == "avx512" and avx512_emulated():
        isa += " (EMULATED test build: timings mean nothing)"
    return isa


def probe_sgemm_gflops(repeats: int = 7, wall: bool = False) -> dict[str, float]:
    """MKL's and oneDNN's GFLOP/s on PROBE_SHAPE (best of ``repeats`` calls each) and the better one."""
    m, k, n = PROBE_SHAPE
    a, w = torch.randn(m, k), torch.randn(k, n)
    w_t, bias = w.t().contiguous(), torch.zeros(n)
    flops = 2 * m * k * n
    result = {"mkl_gflops": flops / _best_seconds(lambda: torch.mm(a, w), repeats, wall) / 1e9}
    linear_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available() and linear_pointwise is not None:
        onednn = _best_seconds(lambda: linear_pointwise(a, w_t, bias, "none", [], ""), repeats, wall)
        result["onednn_gflops"] = flops / onednn / 1e9
    result["limit_gflops"] = max(result.values())
    return result


def record(benchmark, *, rows: int, flops_per_row: float, limit: dict[str, float], **extra) -> float:
    """Derived throughput of the last benchmark into ``benchmark.extra_info``; returns the median (s)."""
    median = benchmark.stats.stats.median
    gflops = rows * flops_per_row / median / 1e9
    from pyscorepen.ops.backend import cpu_vendor
    benchmark.extra_info.update(
        rows_per_s=rows / median,
        gflops=gflops,
        pct_of_sgemm_limit=100 * gflops / limit["limit_gflops"],
        **{f"probe_{key}": value for key, value in limit.items()},
        threads=torch.get_num_threads(),
        cpu_isa=cpu_isa(),
        cpu_vendor=cpu_vendor(),
        **extra,
    )
    return median


def check_speedup(times: dict, fast_key, ref_key, floor: float, label: str) -> float:
    """The regression check of every bench file: ref/fast time ratio, both measured in this run.

    ``times`` maps keys to seconds recorded by the benchmarks of this session; a missing side
    (e.g. ``-k cpp`` ran alone) skips the check rather than comparing against another run.
    """
    import pytest
    if fast_key not in times or ref_key not in times:
        pytest.skip(f"{label}: needs both {ref_key!r} and {fast_key!r} benchmarks in this run")
    speedup = times[ref_key] / times[fast_key]
    print(f"\n{label}: {speedup:.2f}x (floor {floor}x)")
    assert speedup >= floor, f"{label}: {speedup:.2f}x is below the floor {floor}x"
    return speedup


def bench_op(benchmark, op, name: str, inputs: dict, provider: str, rounds: int) -> None:
    """Benchmark ``op(**inputs, backend=provider)`` under no_grad (skips an unavailable backend).

    The device follows ``inputs``; CUDA work is synchronized inside the timed call.
    """
    import pytest
    from pyscorepen.ops import available_backends
    probe = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
    if provider not in available_backends(name, probe):
        # e.g. triton without a GPU, cpp without the built extension: nothing to time
        pytest.skip(f"backend {provider!r} unavailable here")
    synchronize = torch.cuda.synchronize if probe.is_cuda else (lambda: None)

    def call():
        with torch.no_grad():
            out = op(**inputs, backend=provider)
        synchronize()
        return out

    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
