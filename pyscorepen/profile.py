"""``python -m pyscorepen.profile``: where the time of a training run goes, and how long 1M steps take.

    python -m pyscorepen.profile --algo scorepen --steps 2000            # synthetic Hopper sizes
    python -m pyscorepen.profile --task mujoco/hopper/medium-v0 --steps 2000 --mode ref

Times, on this machine and with this build, every phase of a run (ScorePen-MORL Algorithm 1 /
MOPO Algorithm 2) and projects them to a run of ``--target-steps`` (default 1M) policy steps:

* **pretraining**: minibatches of the dynamics-ensemble fit (7 x 4x200, batch 256 per member) on
  the whole dataset, projected to ``--dynamics-epochs`` full epochs; steps of the score model
  (only when a penalty needs it), projected to its ``score.train_steps``;
* **rollout**: whole rollout rounds (``--rollout-batch-size`` start states x ``--rollout-length``,
  every ``--rollout-freq`` steps);
* **sampling**: drawing each SAC batch from D and D_model;
* **update**: the SAC (critic + actor + alpha + Polyak) update;
* **evaluation**: ``--eval-episodes`` full-length (1000-step) episodes every ``--eval-interval``
  steps, from measured parts: env creation, the batched policy call and one env step (an
  untrained policy falls within a few steps; a good Hopper policy runs the whole episode).

Before and after the measurements it reads the sgemm probe (the better of MKL and oneDNN on an
8192 x 256 x 256 GEMM): a projection holds for the machine's speed it was taken at, and when that
speed changed during the profile by more than 15 % (a busy core, a VM's drift) the table says so.

``--mode fast`` is the library's default path (automatic kernel choice, fused optimizers,
penalty-aware elite-only rollouts); ``--mode ref`` the reference path everything is tested
against (``PYSCOREPEN_BACKEND=ref``, ``SAC.update_ref``, plain Adam with the L2 term in the
dynamics loss, all-member rollouts). The steps measured may be fewer than a run has: every phase
is timed per unit (per step, per round, per minibatch) and multiplied out, so ``--steps 1000``
already gives one rollout round and 1 000 updates.

The default ``--task synthetic`` needs no dataset: ``--dataset-size`` random transitions of
Hopper's sizes (obs 11, action 3; MOPO's 50k-start rollouts, batch 256), no termination function
(every rollout runs its full length: the worst case), and evaluation on gymnasium's Hopper-v5
when MuJoCo is installed (else a stand-in env of the same sizes, which leaves out physics).
"""
from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch


PHASES = ("pretrain_dynamics", "pretrain_score", "rollout", "sampling", "update", "evaluation")
FULL_EPISODE = 1000   # steps of a full MuJoCo episode (time limit)


@dataclass
class ProfileConfig:
    algo: Literal["scorepen", "mopo", "combo", "sac"] = "scorepen"
    """Algorithm whose run is profiled (train --algo)."""
    task: str = "synthetic"
    """'synthetic' (random data of --obs-dim/--action-dim) or any train --task (cliff, a Minari id or path)."""
    mode: Literal["fast", "ref"] = "fast"
    """fast: default kernels, fused optimizers, elite-only rollouts; ref: the reference path everywhere."""
    steps: int = 1000
    """Policy-learning steps measured (rollout rounds included every --rollout-freq steps). Range: [1, inf)."""
    target_steps: int = 1_000_000
    """Steps of the run whose wall time is projected. Range: [1, inf)."""
    obs_dim: int = 11
    """Synthetic task: observation size (Hopper: 11). Range: [1, inf)."""
    action_dim: int = 3
    """Synthetic task: action size (Hopper: 3). Range: [1, inf)."""
    dataset_size: int = 1_000_000
    """Synthetic task: transitions in the offline dataset (D4RL hopper-medium: 1M). Range: [2, inf)."""
    batch_size: int = 256
    """SAC minibatch size. Range: [1, inf)."""
    rollout_batch_size: int = 50_000
    """Start states per rollout round (MOPO: 50k). Range: [1, inf)."""
    rollout_length: int = 5
    """Rollout horizon h. Range: [1, inf)."""
    rollout_freq: int = 1000
    """Steps between rollout rounds. Range: [1, inf)."""
    eval_interval: int = 2000
    """Steps between evaluations in the projected run (train's default). Range: [1, inf)."""
    eval_episodes: int = 10
    """Episodes per evaluation. Range: [1, inf)."""
    dynamics_epochs: int = 172
    """Dynamics-fit epochs the projection assumes: 172, what the uncapped, early-stopped fit of a
    real 1M-transition dataset took (halfcheetah-medium, issue 10's shared fit,
    artifacts/pretrained/; hopper-medium-replay's 400k took 227). Early stopping (5 epochs
    without a 1% holdout gain) decides the real count; 30 is the cap of OfflineRL-Kit's MOBILE
    example (--dynamics-max-epochs 30), which the library does not impose. Range: [1, inf)."""
    dynamics_batches: int = 200
    """Dynamics minibatches timed (x members x batch 256); projected to whole epochs (~1.5 s at 2
    threads on an AMD EPYC Zen 5, where one run timing 40 read 7.9 ms per minibatch and three timing
    200 read 6.4-7.2 ms). Range: [1, inf)."""
    score_batches: int = 40
    """Score-model steps timed; projected to score.train_steps. Range: [1, inf)."""
    device: str = "cpu"
    """Torch device of the run (cuda: every timer waits for the GPU first)."""
    threads: int | None = None
    """Torch intra-op threads (None: $OMP_NUM_THREADS or the cores this process may use). Range: [1, inf)."""
    seed: int = 0
    """Seed of the synthetic data and the networks. Range: [0, 4294967295]."""


# ------------------------------------------------------------------------------------ synthetic task
class _StandInEnv:
    """A gymnasium-like env of the synthetic task's sizes (used when MuJoCo is missing): linear
    dynamics, 1000-step episodes, no physics cost."""

    def __init__(self, obs_dim: int, action_dim: int):
        import gymnasium as gym
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self._obs, self._t = np.zeros(obs_dim, np.float32), 0

    def reset(self, seed=None):
        self._obs, self._t = np.random.default_rng(seed).normal(size=self._obs.shape).astype(np.float32), 0
        return self._obs, {}

    def step(self, action):
        self._obs = (0.99 * self._obs + 0.01 * np.resize(action, self._obs.shape)).astype(np.float32)
        self._t += 1
        return self._obs, float(-np.square(self._obs).sum()), False, self._t >= FULL_EPISODE, {}

    def close(self):
        pass


def synthetic_task(obs_dim: int, action_dim: int, size: int, seed: int = 0):
    """A :class:`pyscorepen.tasks.Task` of random transitions (s' = s + small nonlinear step + noise)."""
    from pyscorepen.data import TransitionDataset
    from pyscorepen.tasks import Task

    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, obs_dim, generator=gen)                                    # [N, S]
    actions = torch.rand(size, action_dim, generator=gen) * 2 - 1                      # [N, A]
    mix = torch.randn(obs_dim + action_dim, obs_dim + 1, generator=gen) / math.sqrt(obs_dim + action_dim)
    step = torch.tanh(torch.cat([obs, actions], 1) @ mix)                              # [N, S+1]
    next_obs = obs + 0.1 * step[:, :obs_dim] + 0.01 * torch.randn(size, obs_dim, generator=gen)
    dataset = TransitionDataset(obs, actions, step[:, obs_dim].contiguous(), next_obs, torch.zeros(size))

    def make_env():
        if (obs_dim, action_dim) == (11, 3):
            try:
                import gymnasium as gym
                return gym.make("Hopper-v5")
            except Exception:  # noqa: BLE001 - MuJoCo not installed: the stand-in
                pass
        return _StandInEnv(obs_dim, action_dim)

    return Task("synthetic", dataset, make_env, termination_fn=None)


# ------------------------------------------------------------------------------------ measuring
def _backend_env(mode: str):
    """PYSCOREPEN_BACKEND=ref for the reference mode, restored afterwards."""
    from pyscorepen.ops import backend
    return backend.requested_backend("ref") if mode == "ref" else contextlib.nullcontext()


def _train_config(config: ProfileConfig):
    from pyscorepen.config import TrainConfig, defaults_for
    train = defaults_for(config.algo, config.task) if config.task != "synthetic" else TrainConfig(algo=config.algo)
    train = replace(train, task=config.task, seed=config.seed, device=config.device, batch_size=config.batch_size, progress=False,
                    eval_interval=config.eval_interval, eval_episodes=config.eval_episodes,
                    rollout=replace(train.rollout, batch_size=config.rollout_batch_size,
                                    length=config.rollout_length, freq=config.rollout_freq))
    if config.mode == "ref":
        train = replace(train, sac=replace(train.sac, fused_optim=False))
    return train


def _time_dynamics(trainer, config: ProfileConfig) -> tuple[float, float]:
    """(seconds per minibatch, minibatches per epoch) of the dynamics fit on the whole dataset."""
    dynamics, data = trainer.dynamics, trainer.dataset
    cfg = dynamics.config
    x = dynamics.normalize(data.obs, data.actions)                                  # [N, S+A]
    y = torch.cat([data.next_obs - data.obs, data.rewards[:, None]], -1)           # [N, S+1]
    n_hold = min(int(len(data) * cfg.holdout_ratio), cfg.max_holdout)
    n_train = len(data) - n_hold
    per_epoch = math.ceil(n_train / cfg.batch_size)
    timed = min(config.dynamics_batches, per_epoch)
    if config.mode == "fast":
        optim, l2_in_loss = dynamics.make_optimizer(cfg.lr), False
    else:
        optim, l2_in_loss = torch.optim.Adam(dynamics.parameters(), lr=cfg.lr), True
    gen = torch.Generator().manual_seed(config.seed)
    warm = torch.randperm(n_train, generator=gen)[: 2 * cfg.batch_size].to(x.device)
    dynamics.train_epoch(x, y, warm, optim, gen, l2_in_loss=l2_in_loss)            # warm-up
    idx = torch.randperm(n_train, generator=gen)[: timed * cfg.batch_size].to(x.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    dynamics.train_epoch(x, y, idx, optim, gen, l2_in_loss=l2_in_loss)
    sync()
    return (time.perf_counter() - t0) / timed, per_epoch


def _time_score(trainer, config: ProfileConfig) -> float:
    """Seconds per score-model step (the loop body of ScoreModel.fit)."""
    score, data = trainer.score, trainer.dataset
    x = score.normalize(data.obs, data.actions)                                     # [N, D]
    optim = torch.optim.Adam(score.net.parameters(), lr=score.config.lr)

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def one():
        idx = torch.randint(x.shape[0], (score.config.batch_size,), device=x.device)
        loss = score.dsm_loss(x[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    for _ in range(3):
        one()
    sync()
    t0 = time.perf_counter()
    for _ in range(config.score_batches):
        one()
    sync()
    return (time.perf_counter() - t0) / config.score_batches


def _time_evaluation(trainer, task, config: ProfileConfig) -> float:
    """Seconds of one evaluation of full-length episodes, built from measured parts (an untrained
    policy falls within a few steps, so timing a real evaluation would mostly time env creation):
    creating and resetting ``eval_episodes`` envs + FULL_EPISODE x (one batched deterministic
    policy call on ``eval_episodes`` rows + ``eval_episodes`` env steps)."""
    episodes = config.eval_episodes
    t0 = time.perf_counter()
    envs = [task.make_env() for _ in range(episodes)]
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    create = time.perf_counter() - t0
    batch = torch.as_tensor(np.stack(obs), dtype=torch.float32)                       # [episodes, S]
    with torch.no_grad():
        trainer.agent.act(batch.to(trainer.device), deterministic=True)
        reps = 100
        t0 = time.perf_counter()
        for _ in range(reps):
            trainer.agent.act(batch.to(trainer.device), deterministic=True).cpu()
        policy = (time.perf_counter() - t0) / reps
    # env steps alone: the actions drawn beforehand, and the resets a random policy's early falls
    # need left out of the clock (a full-length episode has none; with them a Hopper-v5 step read
    # ~40 % slower here: 236 vs 165 us, AMD EPYC Zen 3)
    env, steps = envs[0], 300
    actions = [env.action_space.sample() for _ in range(steps)]
    env_step, t0 = 0.0, time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env_step += time.perf_counter() - t0
            env.reset()
            t0 = time.perf_counter()
    env_step = (env_step + time.perf_counter() - t0) / steps
    for env in envs:
        env.close()
    return create + FULL_EPISODE * (policy + episodes * env_step)


def profile_run(config: ProfileConfig, task=None) -> dict:
    """Measure every phase and project a ``config.target_steps`` run. Returns a dict with
    ``measured_s`` / ``per_unit_s`` / ``projected_s`` per phase, ``projected_1m_steps_hours``
    (for ``target_steps``), rates and the configuration."""
    from pyscorepen.models.dynamics import requires_all_members, rollout
    from pyscorepen.tasks import make_task
    from pyscorepen.threads import configure_threads
    from pyscorepen.trainer import Trainer

    from pyscorepen.validation import check_ranges, device_problems, raise_problems
    check_ranges(config)
    raise_problems(device_problems(config.device))
    threads = configure_threads(config.threads)
    from pyscorepen.ops import backend
    cpu_policy = backend.cpu_policy()   # which kernels auto picks (built-in or calibrated thresholds, limits)
    torch.manual_seed(config.seed)
    sync = torch.cuda.synchronize if config.device.startswith("cuda") else (lambda: None)
    if task is None:
        task = (synthetic_task(config.obs_dim, config.action_dim, config.dataset_size, config.seed)
                if config.task == "synthetic" else make_task(config.task))
    train_cfg = _train_config(config)
    measured = dict.fromkeys(PHASES, 0.0)
    per_unit: dict[str, float] = {}
    counts: dict[str, float] = {}
    on_cpu = not config.device.startswith("cuda")
    probe = {"start": _probe() if on_cpu else None}
    with _backend_env(config.mode), tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(train_cfg, task, run_dir)
        # ---------------------------------------------------------------- pretraining
        if trainer.algorithm.uses_model:
            t0 = time.perf_counter()
            per_unit["pretrain_dynamics"], per_epoch = _time_dynamics(trainer, config)
            measured["pretrain_dynamics"] = time.perf_counter() - t0
            counts["pretrain_dynamics"] = per_epoch * config.dynamics_epochs
        if trainer.score is not None:
            t0 = time.perf_counter()
            per_unit["pretrain_score"] = _time_score(trainer, config)
            measured["pretrain_score"] = time.perf_counter() - t0
            counts["pretrain_score"] = trainer.score.config.train_steps
            trainer.freeze_score()
        # ---------------------------------------------------------------- policy learning
        all_members = True if config.mode == "ref" else requires_all_members(trainer.rollout_penalties)
        update = trainer.agent.update_ref if config.mode == "ref" else trainer.agent.update
        rounds, r = 0, train_cfg.rollout
        for step in range(config.steps):
            if trainer.algorithm.uses_model and (step % r.freq == 0 or len(trainer.model_buffer) == 0):
                idx = torch.randint(len(trainer.dataset), (r.batch_size,), device=trainer.device)
                sync()
                t0 = time.perf_counter()
                rollout(trainer.dynamics, trainer.policy, trainer.dataset.obs[idx], r.length, trainer.model_buffer,
                        penalties=trainer.rollout_penalties, termination_fn=task.termination_fn,
                        score_params=trainer.score_params, chunk_size=r.chunk_size, all_members=all_members)
                sync()
                measured["rollout"] += time.perf_counter() - t0
                rounds += 1
            t0 = time.perf_counter()
            batch = trainer.sample_batch()
            sync()
            t1 = time.perf_counter()
            update(batch)
            sync()
            t2 = time.perf_counter()
            measured["sampling"] += t1 - t0
            measured["update"] += t2 - t1
        if rounds:
            per_unit["rollout"] = measured["rollout"] / rounds
        per_unit["sampling"] = measured["sampling"] / config.steps
        per_unit["update"] = measured["update"] / config.steps
        # ---------------------------------------------------------------- evaluation
        t0 = time.perf_counter()
        per_unit["evaluation"] = _time_evaluation(trainer, task, config)
        measured["evaluation"] = time.perf_counter() - t0
    probe["end"] = _probe() if on_cpu else None
    T = config.target_steps

    def units(steps: int) -> dict[str, float]:
        """How many of each phase's units a run of ``steps`` policy steps has."""
        per_run = {**counts, "rollout": math.ceil(steps / r.freq), "sampling": steps, "update": steps,
                   "evaluation": steps // config.eval_interval + 1}
        return {k: per_run[k] for k in per_unit}

    projected = {k: per_unit[k] * n for k, n in units(T).items()}
    projected_1m = sum(per_unit[k] * n for k, n in units(1_000_000).items()) / 3600
    return {
        "algo": config.algo, "task": config.task, "mode": config.mode, "threads": threads,
        "steps_measured": config.steps, "target_steps": T, "rollout_rounds_measured": rounds,
        "rollout_all_members": bool(all_members and trainer.algorithm.uses_model),
        "measured_s": measured, "per_unit_s": per_unit, "units": units(T), "projected_s": projected,
        "projected_1m_steps_hours": projected_1m, "projected_target_hours": sum(projected.values()) / 3600,
        "updates_per_s": config.steps / max(measured["update"], 1e-12),
        "rollout_transitions_per_s": (rounds * r.batch_size * r.length / measured["rollout"]) if rounds else None,
        "dynamics_epochs_assumed": config.dynamics_epochs,
        "cpu_policy": cpu_policy,
        "sgemm_probe_gflops": probe,
    }


PROBE_DRIFT = 0.15   # the probe's relative change during a profile above which the table warns


def _probe() -> float:
    """The sgemm probe (better of MKL and oneDNN, best of 3, wall time): how fast this machine's
    GEMMs run now. Read before and after the measurements: on a VM whose speed drifts (+-25 %
    between consecutive profiles seen here) a projection means something only with the machine's
    speed it was taken at."""
    from pyscorepen.ops.workloads import probe_sgemm_gflops
    with torch.no_grad():
        return probe_sgemm_gflops(repeats=3, wall=True)["limit_gflops"]


UNIT_NAMES = {"pretrain_dynamics": "batch", "pretrain_score": "step", "rollout": "round",
              "sampling": "step", "update": "step", "evaluation": "eval"}


def format_table(result: dict) -> str:
    """The breakdown as a plain-text table (one row per phase, the projection last)."""
    T = result["target_steps"]
    head = (f"{result['algo']} on {result['task']} ({result['mode']} path, {result['threads']} thread(s)); "
            f"{result['steps_measured']} steps measured, projected to {T:,} steps")
    rows = [f"{'phase':<18}{'measured s':>11}{'per unit':>22}{'units':>13}{'projected h':>13}{'share':>8}"]
    total = sum(result["projected_s"].values())
    for phase in PHASES:
        if phase not in result["per_unit_s"]:
            continue
        per = result["per_unit_s"][phase]
        proj = result["projected_s"][phase]
        rows.append(f"{phase:<18}{result['measured_s'][phase]:>11.2f}{per * 1e3:>13.2f} ms/{UNIT_NAMES[phase]:<6}"
                    f"{result['units'][phase]:>13,.0f}{proj / 3600:>13.3f}{100 * proj / max(total, 1e-12):>7.1f}%")
    rows.append(f"{'total':<18}{'':>11}{'':>22}{'':>13}{total / 3600:>13.3f}{'100.0%':>8}")
    notes = [f"updates/s {result['updates_per_s']:.1f}"]
    if result["rollout_transitions_per_s"]:
        notes.append(f"rollout {result['rollout_transitions_per_s']:,.0f} transitions/s "
                     f"({'all members' if result['rollout_all_members'] else 'elite-only'})")
    notes.append(f"dynamics fit projected at {result['dynamics_epochs_assumed']} epochs")
    policy = result.get("cpu_policy") or {}
    if policy.get("isa"):
        notes.append(f"CPU kernels {policy['isa']}, {policy['source']} policy")
    lines = [head, *rows, "; ".join(notes)]
    probe = result.get("sgemm_probe_gflops") or {}
    if probe.get("start") and probe.get("end"):
        lines.append(f"sgemm probe {probe['start']:.0f} GFLOP/s before, {probe['end']:.0f} after")
        if abs(probe["end"] / probe["start"] - 1) > PROBE_DRIFT:
            lines.append("warning: the machine's speed changed during the profile (other work on the cores, or a VM's "
                         "drift): the projection is uncertain by about that much; rerun it on an idle machine")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tyro

    from pyscorepen.allocator import tune_malloc
    from pyscorepen.errors import report
    config = tyro.cli(ProfileConfig, args=argv, description=__doc__.split("\n\n")[0])
    tune_malloc()   # as `python -m pyscorepen.train` does, so the profile measures what a run does

    def go(cfg: ProfileConfig) -> dict:
        result = profile_run(cfg)
        print(format_table(result))
        return result

    return report(go, config)


if __name__ == "__main__":
    sys.exit(main())
