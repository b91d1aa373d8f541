"""The AVX-512 kernels, tested on a CPU without AVX-512.

The op tests run every ISA the CPU has; on an AVX2-only machine (most laptops, and many of this
project's CI machines) that leaves the AVX-512 kernels, the default on every AVX-512 CPU, untested.
Here they are built from the same source on emulated intrinsics (``PYSCOREPEN_AVX512_EMULATION=1``:
SIMDe's ``_mm512_*`` compiled for AVX2, csrc/cpu/avx512_emulation.h), in a copy of the package in
a temporary folder, and the op tests' ``avx512`` cases run on that build: the 16-wide tiles, the
4-vector column blocks, the masked tails and the ISA's slab and unroll constants against the
references, with the same tolerances as on real hardware.

What it does not check: the hardware's own rounding of rcp14 (emulated exactly; the kernels
refine it by a Newton step) and speed. Slow (the build takes ~4 minutes on 2 cores): opt in with
``--runslow``; CI runs it (.ci/run). Needs SIMDe's headers (``apt-get install libsimde-dev``);
without them it skips, unless PYSCOREPEN_REQUIRE_AVX512_EMULATION=1 (then it fails).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIMDE_HEADER = Path("simde") / "x86" / "avx512.h"
# the op tests with an avx512 parametrization (tests/isa_params.py, the cpu_isa fixture)
OP_TESTS = ["test_ops_rollout_step.py", "test_ops_score_penalty.py", "test_ops_soft_value.py",
            "test_ops_ensemble_mlp.py", "test_ops_dynamics_fit_step.py", "test_ops_sac_update.py"]


def _simde_available() -> bool:
    folders = [os.environ.get("SIMDE_INCLUDE_DIR", ""), "/usr/include", "/usr/local/include"]
    return any((Path(folder) / SIMDE_HEADER).is_file() for folder in folders if folder)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("PYSCOREPEN_REQUIRE_AVX512_EMULATION") == "1":
        pytest.fail(f"{reason} (PYSCOREPEN_REQUIRE_AVX512_EMULATION=1)")
    pytest.skip(reason)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(scope="module")
def emulated_build(tmp_path_factory) -> Path:
    """A copy of the package (sources, tests) whose extension is built with PYSCOREPEN_AVX512_EMULATION=1."""
    if not _simde_available():
        _skip_or_fail("SIMDe's headers are not installed (apt-get install libsimde-dev)")
    if not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("the emulated AVX-512 kernels are compiled for AVX2 + FMA; this CPU lacks them")
    copy = tmp_path_factory.mktemp("avx512_emulated")
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.pyc", ".pytest_cache")
    for folder in ("csrc", "pyscorepen", "kernels", "tests"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    env = {**os.environ, "PYSCOREPEN_AVX512_EMULATION": "1", "PYSCOREPEN_REQUIRE_EXT": "1",
           "MAX_JOBS": os.environ.get("MAX_JOBS", str(len(os.sched_getaffinity(0))))}
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                            "--build-temp", str(copy / "build")],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    return copy


def _run(copy: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYSCOREPEN_CPU_ISA"}
    env["PYTHONPATH"] = str(copy)   # the copy's package, ahead of an editable install of this one
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_build_is_not_emulated():
    """Emulation is a test build's alone: the package's own extension runs real kernels."""
    from pyscorepen.ops import _registry, available_cpu_isas
    from pyscorepen.ops.backend import avx512_emulated
    assert not avx512_emulated()
    if _registry.EXTENSION_LOADED and "avx512" in available_cpu_isas():
        assert "avx512f" in _cpu_flags()


@pytest.mark.slow
def test_emulated_build_offers_avx512_by_name_only(emulated_build):
    probe = ("import pyscorepen, pyscorepen._C as c, pyscorepen.ops as ops; "
             "print(pyscorepen.__file__); print(ops.backend.avx512_emulated()); print(ops.available_cpu_isas()); "
             "print(ops.cpu_isa())")
    result = _run(emulated_build, "-c", probe, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    path, emulated, isas, auto = result.stdout.strip().splitlines()[-4:]
    assert Path(path).resolve().is_relative_to(emulated_build.resolve())    # the copy, not this checkout
    assert emulated == "True"
    assert "avx512" in isas and "avx2" in isas
    assert auto == "avx2"            # auto never runs the emulated kernels


@pytest.mark.slow
def test_avx512_kernels_match_the_references(emulated_build):
    """Every op test's avx512 cases pass on the emulated build, and none of them skips."""
    result = _run(emulated_build, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "avx512",
                  *(str(Path("tests") / name) for name in OP_TESTS), timeout=3600)
    tail = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary, tail
    assert "skipped" not in summary, tail       # every avx512 case ran
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 100, tail
