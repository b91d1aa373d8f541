"""The algorithms as small compositions of the shared parts.

========  ===========  ===================  ==================================  ==========
name      model data   stored penalties     critic loss                         real ratio
========  ===========  ===================  ==================================  ==========
sac       no           -                    SAC                                 1.0
mopo      yes          uncertainty          SAC  (MOPO Algorithm 2)             0.05
scorepen  yes          score                SAC  (ScorePen Eq. 20, Alg. 1)      0.05
combo     yes          -                    SAC + CQL term (COMBO Eq. 2)        0.5
iql       no           -                    IQL (expectile V, AWR policy)       1.0
bc        no           -                    - (max. likelihood policy)          1.0
cdsa      no           -                    - (g, h, I of CDSA Alg. 1; no policy) 1.0
========  ===========  ===================  ==================================  ==========

Every agent follows one protocol: ``update(batch) -> dict[str, float]``, ``act(obs, deterministic)``,
``state_dict``/``load_state_dict``, ``num_updates``, and optionally ``prepare(dataset)`` (called once
by the trainer with the offline dataset, e.g. IQL's reward scale).

Penalties of any algorithm can be replaced or combined (``--penalties score uncertainty``).
"""
from __future__ import annotations

from dataclasses import dataclass

from pyscorepen.algos.bc import BC, BCConfig
from pyscorepen.algos.cdsa import CDSA, CDSAConfig, CorrectedPolicy
from pyscorepen.algos.combo import COMBO, ComboConfig
from pyscorepen.algos.iql import IQL, IQLConfig
from pyscorepen.algos.sac import SAC, SACConfig


@dataclass(frozen=True)
class Algorithm:
    name: str
    uses_model: bool
    """Train a dynamics ensemble and learn from model rollouts."""
    penalties: tuple[str, ...]
    """Default penalty plug-ins (names in :data:`pyscorepen.penalties.PENALTIES`)."""
    agent_cls: type
    real_ratio: float
    """Default fraction of real transitions per batch."""
    config_field: str = "sac"
    """The TrainConfig field holding the agent's config (``sac``, ``iql``, ``bc``, ...)."""
    has_policy: bool = True
    """False for CDSA: it learns correction networks for other policies, nothing to evaluate alone."""


ALGORITHMS: dict[str, Algorithm] = {
    "sac": Algorithm("sac", False, (), SAC, 1.0),
    "mopo": Algorithm("mopo", True, ("uncertainty",), SAC, 0.05),
    "scorepen": Algorithm("scorepen", True, ("score",), SAC, 0.05),
    "combo": Algorithm("combo", True, (), COMBO, 0.5),
    "iql": Algorithm("iql", False, (), IQL, 1.0, config_field="iql"),
    "bc": Algorithm("bc", False, (), BC, 1.0, config_field="bc"),
    "cdsa": Algorithm("cdsa", False, (), CDSA, 1.0, config_field="cdsa", has_policy=False),
}

__all__ = ["ALGORITHMS", "Algorithm", "BC", "BCConfig", "CDSA", "CDSAConfig", "COMBO", "ComboConfig", "CorrectedPolicy", "IQL", "IQLConfig", "SAC", "SACConfig"]
