"""MOPO's penalty: lambda * max_i ||Sigma_i(s, a)||_F (MOPO Algorithm 2, §4.3)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut


@dataclass
class UncertaintyPenalty:
    """lambda * max_i ||Sigma_i(s, a)||_F  (MOPO Algorithm 2, Eq. in §4.3), from the fused op."""

    coef: float
    name: str = "uncertainty"
    requires_score: bool = False
    requires_all_members: bool = True    # max over every member's sigma: full-ensemble rollouts

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor:
        return step.mopo_penalty
