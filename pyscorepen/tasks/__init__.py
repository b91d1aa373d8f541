"""Tasks: an offline dataset plus everything needed to evaluate on the real env.

``make_task(spec)`` resolves a task spec string:

* ``"cliff"`` – the 2-D cliff-region task of ScorePen-MORL §5.1 (options come from
  :class:`pyscorepen.tasks.cliff.CliffConfig`);
* ``"risky"`` – 2-D navigation with stochastic hazards (CDSA §5.1, options in
  :class:`pyscorepen.tasks.risky.RiskyConfig`);
* a Minari dataset id (``"mujoco/hopper/medium-v0"``) or a path to a local Minari
  dataset (see :mod:`pyscorepen.tasks.minari_task`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
from torch import Tensor

from pyscorepen.data import TransitionDataset

# (obs [B,S], actions [B,A], next_obs [B,S]) -> terminal mask [B] bool
TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class Task:
    name: str
    dataset: TransitionDataset
    make_env: Callable[[], gym.Env]
    termination_fn: TerminationFn | None = None
    """Static termination function for model rollouts; None means never terminate."""
    ref_min_score: float | None = None
    """Return of a random policy, for the D4RL normalized score."""
    ref_max_score: float | None = None
    """Return of an expert / optimal policy, for the D4RL normalized score."""
    info: dict = field(default_factory=dict)
    trajectory_metrics: Callable[[list], dict] | None = None
    """Extra statistics of evaluation trajectories (risky task: hazard-entry rate), or None."""

    def normalized_score(self, ret: float) -> float | None:
        """D4RL normalized score 100 * (R - min) / (max - min) (None if no references)."""
        from pyscorepen.evaluation_metrics import normalized_score
        return normalized_score(ret, self.ref_min_score, self.ref_max_score)


def make_task(spec: str, cliff=None, ref_min: float | None = None, ref_max: float | None = None,
              drop_invalid_episodes: bool = False, risky=None) -> Task:
    """Resolve ``spec`` ('cliff', a Minari id, or a Minari dataset path) into a :class:`Task`.

    ``cliff`` is a :class:`pyscorepen.tasks.cliff.CliffConfig` (defaults if None);
    ``ref_min``/``ref_max`` override the reference returns of the normalized score.
    """
    if spec == "cliff":
        from pyscorepen.tasks.cliff import CliffConfig, make_cliff_task
        task = make_cliff_task(cliff or CliffConfig())
    elif spec == "risky":
        from pyscorepen.tasks.risky import RiskyConfig, make_risky_task
        task = make_risky_task(risky or RiskyConfig())
    else:
        from pyscorepen.tasks.minari_task import load_minari_task
        task = load_minari_task(spec, ref_min=ref_min, ref_max=ref_max, drop_invalid_episodes=drop_invalid_episodes)
    if ref_min is not None:
        task.ref_min_score = ref_min
    if ref_max is not None:
        task.ref_max_score = ref_max
    return task
