"""Shared pytest setup: the opt-in ``slow`` marker (``--runslow``) and the Triton interpreter.

Triton decides "interpreted or compiled" when it is first imported, so without a GPU the
interpreter is switched on here, before any test module can import triton (directly or via
``torch.compile``); the Triton kernels are then tested on CPU tensors.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
