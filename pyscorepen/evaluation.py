"""Policy evaluation on the real environment (batched over episodes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    final_distances: list[float] = field(default_factory=list)   # cliff: ||s_T - g||
    trajectories: list[np.ndarray] = field(default_factory=list)  # [T+1, S] per episode


@torch.no_grad()
def evaluate_policy(act, make_env, episodes: int, seed: int, keep_trajectories: bool = False) -> EvalResult:
    """Run ``episodes`` episodes, stepping all envs together so the policy runs batched.

    ``act``: obs tensor [B, S] -> action tensor [B, A] (deterministic policy).
    """
    envs = [make_env() for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    trajs = [[o] for o in obs]
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=int)
    final_dist = [float("nan")] * episodes
    active = list(range(episodes))
    while active:
        batch = torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32)
        actions = act(batch).cpu().numpy()                                   # [B, A]
        still = []
        for i, a in zip(active, actions):
            o, r, term, trunc, info = envs[i].step(a)
            obs[i] = o
            returns[i] += r
            lengths[i] += 1
            if keep_trajectories:
                trajs[i].append(o)
            if "distance_to_goal" in info:
                final_dist[i] = info["distance_to_goal"]
            if not (term or trunc):
                still.append(i)
        active = still
    for env in envs:
        env.close()
    return EvalResult(returns.tolist(), lengths.tolist(),
                      [d for d in final_dist if d == d],
                      [np.asarray(t) for t in trajs] if keep_trajectories else [])
