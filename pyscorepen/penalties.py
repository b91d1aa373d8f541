"""Penalty plug-ins: pure functions of tensors, combined with separate coefficients.

Two kinds, so the trainer never needs to know which penalties a run uses:

* **generation-time** penalties (:class:`RolloutPenalty`) are computed once per model
  transition when a rollout creates it and stored in the model buffer. They see the
  state, the action and the fused ``rollout_step`` output (which already carries the MOPO
  uncertainty and the score penalty). Score (ScorePen), uncertainty (MOPO), count-based.
* **target-time** penalties (:class:`TargetPenalty`) need the current critics, so they are
  evaluated inside the SAC target (MOBILE).

Both return an *unweighted* value per transition [B]; the caller multiplies by ``coef``.
New penalties register themselves in :data:`PENALTIES` by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut


class RolloutPenalty(Protocol):
    name: str
    coef: float
    requires_score: bool   # the fused rollout op must evaluate the score network

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor: ...


class TargetPenalty(Protocol):
    name: str
    coef: float

    def __call__(self, agent, batch) -> Tensor:   # weighted [B], zero on real transitions
        ...


@dataclass
class ScorePenalty:
    """beta * ||h_xi(s, a)||^2 (ScorePen-MORL Eq. 20), computed by the fused rollout op."""

    coef: float
    name: str = "score"
    requires_score: bool = True

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor:
        return step.score_penalty


@dataclass
class UncertaintyPenalty:
    """lambda * max_i ||Sigma_i(s, a)||_F  (MOPO Algorithm 2, Eq. in §4.3), from the fused op."""

    coef: float
    name: str = "uncertainty"
    requires_score: bool = False

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor:
        return step.mopo_penalty


# name -> factory(coef, **context) building the plug-in. context carries the trainer's
# parts (dynamics, dataset, score model, ...) for penalties that need them.
PENALTIES: dict[str, Callable[..., object]] = {
    "score": lambda coef, **context: ScorePenalty(coef),
    "uncertainty": lambda coef, **context: UncertaintyPenalty(coef),
}


def register_penalty(name: str, factory: Callable[..., object]) -> None:
    """Add a penalty plug-in; ``factory(coef, **context)`` returns a Rollout- or TargetPenalty."""
    PENALTIES[name] = factory


def is_target_penalty(p) -> bool:
    return not hasattr(p, "requires_score")


# built-in plug-ins defined in their own modules register themselves on import
import pyscorepen.penalties_mobile  # noqa: E402,F401
