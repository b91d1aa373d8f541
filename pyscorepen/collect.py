"""Collect D4RL-style Minari datasets with the library's own SAC.

    python -m pyscorepen.collect --env-id Hopper-v5 --levels medium medium-replay \\
        --steps 300000 --dataset-size 200000 --expert-return 3234.3

Recipes (Fu et al. 2020, D4RL §5 "Gym-MuJoCo"):

* ``random``: a uniform random policy.
* ``medium``: the SAC policy early-stopped when its return reaches 1/3 of the expert's,
  measured above the random policy (``--medium-fraction``; i.e. a D4RL normalized score of
  33). The expert return comes from, in this order: ``--expert-return``; ``--expert-run-dir``
  (a finished collect run, its ``summary.json``); otherwise this run trains the expert for
  ``--steps`` first and then picks the earliest saved policy that reached the threshold.
  With a known expert return and no expert level requested, training stops at the threshold.
* ``medium-replay``: every env transition SAC saw up to the medium policy (its replay buffer).
  Our SAC reaches the medium threshold much sooner than D4RL's did (Hopper-v5: 65k steps,
  HalfCheetah-v5: 75k, vs D4RL's medium-replay sizes of about 400k and 200k), so
  ``--medium-replay-size N`` keeps training past the medium policy until the buffer holds N
  transitions and takes its first N: the replay buffer of the continued training. The
  ``medium`` policy is still the first one to reach the threshold.
* ``expert``: the policy after ``--steps`` SAC steps.
* ``medium-expert``: the union of the medium and expert episodes.

Every dataset stores ``ref_min_score`` (mean return of the uniform random policy over
``--ref-episodes`` episodes) and ``ref_max_score`` (the expert return above), so D4RL
normalized scores work. Datasets are sampled from the stochastic SAC policy, and returns
for the medium threshold / ``ref_max_score`` are measured the same way
(``--deterministic-policy`` switches both to the mean action).

Resumable: the run folder (``--run-dir``, default ``runs/collect/<env-id>-seed<seed>``) holds
``state.pt`` (SAC, replay buffer, counters; written at every evaluation and on Ctrl-C),
``policies/step_<N>.pt`` (actor snapshots), ``evals.jsonl`` and ``summary.json``. Rerun
the same command to continue; a finished dataset is never rewritten.

Reproducible across machines (``--reproducible``, the default): before torch starts, the
collector pins every floating-point code path that depends on the CPU to AVX2
(:data:`REPRODUCIBLE_ENV`: ATen's kernel dispatch, MKL's conditional numerical reproducibility
mode, oneDNN's ISA), re-executing itself with those variables when they are not set, and runs
on ``--torch-threads`` threads. With the same command and seed, two x86-64 machines with AVX2
(AMD Zen 3, Zen 4, Intel) then write byte-identical datasets, so a dynamics ensemble fitted on
one machine's dataset matches another's (its fingerprint holds the data's sha256). Without the
pins, SAC's matmuls round differently on AVX-512 and AVX2 machines and the training
trajectories, hence the datasets, diverge after a few thousand steps. Changing
``--torch-threads`` changes the summation order and so the datasets. On other CPUs (aarch64)
the pins do not apply and datasets are reproducible on the same machine type only.

``--ref-scores-only --task <dataset>`` computes reference scores for any Minari dataset that
lacks them and writes ``pyscorepen_ref_scores.json`` next to its ``data/`` folder, which the
loader then uses (ref_min: random policy in the dataset's env; ref_max: ``--expert-return``
or the expert of ``--expert-run-dir``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from pyscorepen import runs
from pyscorepen.data import ReplayBuffer
from pyscorepen.evaluation_metrics import REF_SCORES_FILE
from pyscorepen.algos.sac import SAC, SACConfig
from pyscorepen.tasks.minari_task import (COLLECT_NAMESPACE, MinariTaskError, collected_dataset_id, write_checksums,
                                          minari_datasets_root, resolve_dataset_location,
                                          _env_spec_from_metadata)

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_LEVELS = ("medium", "medium-replay", "expert", "medium-expert")
EXPERT_LEVELS = ("expert", "medium-expert")


def _online_sac_config() -> SACConfig:
    # Online SAC learning rates (Haarnoja et al. 2018, Table 1: 3e-4 for all networks)
    return SACConfig(actor_lr=3e-4, critic_lr=3e-4, alpha_lr=3e-4)


@dataclass
class CollectConfig:
    env_id: str = "Hopper-v5"
    """Gymnasium env to collect on (any Box-space env; MuJoCo v5 envs are the tested ones)."""
    levels: tuple[str, ...] = LEVELS
    """Dataset levels to write: random, medium, medium-replay, expert, medium-expert."""
    steps: int = 1_000_000
    """SAC env steps to train the expert (an upper bound when training stops early at medium). Range: [1, inf)."""
    dataset_size: int = 1_000_000
    """Transitions in each random / medium / expert dataset (the last episode is cut as a time-out).
    Range: [1, inf)."""
    expert_return: float | None = None
    """Expert return (e.g. D4RL's 3234.3 for Hopper); sets the medium threshold and ref_max_score.
    Range: (-inf, inf)."""
    expert_run_dir: str | None = None
    """A finished collect run whose expert return (summary.json) sets the threshold and ref_max_score."""
    medium_fraction: float = 1.0 / 3.0
    """Medium threshold: ref_min + fraction * (expert_return - ref_min). Range: (0, 1]."""
    medium_replay_size: int = 0
    """medium-replay holds the first max(medium step, N) SAC replay transitions; N > medium step keeps
    training past the medium policy (D4RL-like sizes: Hopper 400k, HalfCheetah 200k, Walker2d 300k).
    0 = the D4RL recipe as written (the buffer up to the medium policy). Range: [0, inf)."""
    run_dir: str | None = None
    """Run folder (state, policy snapshots, logs); default runs/collect/<env-id>-seed<seed>."""
    datasets_path: str | None = None
    """Where datasets are written; default $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    namespace: str = COLLECT_NAMESPACE
    """Dataset ids are <namespace>/<env family, lowercase>/<level>-v<dataset_version>."""
    dataset_version: int = 0
    """Version suffix of the dataset ids. Range: [0, inf)."""
    seed: int = 0
    """Seed of SAC, the envs and the dataset rollouts. Range: [0, 4294967295]."""
    learning_starts: int = 5000
    """Uniform random actions (and no update) for this many initial steps. Range: [0, inf)."""
    batch_size: int = 256
    """SAC mini-batch size. Range: [1, inf)."""
    eval_every: int = 5000
    """Evaluate, snapshot the policy and checkpoint every this many env steps. Range: [1, inf)."""
    eval_episodes: int = 5
    """Episodes per evaluation during training. Range: [1, inf)."""
    ref_episodes: int = 10
    """Episodes averaged for ref_min_score (random policy) and the final expert return. Range: [1, inf)."""
    deterministic_policy: bool = False
    """Roll out the mean action instead of sampling (datasets and returns alike)."""
    ref_scores_only: bool = False
    """Only compute reference scores of --task and write pyscorepen_ref_scores.json next to it."""
    task: str | None = None
    """Minari dataset id or path for --ref-scores-only."""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest for these small nets on a shared CPU). Part of what
    makes a dataset reproducible: other thread counts sum in another order. Range: [1, inf)."""
    reproducible: bool = True
    """Pin torch's CPU code paths to AVX2 (:data:`REPRODUCIBLE_ENV`; the collector re-executes
    itself with them) so that every x86-64 machine with AVX2 writes byte-identical datasets for
    the same command. ``--no-reproducible`` uses the fastest ISA of this CPU instead."""
    progress: bool = True
    """Show tqdm progress bars."""
    sac: SACConfig = field(default_factory=_online_sac_config)
    """SAC hyperparameters."""


REPRODUCIBLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""Environment that pins torch's CPU numerics to one code path on every x86-64 CPU with AVX2:
ATen's vectorized kernels (``ATEN_CPU_CAPABILITY``), MKL's GEMMs (conditional numerical
reproducibility, ``MKL_CBWR``) and oneDNN's (``ONEDNN_MAX_CPU_ISA``). All three are read once, when
the library first runs a kernel, so they must be set before the process starts."""


def reproducible_env_missing(environ=os.environ) -> dict[str, str]:
    """The :data:`REPRODUCIBLE_ENV` entries ``environ`` lacks; empty off x86-64 (no pin applies)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {k: v for k, v in REPRODUCIBLE_ENV.items() if environ.get(k) != v}


def isa_record() -> dict:
    """What the datasets' numerics depend on, stored in the run summary."""
    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in REPRODUCIBLE_ENV}, "torch": torch.__version__}


# --------------------------------------------------------------------------------------- rollouts
def _make_env(env_id: str) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return gym.make(env_id)
        except gym.error.Error as err:   # unknown id / version, missing dependency
            raise MinariTaskError(f"--env-id {env_id}: {err}") from err


def validate(config: CollectConfig) -> None:
    """Before anything is written: ranges, levels, the env and the output folders."""
    from pyscorepen.validation import check_ranges, output_dir_problems, raise_problems
    check_ranges(config)
    problems = []
    unknown = [level for level in config.levels if level not in LEVELS]
    if unknown:
        problems.append(f"--levels {' '.join(config.levels)}: unknown {', '.join(unknown)}; "
                        f"choose from {', '.join(LEVELS)}")
    if config.ref_scores_only:
        if not config.task:
            problems.append("--ref-scores-only needs --task <Minari dataset id or path>")
        raise_problems(problems)
        return
    if config.run_dir:
        problems += output_dir_problems(config.run_dir, "--run-dir")
    if config.datasets_path:
        problems += output_dir_problems(config.datasets_path, "--datasets-path")
    raise_problems(problems)
    _make_env(config.env_id).close()


class RandomPolicy:
    """Uniform random actions in the action box."""

    def __init__(self, action_space: gym.spaces.Box, seed: int):
        self.low, self.high = action_space.low, action_space.high
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class ActorPolicy:
    """numpy obs -> numpy action through a SAC actor (sampled or mean action)."""

    def __init__(self, sac: SAC, deterministic: bool):
        self.sac, self.deterministic = sac, deterministic

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)          # [1, S]
        return self.sac.act(obs_t, deterministic=self.deterministic)[0].numpy()


def run_episodes(env: gym.Env, policy, num_episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of ``num_episodes`` full episodes."""
    returns = []
    for i in range(num_episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def rollout_episodes(env: gym.Env, policy, num_transitions: int, seed: int, desc: str = "",
                     progress: bool = True) -> list[dict]:
    """Full episodes until ``num_transitions`` transitions; the last one is cut and marked truncated."""
    episodes, total = [], 0
    bar = tqdm(total=num_transitions, desc=desc, disable=not progress, leave=False,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    while total < num_transitions:
        obs, _ = env.reset(seed=seed + len(episodes))
        ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            action = policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += 1
            truncated = truncated or total >= num_transitions
            for key, value in (("observations", obs), ("actions", action), ("rewards", reward),
                               ("terminations", terminated), ("truncations", truncated)):
                ep[key].append(value)
            done = terminated or truncated
        bar.update(len(ep["rewards"]))
        episodes.append({k: np.asarray(v) for k, v in ep.items()})
    bar.close()
    return episodes


def episodes_from_buffer(buffer: ReplayBuffer, timeouts: torch.Tensor, end: int) -> list[dict]:
    """Split buffer rows [0, end) into episodes at terminals / time-outs (a trailing partial
    episode is marked truncated). Consecutive rows of one episode share obs/next_obs."""
    terminals = buffer.terminals[:end].bool().numpy()
    cuts = terminals | timeouts[:end].bool().numpy()
    cuts[end - 1] = True
    obs, next_obs = buffer.obs[:end].numpy(), buffer.next_obs[:end].numpy()
    actions, rewards = buffer.actions[:end].numpy(), buffer.rewards[:end].numpy()
    episodes, start = [], 0
    for stop in (np.nonzero(cuts)[0] + 1):
        sl = slice(start, stop)
        episodes.append({
            "observations": np.concatenate([obs[start:start + 1], next_obs[sl]]),
            "actions": actions[sl], "rewards": rewards[sl],
            "terminations": terminals[sl],
            "truncations": np.r_[np.zeros(stop - start - 1, dtype=bool), not terminals[stop - 1]],
        })
        start = stop
    return episodes


# --------------------------------------------------------------------------------------- minari io
def _episode_buffers(episodes: list[dict]):
    from minari.data_collector.episode_buffer import EpisodeBuffer
    return [EpisodeBuffer(id=i, observations=ep["observations"].astype(np.float64),
                          actions=ep["actions"].astype(np.float32), rewards=ep["rewards"].astype(np.float64),
                          terminations=ep["terminations"].astype(bool), truncations=ep["truncations"].astype(bool))
            for i, ep in enumerate(episodes)]


def dataset_exists(dataset_id: str, root: Path) -> bool:
    return (root / dataset_id / "data" / "metadata.json").is_file()


def write_dataset(dataset_id: str, episodes: list[dict], env_id: str, root: Path, ref_min: float | None,
                  ref_max: float | None, ref_episodes: int, description: str) -> None:
    """Write a Minari dataset atomically: build it in a hidden staging folder, then move it."""
    import minari
    from minari.namespace import create_namespace, list_local_namespaces

    root = Path(root).resolve()
    staging = root / ".pyscorepen_staging"
    shutil.rmtree(staging / dataset_id, ignore_errors=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs = dict(ref_min_score=ref_min, ref_max_score=ref_max) if ref_max is not None else {}
            minari.create_dataset_from_buffers(
                dataset_id, _episode_buffers(episodes), env=env_id, eval_env=env_id,
                algorithm_name="pyscorepen.collect (SAC, D4RL recipe)", author="pyscorepen",
                author_email="n/a", code_permalink="pyscorepen/collect.py", description=description,
                num_episodes_average_score=ref_episodes, **kwargs)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    final = root / dataset_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / dataset_id, final)
    write_checksums(final, final / "data")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:  # register the namespace like minari does, so `minari list local` shows the dataset
        namespace = dataset_id.rsplit("/", 1)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if namespace not in list_local_namespaces():
                create_namespace(namespace)
    except Exception as err:  # noqa: BLE001 - cosmetic only
        print(f"[collect] could not register namespace metadata: {err}", file=sys.stderr)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def read_episodes(dataset_id: str, root: Path) -> list[dict]:
    import minari
    data = minari.MinariDataset(root / dataset_id / "data")
    return [{"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
             "terminations": ep.terminations, "truncations": ep.truncations} for ep in data.iterate_episodes()]


def _episode_stats(episodes: list[dict]) -> dict:
    returns = np.array([ep["rewards"].sum() for ep in episodes])
    return {"transitions": int(sum(len(ep["rewards"]) for ep in episodes)), "episodes": len(episodes),
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "terminals": int(sum(ep["terminations"].sum() for ep in episodes))}


# --------------------------------------------------------------------------------------- training
class Collector:
    """Online SAC training with evaluation snapshots, checkpoints and resume."""

    def __init__(self, config: CollectConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.env = _make_env(config.env_id)
        self.eval_env = _make_env(config.env_id)
        obs_space, action_space = self.env.observation_space, self.env.action_space
        self.obs_dim, self.action_dim = int(np.prod(obs_space.shape)), int(np.prod(action_space.shape))
        torch.manual_seed(config.seed)
        self.sac = SAC(self.obs_dim, self.action_dim, config.sac, torch.as_tensor(action_space.low),
                       torch.as_tensor(action_space.high))
        saved = run_dir / "state.pt"
        self._state = torch.load(saved, weights_only=False) if saved.is_file() else None
        # every env transition is kept (medium-replay); a resumed run may have a smaller --steps
        capacity = max(config.steps, self._state["buffer"]["size"] if self._state else 0)
        self.buffer = ReplayBuffer(capacity, self.obs_dim, self.action_dim)
        self.timeouts = torch.zeros(capacity)
        self.random_policy = RandomPolicy(action_space, config.seed)
        self.step = 0
        self.evals: list[dict] = []
        self.train_seconds = 0.0
        self.episode_returns: list[float] = []
        (run_dir / "policies").mkdir(parents=True, exist_ok=True)
        self._resume()

    # ---- state
    def _resume(self) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        self.sac.load_state_dict(state["sac"])
        self.buffer.load_state_dict(state["buffer"])
        n = self.buffer.size
        self.timeouts[:n] = state["timeouts"]
        if n > 0 and not (self.buffer.terminals[n - 1] > 0 or self.timeouts[n - 1] > 0):
            self.timeouts[n - 1] = 1.0   # the interrupted episode ends here (a time-out)
        self.step, self.evals, self.train_seconds = state["step"], state["evals"], state["train_seconds"]
        self.episode_returns = state.get("episode_returns", [])
        torch.set_rng_state(state["torch_rng"])
        self.random_policy.rng.bit_generator.state = state["numpy_rng"]
        print(f"[collect] resumed {self.run_dir} at step {self.step}", file=sys.stderr)

    def checkpoint(self) -> None:
        state = {"sac": self.sac.state_dict(), "buffer": self.buffer.state_dict(),
                 "timeouts": self.timeouts[: self.buffer.size].clone(), "step": self.step, "evals": self.evals,
                 "train_seconds": self.train_seconds, "episode_returns": self.episode_returns[-100:],
                 "torch_rng": torch.get_rng_state(), "numpy_rng": self.random_policy.rng.bit_generator.state}
        runs.atomic_torch_save(state, self.run_dir / "state.pt")

    def policy(self, deterministic: bool | None = None) -> ActorPolicy:
        return ActorPolicy(self.sac, self.config.deterministic_policy if deterministic is None else deterministic)

    def snapshot_path(self, step: int) -> Path:
        return self.run_dir / "policies" / f"step_{step:08d}.pt"

    def load_snapshot(self, step: int) -> SAC:
        sac = SAC(self.obs_dim, self.action_dim, self.config.sac, self.sac.actor.action_offset - self.sac.actor.action_scale,
                  self.sac.actor.action_offset + self.sac.actor.action_scale)
        sac.actor.load_state_dict(torch.load(self.snapshot_path(step), weights_only=True))
        return sac

    def evaluate(self) -> dict:
        returns = run_episodes(self.eval_env, self.policy(), self.config.eval_episodes,
                               seed=10_000 + self.config.seed * 1000 + len(self.evals) * self.config.eval_episodes)
        record = {"step": self.step, "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                  "train_seconds": round(self.train_seconds, 2)}
        runs.atomic_torch_save(self.sac.actor.state_dict(), self.snapshot_path(self.step))
        self.evals.append(record)
        with open(self.run_dir / "evals.jsonl", "a") as f:
            f.write(runs.dumps_json(record) + "\n")
        return record

    # ---- loop
    def train(self, stop_return: float | None = None, min_steps: int = 0) -> None:
        """Train until ``config.steps``, or until an evaluation has reached ``stop_return`` and
        at least ``min_steps`` env steps are in the buffer."""
        cfg = self.config

        def done() -> bool:
            return (stop_return is not None and self.step >= min_steps
                    and any(e["return_mean"] >= stop_return for e in self.evals))

        if done():
            return
        if self.step >= cfg.steps:
            return
        obs, _ = self.env.reset(seed=cfg.seed * 7919 + self.step)
        episode_return, last_eval = 0.0, (self.evals[-1]["return_mean"] if self.evals else float("nan"))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"SAC {cfg.env_id}", disable=not cfg.progress,
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        t0 = time.perf_counter()
        try:
            while self.step < cfg.steps:
                if self.step < cfg.learning_starts:
                    action = self.random_policy(obs)
                else:
                    action = self.sac.act(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                self.buffer.add(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0),
                                torch.as_tensor(action, dtype=torch.float32).unsqueeze(0),
                                torch.tensor([float(reward)]), torch.as_tensor(next_obs, dtype=torch.float32).unsqueeze(0),
                                torch.tensor([float(terminated)]))
                self.timeouts[self.step] = float(truncated and not terminated)
                self.step += 1
                episode_return += float(reward)
                obs = next_obs
                if terminated or truncated:
                    self.episode_returns.append(episode_return)
                    episode_return = 0.0
                    obs, _ = self.env.reset()
                if self.step >= cfg.learning_starts and len(self.buffer) >= cfg.batch_size:
                    self.sac.update(self.buffer.sample(cfg.batch_size))
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    self.train_seconds += now - t0
                    t0 = now
                    last_eval = self.evaluate()["return_mean"]
                    self.checkpoint()
                    t0 = time.perf_counter()
                    if done():
                        break
                bar.update(1)
                if self.step % 100 == 0:
                    recent = self.episode_returns[-10:]
                    bar.set_postfix(ep_return=f"{np.mean(recent):.0f}" if recent else "-",
                                    eval=f"{last_eval:.0f}", refresh=False)
        except KeyboardInterrupt:
            self.train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.checkpoint()
            bar.close()
            print(f"\n[collect] interrupted at step {self.step}; state saved to {self.run_dir}/state.pt. "
                  f"Rerun the same command to continue.", file=sys.stderr)
            raise
        self.train_seconds += time.perf_counter() - t0
        bar.close()


# --------------------------------------------------------------------------------------- main logic
def _default_run_dir(config: CollectConfig) -> Path:
    return Path("runs") / "collect" / f"{config.env_id.replace('/', '_')}-seed{config.seed}"


def _load_json(path: Path) -> dict:
    if path.is_file():
        with open(path) as f:
            return json.load(f)
    return {}


def _save_json(path: Path, data: dict) -> None:
    runs.write_json(path, data)


def expert_return_from_run(run_dir: str | Path) -> float:
    """The expert return stored by a finished collect run (its ``summary.json``)."""
    summary = _load_json(Path(run_dir) / "summary.json")
    if summary.get("expert_return") is None:
        raise MinariTaskError(
            f"--expert-run-dir {run_dir}: no expert return in {Path(run_dir) / 'summary.json'}. Finish that run "
            f"with an expert level (e.g. `python -m pyscorepen.collect --env-id <env> --levels expert "
            f"--run-dir {run_dir}`) or pass --expert-return.")
    return float(summary["expert_return"])


def random_reference_score(env_id: str, episodes: int, seed: int) -> float:
    env = _make_env(env_id)
    return float(np.mean(run_episodes(env, RandomPolicy(env.action_space, seed), episodes, seed=seed)))


def collect(config: CollectConfig) -> dict:
    """Train / resume SAC and write the requested datasets. Returns the run summary."""
    torch.set_num_threads(config.torch_threads)
    validate(config)
    if config.ref_scores_only:
        return reference_scores_only(config)
    # absolute: minari's size bookkeeping breaks on a relative MINARI_DATASETS_PATH
    root = (Path(config.datasets_path) if config.datasets_path else minari_datasets_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(config.run_dir) if config.run_dir else _default_run_dir(config)
    with runs.RunLock(run_dir, "--run-dir"):   # one collector per run folder
        return _collect_in(config, root, run_dir)


def _collect_in(config: CollectConfig, root: Path, run_dir: Path) -> dict:
    """:func:`collect`'s work in its (locked) run folder."""
    summary = _load_json(run_dir / "summary.json")
    summary.update({"env_id": config.env_id, "config": asdict(config)})
    unpinned = reproducible_env_missing() if config.reproducible else {}
    if unpinned:
        print("[collect] warning: --reproducible is on but the CPU pins are not set in this process "
              f"({', '.join(unpinned)}); python -m pyscorepen.collect sets them itself. "
              "These datasets may differ from another machine's.", file=sys.stderr)
    summary.setdefault("numerics", []).append(isa_record())   # one entry per (resumed) start
    summary.setdefault("datasets", {})
    summary.setdefault("timings_s", {})

    def save():
        _save_json(run_dir / "summary.json", summary)

    ids = {level: collected_dataset_id(config.env_id, level, config.namespace, config.dataset_version)
           for level in config.levels}
    todo = [level for level in config.levels if not dataset_exists(ids[level], root)]
    for level in config.levels:
        if level not in todo:
            print(f"[collect] {ids[level]} already exists in {root}, skipped", file=sys.stderr)

    if "ref_min_score" not in summary:
        t = time.perf_counter()
        summary["ref_min_score"] = random_reference_score(config.env_id, config.ref_episodes, config.seed + 123)
        summary["timings_s"]["ref_min_score"] = round(time.perf_counter() - t, 2)
        save()
    ref_min = summary["ref_min_score"]

    # expert return: flag > other run > this run's (after training)
    expert_return = config.expert_return
    expert_source = "--expert-return"
    if expert_return is None and config.expert_run_dir:
        expert_return, expert_source = expert_return_from_run(config.expert_run_dir), f"--expert-run-dir {config.expert_run_dir}"
    if expert_return is None and summary.get("expert_return") is not None:
        expert_return = summary["expert_return"]
        expert_source = summary.get("expert_return_source", "this run's expert")

    def threshold(expert: float) -> float:
        return ref_min + config.medium_fraction * (expert - ref_min)

    collector = None
    medium_step = summary.get("medium_step")
    needs_policy = any(level in POLICY_LEVELS for level in todo)
    needs_expert = any(level in EXPERT_LEVELS for level in todo) or expert_return is None
    needs_medium = any(level in ("medium", "medium-replay", "medium-expert") for level in todo)
    if needs_policy:
        collector = Collector(config, run_dir)
        stop = None if (needs_expert or expert_return is None) else threshold(expert_return)
        replay_size = config.medium_replay_size if "medium-replay" in todo else 0
        collector.train(stop_return=stop, min_steps=replay_size)
        summary["timings_s"]["sac_training"] = round(collector.train_seconds, 2)
        summary["sac_steps"] = collector.step
        summary["sac_steps_per_s"] = round(collector.step / max(collector.train_seconds, 1e-9), 2)
        summary["evals"] = collector.evals
        save()
        if needs_expert and summary.get("expert_step") != collector.step:
            t = time.perf_counter()
            returns = run_episodes(collector.eval_env, collector.policy(), config.ref_episodes, seed=50_000 + config.seed)
            summary.update(expert_step=collector.step, expert_return_own=float(np.mean(returns)),
                           expert_return_own_std=float(np.std(returns)))
            summary["timings_s"]["expert_eval"] = round(time.perf_counter() - t, 2)
            torch.save(collector.sac.actor.state_dict(), run_dir / "policies" / "expert.pt")
            if expert_return is None or expert_source == "this run's expert":
                expert_return, expert_source = summary["expert_return_own"], "this run's expert"
            save()
        if needs_medium and medium_step is None:
            target = threshold(expert_return)
            reached = [e for e in collector.evals if e["return_mean"] >= target]
            if reached:
                pick = reached[0]
            else:
                pick = max(collector.evals, key=lambda e: e["return_mean"])
                print(f"[collect] WARNING: no policy reached the medium threshold {target:.1f} in {collector.step} "
                      f"steps; using the best one (step {pick['step']}, return {pick['return_mean']:.1f}). "
                      f"Raise --steps.", file=sys.stderr)
            medium_step = pick["step"]
            summary.update(medium_step=medium_step, medium_eval_return=pick["return_mean"], medium_threshold=target,
                           medium_reached_threshold=bool(reached))
            save()
    summary.update(expert_return=expert_return, expert_return_source=expert_source)
    save()
    ref_max = expert_return

    # ---- datasets
    def description(level: str, extra: str) -> str:
        return (f"pyscorepen.collect, D4RL '{level}' recipe on {config.env_id}: {extra}. ref_min_score = uniform "
                f"random policy over {config.ref_episodes} episodes; ref_max_score = expert return "
                f"({expert_source}).")

    mode = "mean action" if config.deterministic_policy else "sampled actions"
    for level in [lv for lv in LEVELS if lv in todo]:
        t = time.perf_counter()
        env = _make_env(config.env_id)
        seed = 1_000_000 + 10_000 * LEVELS.index(level) + config.seed
        if level == "random":
            episodes = rollout_episodes(env, RandomPolicy(env.action_space, seed), config.dataset_size, seed,
                                        desc=level, progress=config.progress)
            extra = f"uniform random actions, {config.dataset_size} transitions"
        elif level == "medium":
            episodes = rollout_episodes(env, ActorPolicy(collector.load_snapshot(medium_step), config.deterministic_policy),
                                        config.dataset_size, seed, desc=level, progress=config.progress)
            extra = (f"SAC policy early-stopped at step {medium_step} (eval return "
                     f"{summary['medium_eval_return']:.1f}, threshold {summary['medium_threshold']:.1f}), {mode}")
        elif level == "medium-replay":
            end = min(max(medium_step, config.medium_replay_size), collector.buffer.size)
            episodes = episodes_from_buffer(collector.buffer, collector.timeouts, end)
            extra = (f"all {medium_step} SAC replay-buffer transitions up to the medium policy" if end == medium_step else
                     f"the first {end} SAC replay-buffer transitions (the medium policy came at step {medium_step}; "
                     f"training continued to reach --medium-replay-size)")
        elif level == "expert":
            episodes = rollout_episodes(env, collector.policy(), config.dataset_size, seed, desc=level,
                                        progress=config.progress)
            extra = f"SAC policy after {collector.step} steps, {mode}"
        else:  # medium-expert
            for part in ("medium", "expert"):
                if not dataset_exists(collected_dataset_id(config.env_id, part, config.namespace, config.dataset_version), root):
                    raise MinariTaskError("medium-expert needs the medium and expert datasets: add them to --levels")
            episodes = sum((read_episodes(collected_dataset_id(config.env_id, part, config.namespace,
                                                               config.dataset_version), root)
                            for part in ("medium", "expert")), [])
            extra = "union of the medium and expert datasets"
        write_dataset(ids[level], episodes, config.env_id, root, ref_min, ref_max, config.ref_episodes,
                      description(level, extra))
        stats = _episode_stats(episodes)
        stats["id"] = ids[level]
        summary["datasets"][level] = stats
        summary["timings_s"][f"write_{level}"] = round(time.perf_counter() - t, 2)
        save()
        print(f"[collect] wrote {ids[level]}: {stats['transitions']} transitions, {stats['episodes']} episodes, "
              f"return {stats['return_mean']:.1f} ± {stats['return_std']:.1f}", file=sys.stderr)
    summary["ref_max_score"] = ref_max
    summary["datasets_path"] = str(root)
    save()
    return summary


def reference_scores_only(config: CollectConfig) -> dict:
    """Compute ref_min (random policy) and, if an expert return is known, ref_max for --task."""
    import minari
    if not config.task:
        raise MinariTaskError("--ref-scores-only needs --task <Minari dataset id or path>")
    root, data_path = resolve_dataset_location(config.task)
    metadata = minari.MinariDataset(data_path).storage.metadata
    env_spec = _env_spec_from_metadata(metadata)
    if env_spec is None:
        raise MinariTaskError(f"dataset {config.task} has no env spec in its metadata; cannot roll a random policy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(env_spec)
    ref_min = float(np.mean(run_episodes(env, RandomPolicy(env.action_space, config.seed), config.ref_episodes,
                                         seed=config.seed + 123)))
    ref_max = config.expert_return
    source = "--expert-return"
    if ref_max is None and config.expert_run_dir:
        ref_max, source = expert_return_from_run(config.expert_run_dir), f"--expert-run-dir {config.expert_run_dir}"
    out = {"ref_min_score": ref_min, "ref_max_score": ref_max, "env_id": env_spec.id,
           "ref_min_source": f"uniform random policy, {config.ref_episodes} episodes",
           "ref_max_source": source if ref_max is not None else None}
    _save_json(root / REF_SCORES_FILE, out)
    print(f"[collect] wrote {root / REF_SCORES_FILE}: ref_min_score={ref_min:.2f}, ref_max_score={ref_max}"
          + ("" if ref_max is not None else " (pass --expert-return or --expert-run-dir for ref_max_score)"),
          file=sys.stderr)
    return out


CLI_DESCRIPTION = (
    'Collect D4RL-style Minari datasets (random, medium, medium-replay, expert, medium-expert) '
    "with the library's own SAC. Resumable: rerun the same command to continue. See the module "
    'docstring of pyscorepen/collect.py and docs/mujoco.md.'
)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal
    import tyro

    from pyscorepen.errors import DEBUG_HELP, cli_main

    # only a real command line re-executes itself (a call from Python, e.g. a test, must not be replaced)
    command_line = list(sys.argv[1:]) if argv is None else None

    def go(argv: list[str]):
        config = tyro.cli(CollectConfig, args=argv, description=CLI_DESCRIPTION + DEBUG_HELP)
        missing = reproducible_env_missing() if config.reproducible and command_line is not None else {}
        if missing:   # the pins act only from process start: run the same command again with them set
            print(f"[collect] --reproducible: restarting with {' '.join(f'{k}={v}' for k, v in missing.items())}",
                  file=sys.stderr)
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "pyscorepen.collect", *command_line],
                      {**os.environ, **missing})
        # `kill <pid>` (SIGTERM) checkpoints like Ctrl-C; background jobs ignore SIGINT
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            summary = collect(config)
        except KeyboardInterrupt:
            return 130
        return {k: v for k, v in summary.items() if k not in ("config", "evals")}
    return cli_main(go, argv)


if __name__ == "__main__":
    sys.exit(main())
