#!/usr/bin/env bash
# Wheels of the pure-Python and MuJoCo dependencies that a CUDA machine's image may lack (it has
# torch, triton, numpy, pytest, pytest-benchmark, pytest-xdist, hypothesis, tqdm, matplotlib), for
# a machine that cannot reach a package index: downloaded here, carried there, installed with
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# then `PYTHON=python3 bash scripts/gpu_check.sh RESULTS`. The versions are those the CPU install
# resolves (pip list there); --no-deps, so each needed dependency is named here. mujoco-studio (a
# viewer, never imported by the library) is left out. Minari, Ray and websocket-client are not
# needed by gpu_check.sh (the cliff task, a synthetic profile).
#
#   bash scripts/gpu_wheels.sh [python-version, default 3.12] [dest, default .whl]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
DEST="${2:-.whl}"
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
version() { python -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
for name in tyro docstring-parser typeguard gymnasium farama-notifications mujoco mujoco-core glfw pyopengl; do
    v="$(version "$name")"
    python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${PLATFORMS[@]}" -d "$DEST" "$name${v:+==$v}" 2>&1 | grep -v "is ignored" || true
done
ls -la "$DEST"
