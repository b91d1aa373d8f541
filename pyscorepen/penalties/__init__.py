"""Penalty plug-ins: pure functions of tensors, combined with separate coefficients.

Two kinds, so the trainer never needs to know which penalties a run uses:

* **generation-time** penalties (:class:`RolloutPenalty`) are computed once per model
  transition when a rollout creates it and stored in the model buffer. They see the
  state, the action and the fused ``rollout_step`` output (which already carries the MOPO
  uncertainty and the score penalty). Score (ScorePen), uncertainty (MOPO), count (Count-MORL).
* **target-time** penalties (:class:`TargetPenalty`) need the current critics, so they are
  evaluated inside the SAC target (MOBILE).

Both return an *unweighted* value per transition [B]; the caller multiplies by ``coef``.
New penalties register themselves in :data:`PENALTIES` by name.
"""
from __future__ import annotations

from typing import Callable

from pyscorepen.penalties.base import RolloutPenalty, TargetPenalty, is_target_penalty
from pyscorepen.penalties.count import CountPenalty, SimHashCounter
from pyscorepen.penalties.count import factory as _count_factory
from pyscorepen.penalties.mobile import MobilePenalty
from pyscorepen.penalties.mobile import factory as _mobile_factory
from pyscorepen.penalties.score import ScorePenalty
from pyscorepen.penalties.uncertainty import UncertaintyPenalty

# name -> factory(coef, **context) building the plug-in. context carries the trainer's
# parts (dynamics, dataset, score model, config, ...) for penalties that need them.
PENALTIES: dict[str, Callable[..., object]] = {
    "score": lambda coef, **context: ScorePenalty(coef),
    "uncertainty": lambda coef, **context: UncertaintyPenalty(coef),
    "mobile": _mobile_factory,
    "count": _count_factory,
}


def register_penalty(name: str, factory: Callable[..., object]) -> None:
    """Add a penalty plug-in; ``factory(coef, **context)`` returns a Rollout- or TargetPenalty."""
    PENALTIES[name] = factory


__all__ = ["PENALTIES", "CountPenalty", "MobilePenalty", "SimHashCounter", "RolloutPenalty", "ScorePenalty", "TargetPenalty",
           "UncertaintyPenalty", "is_target_penalty", "register_penalty"]
