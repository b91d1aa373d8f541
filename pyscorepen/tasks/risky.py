"""Risky navigation: a 2-D point task with hazard regions, in the spirit of CDSA's Risky PointMass
(Liu et al. 2024, §5.1, Fig. 3) and risky transportation (§5.3, Fig. 5).

Built on the cliff task's machinery (:class:`pyscorepen.tasks.cliff.CliffEnv`): state s = (x, y),
action a = (dx, dy) with |dx|, |dy| <= ``max_action``, s' = s + a, reward exp(-||s - g||^2 / 2).
On top of it: the start region is a small square around ``start``; ``hazards`` are discs, and
each step that ends inside one costs ``hazard_cost`` with probability ``hazard_prob`` (rare,
large losses: what VaR measures). The offline dataset holds trajectories from the start to the
goal that detour around the hazards -- half above, half below, with noisy actions -- so no
hazard cost is ever seen in the data. A unimodal policy fitted to it (BC) averages the two
detours into the straight line through the hazard; the shortest-path policy (the paper's
"search" baseline, Fig. 3b) crosses it too.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pyscorepen.data import TransitionDataset
from pyscorepen.tasks.cliff import CliffEnv

ENV_ID = "pyscorepen/Risky-v0"


@dataclass
class RiskyConfig:
    start: tuple[float, float] = (-1.0, 0.0)
    """Centre of the start region. Range: (-inf, inf), each value."""
    init_half_width: float = 0.05
    """Initial states are uniform on start + [-w, w]^2. Range: [0, inf)."""
    goal: tuple[float, float] = (1.0, 0.0)
    """Goal g of the reward exp(-||s - g||^2 / 2). Range: (-inf, inf), each value."""
    hazards: tuple[float, ...] = (0.0, -0.1, 0.35)
    """Hazard discs, flattened as x y radius, x y radius, ... The default disc lies slightly below the
    start-goal line, so the straight path crosses its upper part. Range: (-inf, inf), each value
    (radii must be positive)."""
    hazard_prob: float = 0.1
    """Probability that a step ending inside a hazard is penalized. Range: [0, 1]."""
    hazard_cost: float = 10.0
    """The penalty (subtracted from the reward). Range: [0, inf)."""
    max_action: float = 0.1
    """Bound on |dx| and |dy|. Range: (0, inf)."""
    episode_steps: int = 40
    """Episode length. Range: [1, inf)."""
    dataset_episodes: int = 200
    """Trajectories in the offline dataset (episode_steps transitions each). Range: [1, inf)."""
    detour: float = 0.65
    """The dataset's trajectories pass through (hazard x, hazard y +- detour) on their way to the goal
    (trajectories that touch a hazard anyway are discarded). Range: [0, inf)."""
    action_noise: float = 0.03
    """Std of the Gaussian noise on the dataset's actions. Range: [0, inf)."""
    dataset_seed: int = 0
    """Seed of the dataset generator. Range: [0, inf)."""

    def hazard_array(self) -> np.ndarray:
        if len(self.hazards) % 3 or not self.hazards:
            raise ValueError(f"risky hazards must be groups of 3 numbers (x y radius), got {self.hazards}")
        return np.asarray(self.hazards, dtype=np.float64).reshape(-1, 3)


def in_hazard(points: np.ndarray | Tensor, hazards: np.ndarray) -> np.ndarray:
    """points [..., 2] -> bool [...]: inside any hazard disc [K, 3]."""
    p = np.asarray(points, dtype=np.float64)[..., None, :]                       # [..., 1, 2]
    return (np.linalg.norm(p - hazards[:, :2], axis=-1) <= hazards[:, 2]).any(-1)


class RiskyEnv(CliffEnv):
    """The cliff env with a start region and stochastic hazard costs. ``info['in_hazard']``,
    ``info['hazard_hit']`` (the cost was drawn) and ``info['distance_to_goal']`` after each step."""

    def __init__(self, goal=(1.0, 0.0), max_action: float = 0.1, init_half_width: float = 0.05,
                 start=(-1.0, 0.0), hazards=(0.0, -0.1, 0.35), hazard_prob: float = 0.1, hazard_cost: float = 10.0):
        super().__init__(goal=goal, max_action=max_action, init_half_width=init_half_width)
        self.start = np.asarray(start, dtype=np.float32)
        self.hazards = np.asarray(hazards, dtype=np.float64).reshape(-1, 3)
        self.hazard_prob, self.hazard_cost = float(hazard_prob), float(hazard_cost)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.state = (self.state + self.start).astype(np.float32)
        return self.state.copy(), {"distance_to_goal": float(np.linalg.norm(self.state - self.goal))}

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        inside = bool(in_hazard(obs, self.hazards))
        hit = inside and self.np_random.random() < self.hazard_prob
        info.update(in_hazard=inside, hazard_hit=hit)
        return obs, reward - (self.hazard_cost if hit else 0.0), term, trunc, info


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="pyscorepen.tasks.risky:RiskyEnv", max_episode_steps=40)


def make_env(config: RiskyConfig) -> gym.Env:
    return gym.make(ENV_ID, goal=config.goal, max_action=config.max_action, init_half_width=config.init_half_width,
                    start=config.start, hazards=config.hazards, hazard_prob=config.hazard_prob,
                    hazard_cost=config.hazard_cost, max_episode_steps=config.episode_steps)


def straight_line_policy(config: RiskyConfig):
    """The shortest-path policy (CDSA Fig. 3b's "search" baseline): step straight at the goal.
    A batched callable obs [B, 2] -> actions [B, 2]."""
    goal = torch.tensor(config.goal, dtype=torch.float32)

    def act(obs: Tensor) -> Tensor:
        direction = goal.to(obs.device) - obs                                   # [B, 2]
        step = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8) * config.max_action
        return torch.where(direction.norm(dim=-1, keepdim=True) < config.max_action, direction, step).clamp(
            -config.max_action, config.max_action)
    return act


def generate_dataset(config: RiskyConfig) -> TransitionDataset:
    """Noisy detours around the hazards (alternately above and below), none entering a hazard."""
    rng = np.random.default_rng(config.dataset_seed)
    hazards, goal = config.hazard_array(), np.asarray(config.goal)
    env = RiskyEnv(config.goal, config.max_action, config.init_half_width, config.start, config.hazards,
                   config.hazard_prob, config.hazard_cost)
    obs, actions, rewards, next_obs, timeouts = [], [], [], [], []
    episode = 0
    while len(obs) < config.dataset_episodes * config.episode_steps:
        side = 1.0 if episode % 2 == 0 else -1.0
        episode += 1
        if episode > 20 * config.dataset_episodes:
            raise ValueError("risky task: almost every dataset trajectory enters a hazard; "
                             "use a larger --risky.detour or smaller --risky.action-noise")
        waypoints = [np.array([h[0], h[1] + side * config.detour]) for h in hazards] + [goal]
        s, _ = env.reset(seed=int(rng.integers(1 << 31)))
        rows, target = [], 0
        for t in range(config.episode_steps):
            if target < len(waypoints) - 1 and np.linalg.norm(waypoints[target] - s) < 2 * config.max_action:
                target += 1
            d = waypoints[target] - s
            a = d / max(np.linalg.norm(d), 1e-8) * config.max_action if np.linalg.norm(d) > config.max_action else d
            a = np.clip(a + rng.normal(0, config.action_noise, 2), -config.max_action, config.max_action)
            s2, r, *_ = env.step(a.astype(np.float32))
            rows.append((s, a, env.reward(s), s2, float(t == config.episode_steps - 1)))
            s = s2
        states = np.array([row[0] for row in rows] + [rows[-1][3]])
        if in_hazard(states, hazards).any():                                    # keep hazard-free trajectories only
            continue
        for row, lst in zip(zip(*rows), (obs, actions, rewards, next_obs, timeouts)):
            lst.extend(row)
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return TransitionDataset(t(obs), t(actions), t(rewards), t(next_obs), torch.zeros(len(obs)), t(timeouts))


def trajectory_metrics(config: RiskyConfig):
    """A function of the evaluation trajectories [T+1, 2] -> {hazard_entry_rate, hazard_steps_mean}:
    the fraction of episodes with a state inside a hazard, and the mean number of such states."""
    hazards = config.hazard_array()

    def metrics(trajectories: list[np.ndarray]) -> dict[str, float]:
        steps = np.array([in_hazard(traj, hazards).sum() for traj in trajectories], dtype=float)
        return {"hazard_entry_rate": float((steps > 0).mean()), "hazard_steps_mean": float(steps.mean())}
    return metrics


def reference_returns(config: RiskyConfig) -> tuple[float, float]:
    """(random-policy return, hazard-free detour return): the normalized score's 0 and 100.
    Both expectations are computed without hazard costs drawn (the detour never pays them)."""
    env = make_env(config)
    rng = np.random.default_rng(12345)
    random_returns = []
    for ep in range(50):
        env.reset(seed=12345 + ep)
        total = 0.0
        for _ in range(config.episode_steps):
            _, r, *_ = env.step(rng.uniform(-config.max_action, config.max_action, 2))
            total += r
        random_returns.append(total)
    env.close()
    data = generate_dataset(RiskyConfig(**{**config.__dict__, "dataset_episodes": 20, "action_noise": 0.0}))
    detour_return = float(data.rewards.sum()) / 20
    return float(np.mean(random_returns)), detour_return


def make_risky_task(config: RiskyConfig):
    from pyscorepen.tasks import Task
    ref_min, ref_max = reference_returns(config)
    return Task(name="risky", dataset=generate_dataset(config), make_env=lambda: make_env(config),
                termination_fn=None, ref_min_score=ref_min, ref_max_score=ref_max,
                info={"goal": list(config.goal), "start": list(config.start),
                      "hazards": config.hazard_array().tolist()},
                trajectory_metrics=trajectory_metrics(config))
