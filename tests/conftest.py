"""Shared pytest setup: the opt-in ``slow`` marker (``--runslow``), the Triton interpreter and the
built-in CPU dispatch policy.

Triton decides "interpreted or compiled" when it is first imported, so without a GPU the
interpreter is switched on here, before any test module can import triton (directly or via
``torch.compile``); the Triton kernels are then tested on CPU tensors.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The automatic CPU policy's built-in tables, whatever `python -m pyscorepen.calibrate` stored for
# this machine: the tests of dispatch check those tables (tests/test_calibrate.py sets its own files).
os.environ["PYSCOREPEN_CPU_POLICY"] = "builtin"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def cpu_isa(request):
    """Run the test's C++ CPU ops on the ISA of an indirect parametrization (``"avx512"``,
    ``"avx2"``, ``"generic"``; None leaves the current one), restoring the previous ISA after.
    An ISA this CPU (or build) lacks skips the test: avx512 runs only where present."""
    isa = getattr(request, "param", None)
    if isa is None:
        yield None
        return
    from pyscorepen.ops import available_cpu_isas, cpu_isa, forced_cpu_isa
    if isa not in available_cpu_isas():
        pytest.skip(f"this CPU or build has no {isa} kernels (supported: {available_cpu_isas()})")
    with forced_cpu_isa(isa):
        assert cpu_isa() == isa
        yield isa


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny nets train fastest so, above all on a shared CPU; a
    calibration is keyed by the thread count), the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
