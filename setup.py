"""Build of pyscorepen: pure-Python package + optional C++ extension ``pyscorepen._C``.

Install (see pyproject.toml):  pip install torch==2.13.0 && pip install --no-build-isolation -e ".[test]"

* The extension is built from csrc/ with torch.utils.cpp_extension (ninja, -O3, OpenMP).
  No -march=native: the AVX-512 and AVX2+FMA kernels are enabled per translation unit with
  ``#pragma GCC target`` and chosen at run time, so the binary runs on any x86-64 CPU
  (CPUs with neither use the chunked ATen path). Off x86-64 (aarch64) the kernel files compile
  to stubs and every op runs its ATen path (tests/test_build_guard.py).
* CUDA sources (csrc/cuda/*.cu, if any) are compiled only when torch is a CUDA build
  and CUDA_HOME is set; a CPU torch never tries nvcc.
* PYSCOREPEN_AVX512_EMULATION=1 makes a test build whose AVX-512 kernels run on emulated
  intrinsics (SIMDe's headers: apt-get install libsimde-dev; csrc/cpu/avx512_emulation.h), so they
  can be tested on any AVX2 CPU (tests/test_avx512_emulated.py). Never for use: it is slow, and
  auto never picks its "avx512".
* If torch is not importable at build time (isolated build env) or the compile fails,
  the package installs without the extension and ``import pyscorepen`` falls back to the
  reference ops with a one-line warning. PYSCOREPEN_REQUIRE_EXT=1 makes a failed build fatal.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
REQUIRE_EXT = os.environ.get("PYSCOREPEN_REQUIRE_EXT") == "1"
AVX512_EMULATION = os.environ.get("PYSCOREPEN_AVX512_EMULATION") == "1"
SIMDE_HEADER = os.path.join("simde", "x86", "avx512.h")


def _warn(message: str) -> None:
    print(f"pyscorepen setup: WARNING: {message}", file=sys.stderr)


def extension_config() -> dict:
    if os.environ.get("PYSCOREPEN_NO_EXT") == "1":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        message = ("torch is not importable in the build environment; installing without the C++ extension "
                   "(use `pip install --no-build-isolation -e .` with torch installed)")
        if REQUIRE_EXT:
            raise RuntimeError(message)
        _warn(message)
        return {}

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    use_cuda = bool(torch.version.cuda) and CUDA_HOME is not None and bool(cuda_sources) \
        and os.environ.get("PYSCOREPEN_NO_CUDA") != "1"
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-Wall"]
    if AVX512_EMULATION:
        cxx_flags += ["-DPYSCOREPEN_AVX512_EMULATED=1", "-Wno-psabi"]
        include = os.environ.get("SIMDE_INCLUDE_DIR")
        if include:
            cxx_flags.append(f"-I{include}")
        if not any(os.path.isfile(os.path.join(folder, SIMDE_HEADER))
                   for folder in (include or "", "/usr/include", "/usr/local/include")):
            raise RuntimeError("PYSCOREPEN_AVX512_EMULATION=1 needs SIMDe's headers (apt-get install libsimde-dev, "
                               "or SIMDE_INCLUDE_DIR=<folder holding simde/>)")
    if use_cuda:
        extension = CUDAExtension(
            "pyscorepen._C", sources + cuda_sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"])
    else:
        extension = CppExtension(
            "pyscorepen._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

    class OptionalBuildExtension(BuildExtension):
        """A failed compile leaves a working pure-Python install (reference ops)."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any compiler/linker failure
                if REQUIRE_EXT:
                    raise
                _warn(f"building pyscorepen._C failed ({error}); the reference ops will be used")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001
                if REQUIRE_EXT:
                    raise
                _warn(f"building {ext.name} failed ({error}); the reference ops will be used")

    return {"ext_modules": [extension],
            "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(
    packages=[*find_packages(include=["pyscorepen", "pyscorepen.*"]), "pyscorepen.kernels"],
    package_dir={"pyscorepen.kernels": "kernels"},
    **extension_config(),
)
