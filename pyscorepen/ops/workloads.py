"""Synthetic inputs of the C++ ops' shape classes, one builder per op, the sgemm probe, and the
batch sweeps that measure the automatic CPU policy (:data:`pyscorepen.ops.backend.CPP_MIN_ROWS` and
:data:`~pyscorepen.ops.backend.CPP_MAX_ROWS`).

The sizes are MOPO's HalfCheetah ones, the largest of the D4RL MuJoCo suite the built-in policy was
measured at: S = 17, A = 6 (input 23); a 7-member ensemble of 4 x 200 SiLU layers predicting
[mean | log-variance] of (next state, reward); the ScorePen score net 3 x 256 SiLU (D -> D); the SAC
actor and N = 2 twin critics of 2 x 256 ReLU. Shared by ``python -m pyscorepen.calibrate``,
``benches/cpu_policy.py`` and the op benches, so that all three time the same thing.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

OBS_DIM, ACT_DIM = 17, 6
IN_DIM = OBS_DIM + ACT_DIM
MEMBERS, DYNAMICS_HIDDEN = 7, (200, 200, 200, 200)
SCORE_HIDDEN = (256, 256, 256)
AGENT_HIDDEN, CRITICS = (256, 256), 2

DYNAMICS_DIMS = (IN_DIM, *DYNAMICS_HIDDEN, 2 * (OBS_DIM + 1))   # [23, 4 x 200, 36]
SCORE_DIMS = (IN_DIM, *SCORE_HIDDEN, IN_DIM)                    # [23, 3 x 256, 23]
ACTOR_DIMS = (OBS_DIM, *AGENT_HIDDEN, 2 * ACT_DIM)              # [17, 256, 256, 12]
CRITIC_DIMS = (IN_DIM, *AGENT_HIDDEN, 1)                        # [23, 256, 256, 1]


PROBE_SHAPE = (8192, 256, 256)  # M, K, N of the sgemm probe: the regime of the 200/256-wide MLP layers


def _best_seconds(fn, repeats: int = 7, wall: bool = False) -> float:
    """Best of ``repeats`` calls of ``fn`` after one warm-up call. On one torch thread the clock is
    the process's CPU time (a shared machine disturbs it least); on several, or with ``wall``, wall
    time."""
    clock = time.process_time if torch.get_num_threads() == 1 and not wall else time.perf_counter
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def probe_sgemm_gflops(repeats: int = 7, wall: bool = False) -> dict[str, float]:
    """MKL's and oneDNN's GFLOP/s on PROBE_SHAPE (best of ``repeats`` calls each) and the better one
    (``limit_gflops``): what this machine's GEMM libraries reach now, the yardstick of the benches'
    "% of the probe" and of ``python -m pyscorepen.profile``'s drift check."""
    m, k, n = PROBE_SHAPE
    a, w = torch.randn(m, k), torch.randn(k, n)
    w_t, bias = w.t().contiguous(), torch.zeros(n)
    flops = 2 * m * k * n
    result = {"mkl_gflops": flops / _best_seconds(lambda: torch.mm(a, w), repeats, wall) / 1e9}
    linear_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available() and linear_pointwise is not None:
        onednn = _best_seconds(lambda: linear_pointwise(a, w_t, bias, "none", [], ""), repeats, wall)
        result["onednn_gflops"] = flops / onednn / 1e9
    result["limit_gflops"] = max(result.values())
    return result


def mlp_flops(dims) -> int:
    """FLOPs of one row through an MLP of layer widths ``dims`` (2 per multiply-add)."""
    return sum(2 * i * o for i, o in zip(dims, dims[1:]))


ROLLOUT_FLOPS_PER_ROW = MEMBERS * mlp_flops(DYNAMICS_DIMS) + mlp_flops(SCORE_DIMS)
SCORE_FLOPS_PER_ROW = mlp_flops(SCORE_DIMS)
SOFT_VALUE_FLOPS_PER_ROW = mlp_flops(ACTOR_DIMS) + CRITICS * mlp_flops(CRITIC_DIMS)
# one SAC update: the target (actor + target critics forward), the critic step (forward + 2x
# backward), the actor step (actor forward + backward, critics forward + input-gradient backward)
SAC_UPDATE_FLOPS_PER_ROW = 4 * mlp_flops(ACTOR_DIMS) + 6 * CRITICS * mlp_flops(CRITIC_DIMS)


def _layers(gen: torch.Generator, dims, members: int | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Weights ``[(members,) in, out]`` scaled by 1/sqrt(in), zero biases."""
    lead = () if members is None else (members,)
    weights = [torch.randn(*lead, i, o, generator=gen) / i**0.5 for i, o in zip(dims, dims[1:])]
    return weights, [torch.zeros(*lead, o) for o in dims[1:]]


def _to(inputs: dict, device: str) -> dict:
    return {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device) if isinstance(v, Tensor) else v)
            for k, v in inputs.items()}


def rollout_step_inputs(batch: int, device: str = "cpu") -> dict:
    """Keyword arguments of :func:`pyscorepen.ops.rollout_step` for ``batch`` rows."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, OBS_DIM, generator=gen)                                # [B, S]
    actions = torch.rand(batch, ACT_DIM, generator=gen) * 2 - 1                       # [B, A]
    weights, biases = _layers(gen, DYNAMICS_DIMS, MEMBERS)
    member_index = torch.randint(0, MEMBERS, (batch,), generator=gen)                 # [B]
    noise = torch.randn(batch, OBS_DIM + 1, generator=gen)                            # [B, S + 1]
    score_weights, score_biases = _layers(gen, SCORE_DIMS)
    return _to(dict(obs=obs, actions=actions, input_mean=torch.zeros(IN_DIM), input_std=torch.ones(IN_DIM),
                    weights=weights, biases=biases, max_logvar=torch.full((OBS_DIM + 1,), 0.5),
                    min_logvar=torch.full((OBS_DIM + 1,), -10.0), member_index=member_index, noise=noise,
                    score_weights=score_weights, score_biases=score_biases), device)


def score_penalty_inputs(batch: int, device: str = "cpu") -> dict:
    """Keyword arguments of :func:`pyscorepen.ops.score_penalty` for ``batch`` rows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN_DIM, generator=gen)                                     # [B, D]
    weights, biases = _layers(gen, SCORE_DIMS)
    return _to(dict(x=x, weights=weights, biases=biases), device)


def soft_value_inputs(batch: int, device: str = "cpu") -> dict:
    """Keyword arguments of :func:`pyscorepen.ops.soft_value` for ``batch`` rows."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, OBS_DIM, generator=gen)                                  # [B, S]
    noise = torch.randn(batch, ACT_DIM, generator=gen)                                # [B, A]
    actor_weights, actor_biases = _layers(gen, ACTOR_DIMS)
    critic_weights, critic_biases = _layers(gen, CRITIC_DIMS, CRITICS)
    return _to(dict(obs=obs, noise=noise, actor_weights=actor_weights, actor_biases=actor_biases,
                    critic_weights=critic_weights, critic_biases=critic_biases, action_scale=torch.ones(ACT_DIM),
                    action_offset=torch.zeros(ACT_DIM), alpha=torch.tensor(0.2), log_std_min=-5.0,
                    log_std_max=2.0), device)


def _inference(op_name: str, make_inputs: Callable[[int], dict], batch: int) -> Callable[[str], None]:
    from pyscorepen import ops
    op, inputs = getattr(ops, op_name), make_inputs(batch)

    def run(backend: str) -> None:
        with torch.no_grad():
            op(**inputs, backend=backend)
    return run


def _ensemble_training(members: int, dims, activation: str, shared: bool, batch: int) -> Callable[[str], None]:
    """Forward + every gradient of ``ensemble_mlp`` (x ``[B, in]`` shared or ``[E, B, in]``)."""
    from pyscorepen.ops.ensemble_mlp import ensemble_mlp
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*(() if shared else (members,)), batch, dims[0], generator=gen).requires_grad_()
    weights, biases = _layers(gen, dims, members)
    leaves = [x, *(w.requires_grad_() for w in weights), *(b.requires_grad_() for b in biases)]

    def run(backend: str) -> None:
        out = ensemble_mlp(x, weights, biases, activation, backend=backend)
        torch.autograd.grad(out.square().sum(), leaves)
    return run


def _dynamics_fit_step(batch: int) -> Callable[[str], None]:
    """One minibatch step of the dynamics fit with ``batch`` rows per member: ``cpp`` the
    ``dynamics_fit_step`` op, ``ref`` the module path it replaces (``EnsembleDynamics.loss``,
    ``backward``, the fused Adam of ``make_optimizer``), as ``EnsembleDynamics.train_batches`` runs
    either; the same inputs every call."""
    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
    with torch.random.fork_rng(devices=[]):   # the same weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        dynamics = EnsembleDynamics(OBS_DIM, ACT_DIM, DynamicsConfig(ensemble_size=MEMBERS,
                                                                     hidden_dims=DYNAMICS_HIDDEN, batch_size=batch))
    optim = dynamics.make_optimizer(1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(MEMBERS, batch, IN_DIM, generator=gen)                            # [E, B, S+A]
    y = torch.randn(MEMBERS, batch, OBS_DIM + 1, generator=gen)                       # [E, B, S+1]

    def run(backend: str) -> None:
        if backend == "cpp":
            dynamics._fused_step("cpp", optim, x, y)
        else:
            loss = dynamics.loss(x, y, l2=False)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    return run


def _sac_update_step(batch: int) -> Callable[[str], None]:
    """One SAC update of ``batch`` rows (95 % model rows with a stored penalty, as MOPO / ScorePen
    sample them): ``cpp`` the ``sac_update`` op (``SAC._update_fused``, whatever the policy's limit),
    ``ref`` the module path it replaces (``SAC.update`` with ``fused_update=False``: the automatic
    choice of every op under the policy in force, fused Adam), as ``SAC.update`` runs either. Two
    agents of the same initial weights, each stepping on the same batch every call; the updates draw
    their noise from the global RNG, as in training."""
    from pyscorepen.algos.sac import SAC, SACConfig
    from pyscorepen.data import Batch
    agents = {}
    for backend in ("cpp", "ref"):
        with torch.random.fork_rng(devices=[]):   # the same weights for both, the caller's RNG untouched
            torch.manual_seed(0)
            config = SACConfig(hidden_dims=AGENT_HIDDEN, num_critics=CRITICS, fused_update=backend == "cpp")
            agents[backend] = SAC(OBS_DIM, ACT_DIM, config, -torch.ones(ACT_DIM), torch.ones(ACT_DIM))
    gen = torch.Generator().manual_seed(0)
    from_model = torch.arange(batch) >= round(batch * 0.05)                           # [B]
    rows = Batch(torch.randn(batch, OBS_DIM, generator=gen), torch.rand(batch, ACT_DIM, generator=gen) * 2 - 1,
                 torch.randn(batch, generator=gen), torch.randn(batch, OBS_DIM, generator=gen), torch.zeros(batch),
                 torch.rand(batch, generator=gen) * from_model, from_model)

    def run(backend: str) -> None:
        if backend == "cpp":
            agents["cpp"]._update_fused(rows, "cpp")
        else:
            agents["ref"].update(rows)
    return run


# shape class -> (batch sweep, factory(batch) -> run(backend), FLOPs per row). The sweeps are the
# batch sizes the library runs each class at (rollouts of 1 to 50k starts, SAC's 256, MOBILE's
# 10 x 5 x 243 = 12 150 next states, COMBO's 3 840 critic rows, the fit's 256 per member) and the
# small ones around the break-even of the C++ kernels. The fit step's rows are rows per member; the
# SAC update's are its critic rows (COMBO's 256 + 3 840 are timed as a plain SAC step of 4 096).
SWEEPS: dict[str, tuple[list[int], Callable[[int], Callable[[str], None]], int]] = {
    "rollout_step": ([1, 16, 64, 256, 4096], lambda b: _inference("rollout_step", rollout_step_inputs, b),
                     ROLLOUT_FLOPS_PER_ROW),
    "score_penalty": ([1, 16, 64, 256, 4096, 50_000],
                      lambda b: _inference("score_penalty", score_penalty_inputs, b), SCORE_FLOPS_PER_ROW),
    "soft_value": ([1, 16, 64, 256, 12_150], lambda b: _inference("soft_value", soft_value_inputs, b),
                   SOFT_VALUE_FLOPS_PER_ROW),
    "ensemble_mlp/relu": ([1, 8, 32, 64, 128, 256, 3840],
                          lambda b: _ensemble_training(CRITICS, CRITIC_DIMS, "relu", True, b),
                          3 * CRITICS * mlp_flops(CRITIC_DIMS)),
    "ensemble_mlp/silu": ([32, 64, 128, 256, 1024],
                          lambda b: _ensemble_training(MEMBERS, DYNAMICS_DIMS, "silu", False, b),
                          3 * MEMBERS * mlp_flops(DYNAMICS_DIMS)),
    "dynamics_fit_step": ([64, 128, 256, 512], _dynamics_fit_step, 3 * MEMBERS * mlp_flops(DYNAMICS_DIMS)),
    # a limit, not a threshold (backend.CPP_MAX_ROWS); last, so that its module path runs the
    # thresholds just measured (pyscorepen.calibrate)
    "sac_update": ([32, 256, 1024, 4096], _sac_update_step, SAC_UPDATE_FLOPS_PER_ROW),
}
