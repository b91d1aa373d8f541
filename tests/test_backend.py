"""Backend choice (``pyscorepen.ops.backend``) and op registration (``pyscorepen.ops._registry``)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.ops import _registry, backend


def test_ops_registered_with_declared_schemas():
    for op, schema in _registry.SCHEMAS.items():
        overload = getattr(torch.ops.pyscorepen, op).default
        assert str(overload._schema) == f"pyscorepen::{schema}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pyscorepen::{op}", "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pyscorepen::{op}", "Meta")


def test_reference_always_available():
    for op in _registry.SCHEMAS:
        names = ops.available_backends(op, torch.zeros(1))
        assert names[0] == "ref"
        assert ("cpp" in names) == (ops.EXTENSION_LOADED and op not in _registry.MISSING_FROM_EXTENSION)
        assert "cuda" not in names


def test_auto_choice_and_one_log_line(monkeypatch, caplog):
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_announced", set())
    expected = "cpp" if ops.EXTENSION_LOADED else "ref"
    with caplog.at_level(logging.INFO, logger="pyscorepen"):
        for _ in range(3):
            assert ops.resolve_backend("score_penalty", torch.zeros(2, 2)) == expected
    picked = [r for r in caplog.records if "backend" in r.getMessage()]
    assert len(picked) == 1 and expected in picked[0].getMessage()
    # float64 is not served by the C++ kernel: automatic choice falls back to the reference
    assert ops.resolve_backend("score_penalty", torch.zeros(2, 2, dtype=torch.float64)) == "ref"


def test_precedence_kwarg_over_env(monkeypatch):
    x = torch.zeros(2, 2)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert ops.resolve_backend("rollout_step", x) == "ref"
    if ops.EXTENSION_LOADED:
        assert ops.resolve_backend("rollout_step", x, backend="cpp") == "cpp"
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "auto")
    assert ops.resolve_backend("rollout_step", x) == ("cpp" if ops.EXTENSION_LOADED else "ref")


def test_explicit_unavailable_backend_is_an_error(monkeypatch):
    x = torch.zeros(2, 2)
    with pytest.raises(ops.BackendUnavailableError, match="backend='cuda' is unavailable"):
        ops.resolve_backend("score_penalty", x, backend="cuda")
    with pytest.raises(ValueError, match="unknown pyscorepen backend"):
        ops.resolve_backend("score_penalty", x, backend="mkl")
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "cuda")
    with pytest.raises(ops.BackendUnavailableError, match="PYSCOREPEN_BACKEND='cuda'"):
        ops.resolve_backend("score_penalty", x)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ops.BackendUnavailableError, match="TRITON_INTERPRET"):
            ops.resolve_backend("score_penalty", x, backend="triton")


FALLBACK_SCRIPT = textwrap.dedent("""
    import torch
    import pyscorepen.ops as ops
    from pyscorepen.ops import _registry
    assert not ops.EXTENSION_LOADED
    x = torch.randn(6, 4)
    weights, biases = [torch.randn(4, 8), torch.randn(8, 4)], [torch.randn(8), torch.randn(4)]
    assert ops.resolve_backend("score_penalty", x) == "ref"
    torch.testing.assert_close(torch.ops.pyscorepen.score_penalty(x, weights, biases),
                               ops.score_penalty_ref(x, weights, biases))
    torch.library.opcheck(torch.ops.pyscorepen.score_penalty.default, (x, weights, biases))
    for op, schema in _registry.SCHEMAS.items():
        assert str(getattr(torch.ops.pyscorepen, op).default._schema) == "pyscorepen::" + schema
    try:
        ops.score_penalty(x, weights, biases, backend="cpp")
    except ops.BackendUnavailableError as error:
        assert "not loaded" in str(error)
    else:
        raise AssertionError("backend='cpp' without the extension must raise")
    print("FALLBACK-OK")
""")


def test_fallback_without_extension():
    """PYSCOREPEN_DISABLE_EXT=1: same ops from Python with the reference kernels, one warning line."""
    env = {**os.environ, "PYSCOREPEN_DISABLE_EXT": "1"}
    env.pop("PYSCOREPEN_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FALLBACK-OK" in result.stdout
    warning_lines = [line for line in result.stderr.splitlines() if "pyscorepen" in line]
    assert len(warning_lines) == 1 and "C++ extension not loaded" in warning_lines[0], result.stderr
