"""Helpers shared by the bench files: the sgemm probe and the derived-throughput record."""
from __future__ import annotations

import torch

from pyscorepen.ops.workloads import PROBE_SHAPE, probe_sgemm_gflops  # noqa: F401 - the benches' probe


def cpu_isa() -> str:
    """ISA the C++ CPU ops run in this process (``$PYSCOREPEN_CPU_ISA``), or why there is none."""
    from pyscorepen.ops import cpu_isa as current
    from pyscorepen.ops.backend import avx512_emulated
    isa = current() or "none (extension not loaded)"
    if isa == "avx512" and avx512_emulated():
        isa += " (EMULATED test build: timings mean nothing)"
    return isa


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
