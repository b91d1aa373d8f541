"""Bench of ``ensemble_mlp`` forward + backward (all gradients), ``provider`` x shape x threads:

* ``critic-256``: SAC's twin critics (E=2, [23, 256, 256, 1] ReLU, x shared) on the 256-row batch;
* ``critic-3840``: the same on COMBO's 3 x 1280 CQL rows;
* ``dynamics-256``: the dynamics ensemble (E=7, [23, 200, 200, 200, 200, 36] SiLU, x per member).

extra_info: GFLOP/s (3 x 2*in*out per layer, member and row: forward, dx chain and dW) and % of
the session's sgemm probe. Regression check: cpp/ref (best rounds) on the critic shapes, same run.
"""
from __future__ import annotations

import pytest
import torch

from benchutil import check_speedup, cpu_isa, record
from pyscorepen.ops import available_backends
from pyscorepen.ops.backend import cpp_min_rows
from pyscorepen.ops.ensemble_mlp import ensemble_mlp

SHAPES = {  # name: (members, batch, dims, activation, x shared)
    "critic-256": (2, 256, (23, 256, 256, 1), "relu", True),
    "critic-3840": (2, 3840, (23, 256, 256, 1), "relu", True),
    "dynamics-256": (7, 256, (23, 200, 200, 200, 200, 36), "silu", False),
}
# cpp / ref (best rounds), idle 2-core Zen 4, same run: 1 thread critic-256 1.27x, critic-3840 1.34x,
# dynamics-256 0.95x; 2 threads 1.23x, 1.29x, 1.06x (cpp ~90 / ~160 GFLOP/s on the critics).
# Floor on the critic shapes only (the SiLU dynamics shape is at the crossover).
SPEEDUP_FLOOR = 1.05
PROVIDERS = ["ref", "cpp"] + (["triton"] if torch.cuda.is_available() else [])
_BEST: dict[tuple[str, str, int], float] = {}


def flops_per_row(shape: str) -> int:
    """Forward + backward FLOPs of one batch row: 3 x 2*in*out per layer and member."""
    members, _, dims, _, _ = SHAPES[shape]
    return 3 * members * sum(2 * i * o for i, o in zip(dims, dims[1:]))


def make_inputs(shape: str, device: str = "cpu"):
    members, batch, dims, activation, shared = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*(() if shared else (members,)), batch, dims[0], generator=gen)
    weights = [torch.randn(members, i, o, generator=gen) / i**0.5 for i, o in zip(dims, dims[1:])]
    biases = [torch.zeros(members, o) for o in dims[1:]]
    tensors = [t.to(device).requires_grad_() for t in (x, *weights, *biases)]
    n = len(weights)
    return tensors[0], tensors[1:1 + n], tensors[1 + n:], activation


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ensemble_mlp_train(benchmark, sgemm_limit, provider, shape, threads):
    device = "cuda" if provider == "triton" else "cpu"
    x, weights, biases, activation = make_inputs(shape, device)
    if provider not in available_backends("ensemble_mlp", x):
        # e.g. triton without a GPU, cpp without the built extension: nothing to time
        pytest.skip(f"backend {provider!r} unavailable here")
    leaves = [x, *weights, *biases]
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step():
        out = ensemble_mlp(x, weights, biases, activation, backend=provider)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        synchronize()
        return grads

    benchmark.pedantic(step, rounds=30 if "3840" not in shape else 8, iterations=1, warmup_rounds=2)
    record(benchmark, rows=SHAPES[shape][1], flops_per_row=flops_per_row(shape), limit=sgemm_limit, shape=shape)
    _BEST[(provider, shape, threads)] = benchmark.stats.stats.min


@pytest.mark.parametrize("shape", ["critic-256", "critic-3840"])
def test_cpp_speedup_over_ref(shape):
    """Regression floor: cpp vs ref forward+backward (best rounds, 1 thread), both measured in this run,
    where the automatic policy picks cpp for this shape on this ISA (backend.CPP_MIN_ROWS)."""
    _, batch, _, activation, _ = SHAPES[shape]
    if batch < cpp_min_rows(f"ensemble_mlp/{activation}"):
        pytest.skip(f"auto runs ref for {shape} on the {cpu_isa()} ISA (CPP_MIN_ROWS): no floor to hold")
    check_speedup(_BEST, ("cpp", shape, 1), ("ref", shape, 1), SPEEDUP_FLOOR, f"ensemble_mlp {shape} cpp/ref")
