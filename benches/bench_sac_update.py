"""Bench of one agent update (halfcheetah sizes: S=17, A=6, (256, 256) actor and twin critics,
batch 256), ``provider`` x algorithm x torch threads.

* ``sac``: the update SAC, MOPO and ScorePen share (5 % model rows with a stored penalty);
* ``combo``: COMBO (half model rows, 10 sampled actions per set: 3 x 1280 extra critic rows).

Providers: ``ref`` = :meth:`pyscorepen.algos.sac.SAC.update_ref` (plain eager update: critic weight
gradients in the actor loss, per-parameter Adam loop, one ``.item()`` per statistic), ``fast`` =
:meth:`~pyscorepen.algos.sac.SAC.update` on the modules (``SACConfig(fused_update=False)``: fused Adam,
actor loss without critic weight gradients, one statistics conversion, foreach Polyak), ``fused`` =
:meth:`~pyscorepen.algos.sac.SAC.update` as the one ``sac_update`` op (C++: forward, backward, Adam
and Polyak without autograd; the default wherever it applies; COMBO's CQL term goes in as the op's
``cql_*`` arguments, its samples drawn in Python). ``ref`` and ``fast`` share the nets (in-place activations),
so ``ref`` is not the pre-optimization code: benches/README.md lists that comparison separately.

extra_info: updates/s, GFLOP/s (useful FLOPs, below) and % of the session's sgemm probe.
Regression check: fast/ref measured in this run, never absolute times.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import pytest
import torch

from benchutil import record, check_speedup
from pyscorepen.algos import COMBO, ComboConfig
from pyscorepen.data import Batch
from pyscorepen.algos.sac import SAC, SACConfig
from pyscorepen.ops.backend import requested_backend

OBS_DIM, ACT_DIM, HIDDEN, BATCH, NUM_CRITICS = 17, 6, (256, 256), 256, 2
SAMPLED_ACTIONS = 10
MODEL_FRACTION = {"sac": 0.95, "combo": 0.5}   # MOPO/ScorePen real ratio 0.05, COMBO 0.5
THREADS = [1, 2]
# fast / ref (best rounds, 1 thread), same run. Measured (2 cores shared with other jobs, load ~3):
# sac 1.13-1.34x, combo 0.97-1.01x (its regularizer, 85 % of the FLOPs, is the same in both)
SPEEDUP_FLOOR = {"sac": 1.0, "combo": 0.9}
# fused / ref (best rounds, 1 thread; and CPU-time medians), same run; the target is 2x.
# Measured on the shared Xeon (load ~9 on 2 cores): 1.5-2.3x wall (best rounds), 1.8x CPU time; benches/README.md
FUSED_SPEEDUP_FLOOR = 1.4
# COMBO's CQL term (85 % of its FLOPs) is the same critic GEMMs on both paths, so its fused/ref gain is
# smaller: CPU-time medians 1.43-1.46x on a native Zen 3 (AVX2; session 12, the first ISA where auto
# runs COMBO fused and this test stopped skipping), one full `pytest benches/` run read below 1.4.
FUSED_CPU_TIME_FLOOR = {"sac": FUSED_SPEEDUP_FLOOR, "combo": 1.2}
_BEST: dict[tuple[str, str, int], float] = {}   # best round: the least disturbed by other jobs


def mlp_flops(dims) -> int:
    return sum(2 * i * o for i, o in zip(dims, dims[1:]))


ACTOR_FLOPS = mlp_flops([OBS_DIM, *HIDDEN, 2 * ACT_DIM])                         # per row, forward
CRITIC_FLOPS = NUM_CRITICS * mlp_flops([OBS_DIM + ACT_DIM, *HIDDEN, 1])          # per row, forward
# target (actor + target critic forward), critic step (forward + 2x backward), actor step
# (actor forward + backward, critic forward + input-gradient backward)
SAC_FLOPS_PER_ROW = 4 * ACTOR_FLOPS + 6 * CRITIC_FLOPS
# COMBO per model row: the actor at s and s' (no grad; its R samples per state share one MLP pass,
# TanhGaussianActor(repeats=R); before session 8 it ran R times and this count had 2R passes),
# critic forward + backward on 3R rows
COMBO_FLOPS_PER_MODEL_ROW = 2 * ACTOR_FLOPS + 3 * SAMPLED_ACTIONS * 3 * CRITIC_FLOPS


def update_flops(algo: str, batch: Batch) -> int:
    """Useful FLOPs of one update of ``algo`` ("sac" or "combo") on ``batch``."""
    model_rows = int(batch.from_model.sum())
    return BATCH * SAC_FLOPS_PER_ROW + (model_rows * COMBO_FLOPS_PER_MODEL_ROW if algo == "combo" else 0)


def make_batch(model_fraction: float, gen: torch.Generator) -> Batch:
    from_model = torch.arange(BATCH) >= round(BATCH * (1 - model_fraction))
    penalty = torch.rand(BATCH, generator=gen) * from_model
    return Batch(torch.randn(BATCH, OBS_DIM, generator=gen), torch.rand(BATCH, ACT_DIM, generator=gen) * 2 - 1,
                 torch.randn(BATCH, generator=gen), torch.randn(BATCH, OBS_DIM, generator=gen), torch.zeros(BATCH),
                 penalty, from_model)


def make_agent(algo: str, provider: str):
    torch.manual_seed(0)
    config = SACConfig(hidden_dims=HIDDEN, num_critics=NUM_CRITICS, fused_optim=provider != "ref",
                       fused_update=provider == "fused")
    low, high = -torch.ones(ACT_DIM), torch.ones(ACT_DIM)
    if algo == "combo":
        # rho='model': the push-down on model rows only, the workload of the recorded numbers and of
        # the FLOP count below (the default 'mix' runs it on every row of the batch, 2x here)
        agent = COMBO(OBS_DIM, ACT_DIM, config, low, high,
                      combo=ComboConfig(num_sampled_actions=SAMPLED_ACTIONS, rho="model"))
    else:
        agent = SAC(OBS_DIM, ACT_DIM, config, low, high)
    return agent, (agent.update_ref if provider == "ref" else agent.update)


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("algo", ["sac", "combo"])
@pytest.mark.parametrize("provider", ["ref", "fast", "fused"])
def test_update(benchmark, sgemm_limit, monkeypatch, provider, algo, threads):
    if provider == "ref":  # everything on the reference backends (the nets' fused ensemble_mlp too)
        monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    agent, update = make_agent(algo, provider)
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(MODEL_FRACTION[algo], gen) for _ in range(4)]
    if provider == "fused" and agent.fused_update_backend(batches[0]) is None:
        pytest.skip(f"{algo}: no fused update here (the C++ extension is not built, or the op's batch-size "
                    "policy for this ISA, pyscorepen.ops.backend.cpp_max_rows, sends these rows to the module path)")
    state = {"i": 0}

    def step():
        state["i"] += 1
        return update(batches[state["i"] % len(batches)])

    rounds = 20 if algo == "sac" else 5
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
    record(benchmark, rows=1, flops_per_row=update_flops(algo, batches[0]), limit=sgemm_limit,
           updates_per_s=1 / benchmark.stats.stats.median, batch=BATCH)
    _BEST[(provider, algo, threads)] = benchmark.stats.stats.min


@pytest.mark.parametrize("algo", ["sac", "combo"])
def test_fast_speedup_over_ref(algo):
    """Regression floor: fast vs ref update rate (best rounds), both measured in this run, at 1 thread (2 threads
    on the shared 2-core machine swing by up to 30x between rounds: printed, not asserted)."""
    for threads in THREADS[1:]:
        if ("fast", algo, threads) in _BEST and ("ref", algo, threads) in _BEST:
            print(f"\n{algo} update fast/ref at {threads} threads: "
                  f"{_BEST[('ref', algo, threads)] / _BEST[('fast', algo, threads)]:.2f}x (not asserted)")
    check_speedup(_BEST, ("fast", algo, 1), ("ref", algo, 1), SPEEDUP_FLOOR[algo], f"{algo} update fast/ref at 1 thread")


def test_fused_speedup():
    """fused vs ref (the floor, 1 thread) and vs fast (printed), best rounds of this run."""
    for threads in THREADS:
        for other in ("ref", "fast"):
            if ("fused", "sac", threads) in _BEST and (other, "sac", threads) in _BEST:
                print(f"\nsac update fused/{other} at {threads} threads: "
                      f"{_BEST[(other, 'sac', threads)] / _BEST[('fused', 'sac', threads)]:.2f}x")
    check_speedup(_BEST, ("fused", "sac", 1), ("ref", "sac", 1), FUSED_SPEEDUP_FLOOR,
                  "sac update fused/ref at 1 thread")


@pytest.mark.parametrize("algo", ["sac", "combo"])
def test_fused_cpu_time(one_thread, algo):
    """CPU time (``time.process_time``) per update, the three providers interleaved round by round on one
    thread: unlike wall time it does not count the time other jobs hold the core, so its ratios hold on a
    loaded shared machine (caches are still shared). Prints medians and ratios; asserts the floor on fused/ref."""
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(MODEL_FRACTION[algo], gen) for _ in range(4)]
    agents = {}
    for provider in ("ref", "fast", "fused"):
        agents[provider] = make_agent(algo, provider)
    times: dict[str, list[float]] = {p: [] for p in agents}
    for rnd in range(43 if algo == "sac" else 15):
        for provider, (_, update) in agents.items():
            # ref: every op on the reference backend, as test_update's; fast and fused: the caller's choice
            with requested_backend("ref") if provider == "ref" else contextlib.nullcontext():
                start = time.process_time()
                update(batches[rnd % len(batches)])
                times[provider].append(time.process_time() - start)
    median = {p: statistics.median(t[3:]) for p, t in times.items()}   # 3 warm-up rounds
    print(f"\n{algo} update CPU time per update, 1 thread: " +
          ", ".join(f"{p} {1e3 * m:.2f} ms ({1 / m:.0f}/s)" for p, m in median.items()) +
          f"; fused/ref {median['ref'] / median['fused']:.2f}x, fused/fast {median['fast'] / median['fused']:.2f}x")
    if agents["fused"][0].fused_update_backend(batches[0]) is None:
        pytest.skip("no fused update here (C++ extension not built, or the op's batch-size policy on this ISA)")
    assert median["ref"] / median["fused"] >= FUSED_CPU_TIME_FLOOR[algo]
