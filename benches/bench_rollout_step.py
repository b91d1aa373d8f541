"""Bench of ``rollout_step`` (MOPO halfcheetah sizes: S=17, A=6, 7 members of 4x200 SiLU,
ScorePen score net 3x256), ``provider`` x batch size.

extra_info: transitions/s, GFLOP/s (ensemble 1.85 MFLOP + score net 0.29 MFLOP per transition)
and % of the session's sgemm probe. The regression check at the end compares cpp with ref
measured in this same run (never absolute times): cpp must be >= SPEEDUP_FLOOR x ref at the
largest batch.
"""
from __future__ import annotations

import pytest
import torch

from benchutil import bench_op, check_speedup, record
from pyscorepen.ops import rollout_step
from pyscorepen.ops.workloads import ROLLOUT_FLOPS_PER_ROW
from pyscorepen.ops.workloads import rollout_step_inputs as make_inputs

BATCHES = [256, 4096, 50_000]
SPEEDUP_FLOOR = 1.5  # cpp / ref at 50k measured 2.3-2.9x (2 threads, shared machine; benches/README.md)
PROVIDERS = ["ref", "cpp"] + (["triton"] if torch.cuda.is_available() else [])
_MEDIANS: dict[tuple[str, int], float] = {}


FLOPS_PER_ROW = ROLLOUT_FLOPS_PER_ROW


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rollout_step(benchmark, sgemm_limit, provider, batch):
    device = "cuda" if provider == "triton" else "cpu"
    rounds = 3 if batch * (1 if provider != "ref" else 4) >= 50_000 else 10
    bench_op(benchmark, rollout_step, "rollout_step", make_inputs(batch, device), provider, rounds)
    median = record(benchmark, rows=batch, flops_per_row=FLOPS_PER_ROW, limit=sgemm_limit,
                    transitions_per_s=batch / benchmark.stats.stats.median)
    _MEDIANS[(provider, batch)] = median


def test_cpp_speedup_over_ref():
    """Regression floor: cpp vs ref throughput ratio, both measured in this run."""
    batch = BATCHES[-1]
    check_speedup(_MEDIANS, ("cpp", batch), ("ref", batch), SPEEDUP_FLOOR, f"rollout_step cpp/ref at B={batch}")
