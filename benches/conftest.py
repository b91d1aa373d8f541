"""pytest-benchmark setup for ``pytest benches/``.

* collects ``bench_*.py`` (``pytest`` alone only runs ``tests/``, see pyproject testpaths);
* ``sgemm_limit``: a quick fp32 GEMM probe run once per session (MKL via ``torch.mm`` and
  oneDNN via ``torch.ops.mkldnn._linear_pointwise``, the better one is the limit), so every bench
  can report its GFLOP/s as a % of what this machine reaches right now (the machine may be shared);
* the header line and every benchmark's ``extra_info["cpu_isa"]`` name the ISA the C++ ops ran
  (``PYSCOREPEN_CPU_ISA=avx2`` forces the AVX2 kernels on an AVX-512 machine).
"""
from __future__ import annotations

import pytest
import torch

from benchutil import cpu_isa, probe_sgemm_gflops


def pytest_report_header(config):
    from pyscorepen.ops.backend import cpu_vendor
    return (f"pyscorepen C++ CPU ops: ISA {cpu_isa()}, CPU vendor {cpu_vendor()} (the auto policy's thresholds "
            "depend on both; PYSCOREPEN_CPU_ISA to force avx512 / avx2 / generic)")


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself; collecting it here too
    # would run every bench twice
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def sgemm_limit() -> dict[str, float]:
    with torch.no_grad():
        return probe_sgemm_gflops()


@pytest.fixture
def threads(request):
    """Torch thread count for one bench, from an indirect ``threads`` parametrization."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run a bench on one torch thread: on the shared 2-core machine 2-thread wall times swing by
    2-30x between rounds (benches/README.md), so the same-run ratios are taken at 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)
