"""Parametrization of the op tests over backend x CPU ISA (fixture ``cpu_isa`` in conftest.py)."""
from __future__ import annotations

import contextlib

import pytest
import torch

import pyscorepen.ops as ops


def backend_isa_params(op: str) -> list:
    """``(backend, cpu_isa)`` pairs: ``("ref", None)`` and ``("cpp", isa)`` for every ISA of
    :data:`pyscorepen.ops.CPU_ISAS` when the extension serves ``op`` (unsupported ISAs skip)."""
    params = [pytest.param("ref", None, id="ref")]
    if "cpp" in ops.available_backends(op, torch.zeros(1)):
        params += [pytest.param("cpp", isa, id=f"cpp-{isa}") for isa in ops.CPU_ISAS]
    return params


def cpp_isa_params(op: str) -> list:
    """The ``cpp`` entries of :func:`backend_isa_params` (ISA only)."""
    return [pytest.param(p.values[1], id=p.id) for p in backend_isa_params(op) if p.values[0] == "cpp"]


@contextlib.contextmanager
def restored_threads():
    """Gives torch's intra-op thread count back on exit, for tests that set it per case."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
