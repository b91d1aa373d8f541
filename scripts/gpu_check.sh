#!/usr/bin/env bash
# GPU readiness check, on a CUDA machine, in under 8 minutes (each step has its own time limit):
#   1. every Triton kernel compiled on the GPU against its pure-PyTorch reference (the existing
#      op tests with TRITON_INTERPRET unset);
#   2. the op benches with the `triton` provider (next to ref, on the GPU);
#   3. a CUDA-graph-captured SAC update vs the eager one (python -m pyscorepen.gpu_check graph), and
#      the whole-step Triton kernels (fused SAC update, dynamics-fit step) timed against the module
#      path and checked against their references at full size (python -m pyscorepen.gpu_check kernels);
#   4. a 2,000-step ScorePen-MORL run on the GPU (train CLI, cliff task, pretraining included),
#      and the 2,000-step Hopper-size profile of every phase (python -m pyscorepen.profile).
# Writes ONE results file (default gpu_check_results.txt; first argument to change it) with each
# step's output and exit status, and a summary at the end. Exit status: 0 all passed, 1 a step
# failed, 2 no CUDA device (nothing is run).
#
#   bash scripts/gpu_check.sh [results-file]
#
# On a machine without a package index whose image has torch + triton but not this project's other
# dependencies: `bash scripts/gpu_wheels.sh` here (wheels into .whl/, 14 MB), carry .whl/ there, then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   PYTHONUNBUFFERED=1 PYTHON=python3 bash scripts/gpu_check.sh results.txt
# The C++ extension is not needed (the GPU paths are Triton; the CPU ops fall back to the reference).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="$(realpath -m "${1:-gpu_check_results.txt}")"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET PYSCOREPEN_BACKEND

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing run." | tee "$RESULTS"
    exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
: > "$RESULTS"
{
    echo "# pyscorepen GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name())"
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 || echo "triton: not importable"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} >> "$RESULTS"

SUMMARY=()
FAILED=0
step() {   # step <name> <seconds> <command...>
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    echo -e "\n## $name (limit ${limit}s)\n\$ $*" >> "$RESULTS"
    timeout "$limit" "$@" >> "$RESULTS" 2>&1
    local rc=$?
    local line="$name: exit $rc, $((SECONDS - t0)) s"
    [ $rc -eq 124 ] && line="$line (TIMED OUT)"
    [ $rc -ne 0 ] && FAILED=1
    SUMMARY+=("$line")
    echo "$line"
}

# step 1 compiles every kernel specialization the tests use: spread over up to 8 pytest workers
# (pytest-xdist) where it is installed, each with its share of the cores for the CPU references (no
# oversubscription); -v so that a timed-out run still shows what passed
XDIST=()
WORKERS=1
if "$PY" -c "import xdist" 2>/dev/null; then
    WORKERS=$(( $(nproc) < 8 ? $(nproc) : 8 ))
    XDIST=(-n "$WORKERS")
fi
step "1 triton kernels vs reference (compiled)" 130 env OMP_NUM_THREADS=$(( $(nproc) / WORKERS )) \
    "$PY" -m pytest -v --tb=short -p no:cacheprovider "${XDIST[@]}" tests/test_triton_kernels.py tests/test_ops_rollout_step.py \
        tests/test_ops_score_penalty.py tests/test_ops_soft_value.py tests/test_ops_ensemble_mlp.py
step "2 op benches, triton provider" 70 \
    "$PY" -m pytest -q benches/bench_rollout_step.py benches/bench_score_penalty.py benches/bench_soft_value.py \
        benches/bench_ensemble_mlp.py -k "triton or ref" -p no:cacheprovider \
        --benchmark-columns=median,iqr,rounds --benchmark-json="$WORK/benches.json"
cp "$WORK/benches.json" "${RESULTS%.txt}_benches.json" 2>/dev/null || true
step "3a CUDA-graph SAC update" 45 "$PY" -m pyscorepen.gpu_check graph 1000
step "3b whole-step Triton kernels (SAC update, dynamics fit)" 60 "$PY" -m pyscorepen.gpu_check kernels 200
step "4a 2,000-step ScorePen run (cliff, cuda)" 90 \
    "$PY" -m pyscorepen.train --algo scorepen --task cliff --device cuda --steps 2000 --eval-interval 1000 \
        --eval-episodes 5 --dynamics.max-epochs 20 --out "$WORK/scorepen-cliff" --no-progress
step "4b 2,000-step ScorePen profile (Hopper sizes, cuda)" 80 \
    "$PY" -m pyscorepen.profile --algo scorepen --device cuda --steps 2000 --threads 1

{
    echo -e "\n## summary"
    printf '%s\n' "${SUMMARY[@]}"
    [ $FAILED -eq 0 ] && echo "ALL PASSED" || echo "SOME STEPS FAILED"
} | tee -a "$RESULTS"
echo "results: $RESULTS"
exit $FAILED
