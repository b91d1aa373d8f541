"""The 2-D cliff-region task of ScorePen-MORL §5.1 (Fig. 2a).

State s = (x, y); action a = (dx, dy) with |dx|, |dy| <= 0.05; dynamics s' = s + a;
reward R(s, a) = exp(-1/2 ||s - g||^2) with goal g = (0.2, 0.4); s_0 ~ U([-0.1, 0.1]^2);
30 steps per episode. The offline data fill a region (by default the square of side 1
centred at the origin) uniformly, with nothing outside: its boundary is the "cliff".

Everything is a parameter: the goal, the data region as any union of axis-aligned boxes,
the dataset size and seed. The env is registered with Gymnasium as ``pyscorepen/Cliff-v0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pyscorepen.data import TransitionDataset

ENV_ID = "pyscorepen/Cliff-v0"


@dataclass
class CliffConfig:
    goal: tuple[float, float] = (0.2, 0.4)
    """Goal g of the reward exp(-||s - g||^2 / 2). Range: (-inf, inf), each value."""
    boxes: tuple[float, ...] = (-0.5, -0.5, 0.5, 0.5)
    """Data region: a union of axis-aligned boxes, flattened as x_min y_min x_max y_max, ...
    Range: (-inf, inf), each value."""
    dataset_size: int = 20_000
    """Number of transitions in the offline dataset. Range: [1, inf)."""
    dataset_seed: int = 0
    """Seed of the dataset generator (independent of the training seed). Range: [0, inf)."""
    max_action: float = 0.05
    """Bound on |dx| and |dy|. Range: (0, inf)."""
    episode_steps: int = 30
    """Episode length. Range: [1, inf)."""
    init_half_width: float = 0.1
    """Initial states are uniform on [-w, w]^2. Range: [0, inf)."""

    def box_array(self) -> np.ndarray:
        if len(self.boxes) % 4 or not self.boxes:
            raise ValueError(f"cliff boxes must be groups of 4 numbers (x_min y_min x_max y_max), got {self.boxes}")
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
            raise ValueError(f"every cliff box needs x_min < x_max and y_min < y_max, got {b.tolist()}")
        return b


def in_region(points: Tensor, boxes: np.ndarray) -> Tensor:
    """points [B, 2] -> bool [B]: inside the union of boxes [K, 4]."""
    b = torch.as_tensor(boxes, dtype=points.dtype, device=points.device)           # [K, 4]
    x, y = points[:, None, 0], points[:, None, 1]                                  # [B, 1]
    return ((x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])).any(1)


class CliffEnv(gym.Env):
    """Gymnasium env of the cliff task. ``info['distance_to_goal']`` is ||s - g|| after the step."""

    metadata = {"render_modes": []}

    def __init__(self, goal=(0.2, 0.4), max_action: float = 0.05, init_half_width: float = 0.1):
        self.goal = np.asarray(goal, dtype=np.float32)
        self.max_action = float(max_action)
        self.init_half_width = float(init_half_width)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-self.max_action, self.max_action, (2,), np.float32)
        self.state = np.zeros(2, np.float32)

    def reward(self, state: np.ndarray) -> float:
        return float(np.exp(-0.5 * np.sum((state - self.goal) ** 2)))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        w = self.init_half_width
        self.state = self.np_random.uniform(-w, w, size=2).astype(np.float32)
        return self.state.copy(), {"distance_to_goal": float(np.linalg.norm(self.state - self.goal))}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -self.max_action, self.max_action)
        reward = self.reward(self.state)                         # R(s, a) depends on s
        self.state = (self.state + action).astype(np.float32)
        info = {"distance_to_goal": float(np.linalg.norm(self.state - self.goal))}
        return self.state.copy(), reward, False, False, info


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="pyscorepen.tasks.cliff:CliffEnv", max_episode_steps=30)


def make_env(config: CliffConfig) -> gym.Env:
    return gym.make(ENV_ID, goal=config.goal, max_action=config.max_action,
                    init_half_width=config.init_half_width, max_episode_steps=config.episode_steps)


def generate_dataset(config: CliffConfig) -> TransitionDataset:
    """Uniform (s, a) with s and s' = s + a both inside the data region; nothing outside."""
    boxes = config.box_array()
    g = torch.Generator().manual_seed(config.dataset_seed)
    lo, hi = torch.tensor(boxes[:, :2].min(0)), torch.tensor(boxes[:, 2:].max(0))
    obs_parts, act_parts, n = [], [], 0
    while n < config.dataset_size:                               # rejection sampling
        m = 2 * (config.dataset_size - n) + 64
        s = lo + (hi - lo) * torch.rand(m, 2, generator=g, dtype=torch.float64)     # [m, 2]
        a = config.max_action * (2 * torch.rand(m, 2, generator=g, dtype=torch.float64) - 1)
        keep = in_region(s, boxes) & in_region(s + a, boxes)
        obs_parts.append(s[keep]); act_parts.append(a[keep]); n += int(keep.sum())
    obs = torch.cat(obs_parts)[: config.dataset_size].float()
    actions = torch.cat(act_parts)[: config.dataset_size].float()
    goal = torch.tensor(config.goal)
    rewards = torch.exp(-0.5 * (obs - goal).square().sum(-1))
    zeros = torch.zeros(config.dataset_size)
    return TransitionDataset(obs, actions, rewards, obs + actions, zeros, zeros.clone())


def oracle_action(state: np.ndarray, config: CliffConfig) -> np.ndarray:
    """Optimal action: per-axis step straight at the goal (reward is monotone in distance)."""
    return np.clip(np.asarray(config.goal) - state, -config.max_action, config.max_action)


def reference_returns(config: CliffConfig, episodes: int = 200, seed: int = 12345) -> tuple[float, float]:
    """(random-policy return, optimal straight-path return), averaged over initial states."""
    env = make_env(config)
    rng = np.random.default_rng(seed)
    totals = {"random": [], "optimal": []}
    for kind in totals:
        for ep in range(episodes):
            s, _ = env.reset(seed=seed + ep)
            total, done = 0.0, False
            while not done:
                a = (oracle_action(s, config) if kind == "optimal"
                     else rng.uniform(-config.max_action, config.max_action, 2))
                s, r, term, trunc, _ = env.step(a)
                total += r
                done = term or trunc
            totals[kind].append(total)
    return float(np.mean(totals["random"])), float(np.mean(totals["optimal"]))


def make_cliff_task(config: CliffConfig):
    from pyscorepen.tasks import Task
    ref_min, ref_max = reference_returns(config)
    return Task(name="cliff", dataset=generate_dataset(config), make_env=lambda: make_env(config),
                termination_fn=None, ref_min_score=ref_min, ref_max_score=ref_max,
                info={"goal": list(config.goal), "boxes": config.box_array().tolist(),
                      "dataset_size": config.dataset_size, "dataset_seed": config.dataset_seed,
                      "max_action": config.max_action})
