"""Bench of CDSA's test-time correction (Algorithm 2, Eq. 10) on a batch of parallel envs.

Providers, Hopper sizes (S = 11, A = 3), g, h: [14, 32, 128, 32, A | S]; I: [22, 128 x 3, 3]:

* ``modules``: :meth:`CDSA.auxiliary_actions` as used (three nn.Sequential MLPs with LeakyReLU);
* ``ensemble-ref`` / ``ensemble-cpp``: g and h stacked as one E = 2 ensemble MLP (same input x,
  output padded to max(S, A)) through :func:`pyscorepen.ops.ensemble_mlp.ensemble_mlp`, forward only,
  plus I as a plain MLP. The fused kernels only implement ReLU and SiLU, so this measures a ReLU
  stand-in of the same shapes: what fusing g and h would gain if the kernel had LeakyReLU.

Rows = parallel envs per correction call (an evaluation steps all episodes together).
"""
from __future__ import annotations

import pytest
import torch

from pyscorepen.algos.cdsa import CDSA, CDSAConfig
from pyscorepen.ops import available_backends
from pyscorepen.ops.ensemble_mlp import ensemble_mlp

S, A = 11, 3


def stacked(agent: CDSA):
    """g and h as [2, in, out] weights (out padded to max(S, A)), the ReLU stand-in's parameters."""
    nets = [agent.action_score.net, agent.state_score.net]
    linears = [[m for m in net if isinstance(m, torch.nn.Linear)] for net in nets]
    out = max(S, A)
    weights, biases = [], []
    for layers in zip(*linears):
        w = [layer.weight.t() for layer in layers]
        b = [layer.bias for layer in layers]
        if layers[0] is linears[0][-1]:
            w = [torch.nn.functional.pad(x, (0, out - x.shape[1])) for x in w]
            b = [torch.nn.functional.pad(x, (0, out - x.shape[0])) for x in b]
        weights.append(torch.stack(w).contiguous()); biases.append(torch.stack(b).contiguous())
    return weights, biases


@pytest.mark.parametrize("rows", [10, 100, 1000])
@pytest.mark.parametrize("provider", ["modules", "ensemble-ref", "ensemble-cpp"])
def test_cdsa_correct(benchmark, one_thread, provider, rows):
    torch.manual_seed(0)
    agent = CDSA(S, A, CDSAConfig(), -torch.ones(A), torch.ones(A))
    obs, actions = torch.randn(rows, S), torch.rand(rows, A) * 2 - 1
    if provider == "modules":
        fn = lambda: agent.auxiliary_actions(obs, actions)
    else:
        backend = provider.split("-")[1]
        x = agent.action_score.normalize(obs, actions)
        if backend not in available_backends("ensemble_mlp", x):
            pytest.skip(f"ensemble_mlp backend {backend} unavailable here")
        weights, biases = stacked(agent)

        def fn():
            with torch.no_grad():
                y = ensemble_mlp(x, weights, biases, "relu", backend=backend)       # [2, B, max(S, A)]
                return y[0, :, :A], agent.inverse(obs, obs + y[1, :, :S])
    benchmark.extra_info["rows"] = rows
    benchmark.pedantic(fn, rounds=200, iterations=5, warmup_rounds=20)
