"""The extension's C++ sources build off x86-64 (aarch64): every x86 intrinsic / `#pragma GCC
target` is behind PYSCOREPEN_X86_KERNELS (csrc/cpu/fused_mlp.h), and the ops fall back to their
generic ATen path there.

Checked by compiling csrc/ with ``-fsyntax-only``: with the aarch64 cross compiler
(``apt-get install g++-aarch64-linux-gnu``; .ci/run installs it) against this torch's headers,
and, needing no cross compiler, with the host compiler and ``-DPYSCOREPEN_X86_KERNELS=0`` (the
non-x86 branch of every kernel file; the cross compile also checks that the macro's detection
turns it off by itself).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
CROSS = shutil.which("aarch64-linux-gnu-g++")
HOST = shutil.which("g++")
FLAGS = ["-std=c++20", "-fsyntax-only", "-Wall", "-Werror", "-fopenmp", f"-I{os.path.join(ROOT, 'csrc')}"]


def _compile(compiler: str, sources: list[str], extra: list[str] = ()) -> None:
    result = subprocess.run([compiler, *FLAGS, *extra, *sources], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths
    return [f"-I{path}" for path in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
def test_kernel_sources_compile_for_aarch64():
    macros = subprocess.run([CROSS, "-std=c++20", "-dM", "-E", f"-I{os.path.join(ROOT, 'csrc')}", "-x", "c++", "-"],
                            input='#include "cpu/fused_mlp.h"\n', capture_output=True, text=True, timeout=60).stdout
    assert "#define PYSCOREPEN_X86_KERNELS 0" in macros   # the guard itself turns the x86 kernels off
    _compile(CROSS, KERNEL_SOURCES)


@pytest.mark.skipif(HOST is None, reason="no host g++")
def test_kernel_sources_compile_without_x86_kernels():
    """Host compiler, PYSCOREPEN_X86_KERNELS=0: the guarded (non-x86) branch of every kernel file."""
    _compile(HOST, KERNEL_SOURCES, ["-DPYSCOREPEN_X86_KERNELS=0"])


@pytest.mark.slow  # ATen headers: ~70 s on 2 shared cores
@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
def test_op_wrappers_compile_for_aarch64():
    """csrc/*.cpp (ATen op wrappers, ISA choice, Python module, the fused SAC step) for aarch64."""
    _compile(CROSS, sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))), ["-Wno-error", *_torch_includes()])
