"""The two penalty protocols (see :mod:`pyscorepen.penalties`)."""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut


class RolloutPenalty(Protocol):
    name: str
    coef: float
    requires_score: bool   # the fused rollout op must evaluate the score network
    requires_all_members: bool   # the rollout must evaluate every ensemble member on each row
    # (MOPO's max_i ||sigma_i||); False lets rollouts run only each row's sampled elite
    # (EnsembleDynamics.step_members, ~E x fewer ensemble FLOPs). Missing attribute = True.

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor: ...


class TargetPenalty(Protocol):
    name: str
    coef: float

    def __call__(self, agent, batch) -> Tensor:   # weighted [B], zero on real transitions
        ...


def is_target_penalty(p) -> bool:
    return not hasattr(p, "requires_score")
