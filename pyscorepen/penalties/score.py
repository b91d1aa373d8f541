"""ScorePen-MORL's penalty: beta * ||h_xi(s, a)||^2 (ScorePen-MORL Eq. 20)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut


@dataclass
class ScorePenalty:
    """beta * ||h_xi(s, a)||^2 (ScorePen-MORL Eq. 20), computed by the fused rollout op."""

    coef: float
    name: str = "score"
    requires_score: bool = True
    requires_all_members: bool = False   # only the sampled elite's (s', r): elite-only rollouts

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor:
        return step.score_penalty
