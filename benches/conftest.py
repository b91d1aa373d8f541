"""pytest-benchmark setup for ``pytest benches/``.

* collects ``bench_*.py`` (``pytest`` alone only runs ``tests/``, see pyproject testpaths);
* ``sgemm_limit``: a quick fp32 GEMM probe run once per session (MKL via ``torch.mm`` and
  oneDNN via ``torch.ops.mkldnn._linear_pointwise``, the better one is the limit), so every bench
  can report its GFLOP/s as a % of what this machine reaches right now (the machine may be shared).
"""
from __future__ import annotations

import pytest
import torch

from benchutil import probe_sgemm_gflops


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def sgemm_limit() -> dict[str, float]:
    with torch.no_grad():
        return probe_sgemm_gflops()
