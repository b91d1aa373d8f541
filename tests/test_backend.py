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
from pyscorepen.ops import _registry, backend, calibration


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


# ------------------------------------------------------------------ CPU ISA of the C++ ops
@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="C++ extension not built")
def test_cpu_isa_switch_and_unavailable_isa_is_an_error():
    supported = ops.available_cpu_isas()
    assert supported[-1] == "generic" and set(supported) <= set(ops.CPU_ISAS)
    before = ops.cpu_isa()
    for isa in ops.CPU_ISAS:
        if isa in supported:
            with ops.forced_cpu_isa(isa):
                assert ops.cpu_isa() == isa
        else:
            with pytest.raises(ops.BackendUnavailableError, match=f"{isa} but this"):
                ops.set_cpu_isa(isa)
    assert ops.cpu_isa() == before
    with pytest.raises(ops.BackendUnavailableError, match="not one of auto, avx512, avx2, generic"):
        ops.set_cpu_isa("neon")
    assert ops.cpu_isa() == before


@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="C++ extension not built")
def test_cpu_isa_environment_variable_read_once():
    """PYSCOREPEN_CPU_ISA picks the ISA at the first op call; a bad value is a clear error."""
    script = textwrap.dedent("""
        import os, torch, pyscorepen.ops as ops
        print(ops.cpu_isa())
        os.environ["PYSCOREPEN_CPU_ISA"] = "bogus"      # read once: changing it later does nothing
        print(ops.cpu_isa(), float(ops.score_penalty(torch.ones(3, 2), [torch.ones(2, 2)], [torch.zeros(2)]).sum()))
    """)
    isa = "avx2" if "avx2" in ops.available_cpu_isas() else "generic"   # not the automatic choice here
    env = {**os.environ, "PYSCOREPEN_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [isa, isa, "24.0"]
    env = {**os.environ, "PYSCOREPEN_CPU_ISA": "avx1024"}
    script = "import torch, pyscorepen.ops as ops; ops.score_penalty(torch.ones(3, 2), [torch.ones(2, 2)], [torch.zeros(2)])"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "BackendUnavailableError: PYSCOREPEN_CPU_ISA=avx1024 is not one of auto, avx512, avx2, generic" in out.stderr


@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", ops.CPU_ISAS, indirect=True)
@pytest.mark.parametrize("op", ["rollout_step", "score_penalty", "soft_value"])
def test_auto_follows_the_per_isa_policy(monkeypatch, cpu_isa, op):
    """auto picks cpp exactly from CPP_MIN_ROWS[op][ISA] rows on; explicit requests ignore the policy."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    threshold = backend.cpp_min_rows(op)   # this ISA, this CPU's vendor and family
    listed = [backend.CPP_MIN_ROWS_BY_VENDOR[key][op][cpu_isa] for key in backend.cpu_vendor_keys()
              if cpu_isa in backend.CPP_MIN_ROWS_BY_VENDOR.get(key, {}).get(op, {})]
    assert threshold == (listed[0] if listed else backend.CPP_MIN_ROWS[op][cpu_isa])
    for rows in sorted({1, threshold - 1, threshold, 4096} - {0, -1}):
        x = torch.zeros(rows, 2)
        assert ops.resolve_backend(op, x, rows=rows) == ("cpp" if rows >= threshold else "ref"), rows
        assert ops.resolve_backend(op, x, backend="cpp", rows=rows) == "cpp"
    # the policy covers every ISA; vendor entries name known shape classes and ISAs
    assert all(set(table) == set(ops.CPU_ISAS) for table in backend.CPP_MIN_ROWS.values())
    for tables in backend.CPP_MIN_ROWS_BY_VENDOR.values():
        assert set(tables) <= set(backend.CPP_MIN_ROWS)
        assert all(set(table) <= set(ops.CPU_ISAS) for table in tables.values())


@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", ["avx2"], indirect=True)
def test_vendor_entries_replace_the_isa_threshold(monkeypatch, cpu_isa):
    """An AMD CPU takes CPP_MIN_ROWS_BY_VENDOR["amd"] where listed; other vendors the ISA table."""
    monkeypatch.setattr(backend, "cpu_vendor", lambda: "amd")
    assert backend.cpp_min_rows("ensemble_mlp/silu") == backend.CPP_MIN_ROWS_BY_VENDOR["amd"]["ensemble_mlp/silu"]["avx2"]
    assert backend.cpp_min_rows("ensemble_mlp/silu") != backend.CPP_MIN_ROWS["ensemble_mlp/silu"]["avx2"]
    monkeypatch.setattr(backend, "cpu_vendor", lambda: "other")
    assert backend.cpp_min_rows("ensemble_mlp/silu") == backend.CPP_MIN_ROWS["ensemble_mlp/silu"]["avx2"]
    monkeypatch.setattr(backend, "cpu_vendor", lambda: "amd")
    with backend.forced_cpu_isa("generic"):   # no AMD entry for generic: the ISA table
        assert backend.cpp_min_rows("rollout_step") == backend.CPP_MIN_ROWS["rollout_step"]["generic"]


def test_cpu_vendor_is_read_from_cpuinfo():
    assert backend.cpu_vendor() in ("amd", "intel", "other")
    assert backend.cpu_vendor_keys()[-1] == backend.cpu_vendor()


@pytest.fixture
def fake_cpuinfo(monkeypatch):
    """Sets /proc/cpuinfo's fields as this process reads them; the cached lookups are cleared before
    and after, so the real CPU's come back."""
    cached = (calibration.cpuinfo, backend.cpu_vendor, backend._vendor_keys)

    def clear():
        for function in cached:
            function.cache_clear()

    def fake(**fields):
        clear()
        monkeypatch.setattr(calibration, "cpuinfo", lambda: fields)
    yield fake
    monkeypatch.undo()
    clear()


def test_family_entries_replace_the_vendor_entries(fake_cpuinfo):
    """A "<vendor>/family<N>" entry beats the vendor's; what it does not list falls back to the vendor's,
    then to the ISA table. AMD family 25 is Zen 3 (AVX2) and Zen 4 (AVX-512), 26 is Zen 5."""
    zen4 = backend.CPP_MIN_ROWS_BY_VENDOR["amd/family25"]
    amd = backend.CPP_MIN_ROWS_BY_VENDOR["amd"]
    fake_cpuinfo(vendor_id="AuthenticAMD", **{"cpu family": "25"})
    assert backend.cpu_vendor_keys() == ("amd/family25", "amd")
    assert backend.builtin_min_rows("ensemble_mlp/silu", "avx512") == zen4["ensemble_mlp/silu"]["avx512"]
    assert backend.builtin_min_rows("dynamics_fit_step", "avx512") == zen4["dynamics_fit_step"]["avx512"]
    assert backend.builtin_min_rows("rollout_step", "avx512") == amd["rollout_step"]["avx512"]      # not listed
    assert backend.builtin_min_rows("ensemble_mlp/silu", "avx2") == amd["ensemble_mlp/silu"]["avx2"]   # Zen 3
    assert backend.builtin_min_rows("rollout_step", "generic") == backend.CPP_MIN_ROWS["rollout_step"]["generic"]
    fake_cpuinfo(vendor_id="AuthenticAMD", **{"cpu family": "26"})
    assert backend.cpu_vendor_keys() == ("amd/family26", "amd")
    assert backend.builtin_min_rows("ensemble_mlp/silu", "avx512") == amd["ensemble_mlp/silu"]["avx512"]
    fake_cpuinfo(vendor_id="GenuineIntel", **{"cpu family": "6"})
    assert backend.builtin_min_rows("ensemble_mlp/silu", "avx512") == backend.CPP_MIN_ROWS["ensemble_mlp/silu"]["avx512"]
    fake_cpuinfo()                                                   # /proc/cpuinfo unreadable
    assert backend.cpu_vendor_keys() == ("other",)
    assert backend.builtin_max_rows("sac_update", "avx2") == backend.CPP_MAX_ROWS["sac_update"]["avx2"]
    # every vendor or family key names known shape classes and ISAs
    for key, tables in {**backend.CPP_MIN_ROWS_BY_VENDOR, **backend.CPP_MAX_ROWS_BY_VENDOR}.items():
        assert key.split("/")[0] in ("amd", "intel", "other")
        assert all(set(table) <= set(ops.CPU_ISAS) for table in tables.values())


def test_requested_backend_sets_and_restores_the_variable(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with backend.requested_backend("ref"):
        assert os.environ[backend.ENV_VAR] == "ref"
        with backend.requested_backend(None):            # None: auto, the variable unset
            assert backend.ENV_VAR not in os.environ
        assert os.environ[backend.ENV_VAR] == "ref"
    assert os.environ[backend.ENV_VAR] == "cpp"
    monkeypatch.delenv(backend.ENV_VAR)
    with pytest.raises(RuntimeError):
        with backend.requested_backend("ref"):
            raise RuntimeError
    assert backend.ENV_VAR not in os.environ
