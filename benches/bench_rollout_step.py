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

OBS_DIM, ACT_DIM, MEMBERS, HIDDEN, SCORE_HIDDEN = 17, 6, 7, (200, 200, 200, 200), (256, 256, 256)
BATCHES = [256, 4096, 50_000]
SPEEDUP_FLOOR = 1.5  # cpp / ref at 50k measured 2.3-2.9x (2 threads, shared machine; benches/README.md)
PROVIDERS = ["ref", "cpp"] + (["triton"] if torch.cuda.is_available() else [])
_MEDIANS: dict[tuple[str, int], float] = {}


def mlp_flops(dims) -> int:
    return sum(2 * i * o for i, o in zip(dims, dims[1:]))


IN_DIM = OBS_DIM + ACT_DIM
FLOPS_PER_ROW = MEMBERS * mlp_flops([IN_DIM, *HIDDEN, 2 * (OBS_DIM + 1)]) + mlp_flops([IN_DIM, *SCORE_HIDDEN, IN_DIM])


def make_inputs(batch: int, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(0)
    dims = [IN_DIM, *HIDDEN, 2 * (OBS_DIM + 1)]
    score_dims = [IN_DIM, *SCORE_HIDDEN, IN_DIM]
    inputs = dict(
        obs=torch.randn(batch, OBS_DIM, generator=gen), actions=torch.rand(batch, ACT_DIM, generator=gen) * 2 - 1,
        input_mean=torch.zeros(IN_DIM), input_std=torch.ones(IN_DIM),
        weights=[torch.randn(MEMBERS, i, o, generator=gen) / i**0.5 for i, o in zip(dims, dims[1:])],
        biases=[torch.zeros(MEMBERS, o) for o in dims[1:]],
        max_logvar=torch.full((OBS_DIM + 1,), 0.5), min_logvar=torch.full((OBS_DIM + 1,), -10.0),
        member_index=torch.randint(0, MEMBERS, (batch,), generator=gen),
        noise=torch.randn(batch, OBS_DIM + 1, generator=gen),
        score_weights=[torch.randn(i, o, generator=gen) / i**0.5 for i, o in zip(score_dims, score_dims[1:])],
        score_biases=[torch.zeros(o) for o in score_dims[1:]],
    )
    return {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in inputs.items()}


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
