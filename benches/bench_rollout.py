"""Bench of a complete h-step model rollout, :func:`pyscorepen.models.dynamics.rollout` (MOPO
halfcheetah sizes: S=17, A=6, 7 members of 4x200 SiLU, 5 elites; ScorePen score net 3x256; a
(256, 256) SAC actor as the policy), with both generation-time penalties (score and MOPO
uncertainty) written into a replay buffer, ``provider`` = the ``rollout_step`` backend
(``ref``/``cpp`` through ``$PYSCOREPEN_BACKEND``).

Sizes (``case``):

* ``8k-1thread``: 8 192 start states x 5 steps = 40 960 transitions on one torch thread, the
  regression check (cpp/ref, best rounds, this run): least disturbed when the machine is shared;
* ``50k-2threads``: the issue's target measure, a full MOPO round of 50 000 start states x 5 steps
  (250 000 transitions) on both cores; 2 rounds (~3 s cpp, ~8 s ref each on an idle machine).

extra_info: transitions/s, GFLOP/s (ensemble + score net + policy per transition) and % of the
session's sgemm probe.

``test_scorepen_rollout``: the ScorePen-MORL rollout (score penalty alone), ``path`` = ``all``
(today's fused step over all 7 members, forced with ``all_members=True``) vs ``elite`` (the
penalty-aware rollout: only each row's sampled elite + the score net,
:meth:`EnsembleDynamics.step_members`), both on the default backends, same sizes and cases.
``test_elite_speedup_over_all`` asserts the 1-thread ratio and prints the 50k x 5, 2-thread one
(the issue's target, >= 2.5x; not asserted because 2-thread times swing on the shared machine).
"""
from __future__ import annotations

import pytest
import torch

from benchutil import record, check_speedup
from pyscorepen.data import ReplayBuffer
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics, rollout
from pyscorepen.models.nets import TanhGaussianActor, mlp, mlp_weights
from pyscorepen.ops import available_backends
from pyscorepen.ops.backend import ENV_VAR
from pyscorepen.penalties import ScorePenalty, UncertaintyPenalty

OBS_DIM, ACT_DIM, HIDDEN, SCORE_HIDDEN, POLICY_HIDDEN = 17, 6, (200, 200, 200, 200), (256, 256, 256), (256, 256)
ROLLOUT_LENGTH = 5
CASES = {"8k-1thread": (8192, 1, 3), "50k-2threads": (50_000, 2, 2)}   # start states, threads, rounds
# cpp / ref (best rounds), same run. Measured (1 thread, 2 shared cores): 1.46-1.56x (the policy,
# the buffer writes and the penalty sums are common to both)
SPEEDUP_FLOOR = 1.2
# elite-only / all-member ScorePen rollout (best rounds), same run, 1 thread. Measured on the shared
# 2-core Xeon: 1.9-3.2x depending on the load (the ensemble FLOPs alone shrink 7x; with the policy and
# the score net, which both paths run, the ideal ratio is 3.3x at these sizes)
ELITE_SPEEDUP_FLOOR = 1.5
_BEST: dict[str, float] = {}


def mlp_flops(dims) -> int:
    return sum(2 * i * o for i, o in zip(dims, dims[1:]))


IN_DIM = OBS_DIM + ACT_DIM
ELITE_FLOPS_PER_TRANSITION = (mlp_flops([IN_DIM, *HIDDEN, 2 * (OBS_DIM + 1)]) + mlp_flops([IN_DIM, *SCORE_HIDDEN, IN_DIM])
                              + mlp_flops([OBS_DIM, *POLICY_HIDDEN, 2 * ACT_DIM]))
FLOPS_PER_TRANSITION = (7 * mlp_flops([IN_DIM, *HIDDEN, 2 * (OBS_DIM + 1)]) + mlp_flops([IN_DIM, *SCORE_HIDDEN, IN_DIM])
                        + mlp_flops([OBS_DIM, *POLICY_HIDDEN, 2 * ACT_DIM]))


@pytest.fixture
def case(request):
    start_states, threads, rounds = CASES[request.param]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield request.param, start_states, rounds
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", list(CASES), indirect=True)
@pytest.mark.parametrize("provider", ["ref", "cpp"])
def test_rollout(benchmark, sgemm_limit, provider, case, monkeypatch):
    name, start_states, rounds = case
    start_obs = torch.randn(start_states, OBS_DIM, generator=torch.Generator().manual_seed(1))
    if provider not in available_backends("rollout_step", start_obs):
        # e.g. triton without a GPU, cpp without the built extension: nothing to time
        pytest.skip(f"backend {provider!r} unavailable here")
    monkeypatch.setenv(ENV_VAR, provider)
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(OBS_DIM, ACT_DIM, DynamicsConfig(hidden_dims=HIDDEN))
    score_params = mlp_weights(mlp(IN_DIM, SCORE_HIDDEN, IN_DIM))
    actor = TanhGaussianActor(OBS_DIM, ACT_DIM, POLICY_HIDDEN, -torch.ones(ACT_DIM), torch.ones(ACT_DIM))
    policy = lambda obs: actor(obs, with_log_prob=False)[0]                    # noqa: E731
    penalties = (ScorePenalty(1.0), UncertaintyPenalty(1.0))
    buffer = ReplayBuffer(start_states * ROLLOUT_LENGTH, OBS_DIM, ACT_DIM)
    stats = {}

    def run():
        stats.update(rollout(dynamics, policy, start_obs, ROLLOUT_LENGTH, buffer, penalties,
                             score_params=score_params, generator=torch.Generator().manual_seed(2)))

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    transitions = int(stats["rollout/transitions"])
    assert transitions == start_states * ROLLOUT_LENGTH
    record(benchmark, rows=transitions, flops_per_row=FLOPS_PER_TRANSITION, limit=sgemm_limit,
           transitions_per_s=transitions / benchmark.stats.stats.median)
    _BEST[(provider, name)] = benchmark.stats.stats.min


def test_cpp_speedup_over_ref():
    """Regression floor: cpp vs ref rollout time (best rounds), both measured in this run, at 1 thread
    (the 2-thread ratio is printed, not asserted: 2-thread times swing when the machine is shared)."""
    if ("cpp", "50k-2threads") in _BEST and ("ref", "50k-2threads") in _BEST:
        print(f"\nrollout cpp/ref, 50k x 5, 2 threads: "
              f"{_BEST[('ref', '50k-2threads')] / _BEST[('cpp', '50k-2threads')]:.2f}x (not asserted)")
    check_speedup(_BEST, ("cpp", "8k-1thread"), ("ref", "8k-1thread"), SPEEDUP_FLOOR, "rollout cpp/ref")


@pytest.mark.parametrize("case", list(CASES), indirect=True)
@pytest.mark.parametrize("path", ["all", "elite"])
def test_scorepen_rollout(benchmark, sgemm_limit, path, case):
    """ScorePen-MORL rollout (score penalty alone): all-member fused step vs elite-only."""
    name, start_states, rounds = case
    start_obs = torch.randn(start_states, OBS_DIM, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(OBS_DIM, ACT_DIM, DynamicsConfig(hidden_dims=HIDDEN))
    score_params = mlp_weights(mlp(IN_DIM, SCORE_HIDDEN, IN_DIM))
    actor = TanhGaussianActor(OBS_DIM, ACT_DIM, POLICY_HIDDEN, -torch.ones(ACT_DIM), torch.ones(ACT_DIM))
    policy = lambda obs: actor(obs, with_log_prob=False)[0]                    # noqa: E731
    buffer = ReplayBuffer(start_states * ROLLOUT_LENGTH, OBS_DIM, ACT_DIM)
    stats = {}

    def run():
        stats.update(rollout(dynamics, policy, start_obs, ROLLOUT_LENGTH, buffer, (ScorePenalty(1.0),),
                             score_params=score_params, generator=torch.Generator().manual_seed(2),
                             all_members=(path == "all")))

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    transitions = int(stats["rollout/transitions"])
    assert transitions == start_states * ROLLOUT_LENGTH
    # useful FLOPs of each path (the elite path does 1/7 of the ensemble work by design)
    record(benchmark, rows=transitions, limit=sgemm_limit,
           flops_per_row=FLOPS_PER_TRANSITION if path == "all" else ELITE_FLOPS_PER_TRANSITION,
           transitions_per_s=transitions / benchmark.stats.stats.median)
    _BEST[(f"scorepen-{path}", name)] = benchmark.stats.stats.min


def test_elite_speedup_over_all():
    """Penalty-aware rollout vs today's fused all-member rollout, both measured in this run."""
    if ("scorepen-all", "50k-2threads") in _BEST and ("scorepen-elite", "50k-2threads") in _BEST:
        print(f"\nScorePen rollout elite/all, 50k x 5, 2 threads: "
              f"{_BEST[('scorepen-all', '50k-2threads')] / _BEST[('scorepen-elite', '50k-2threads')]:.2f}x "
              "(target 2.5x; not asserted)")
    check_speedup(_BEST, ("scorepen-elite", "8k-1thread"), ("scorepen-all", "8k-1thread"), ELITE_SPEEDUP_FLOOR,
                  "ScorePen rollout elite/all, 8k x 5, 1 thread")
