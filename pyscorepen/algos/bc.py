"""Behaviour cloning: maximum likelihood of the dataset actions under the Gaussian policy that
IQL uses (:class:`pyscorepen.models.nets.GaussianActor`), i.e. IQL's policy loss (IQL Eq. 7) with
every AWR weight equal to 1. A base learner of CDSA's experiments and a sanity baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pyscorepen.data import Batch
from pyscorepen.models.nets import GaussianActor


@dataclass
class BCConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the policy MLP. Range: [1, inf), each value."""
    lr: float = 3e-4
    """Adam learning rate. Range: (0, inf)."""


class BC:
    """BC agent: ``update(batch) -> dict[str, float]``, ``act``, ``state_dict``/``load_state_dict``."""

    def __init__(self, obs_dim: int, action_dim: int, config: BCConfig, action_low: Tensor, action_high: Tensor,
                 device: torch.device | str = "cpu", target_penalties: list | None = None):
        if target_penalties:
            raise ValueError("BC takes no penalty plug-ins")
        self.config, self.device = config, torch.device(device)
        self.actor = GaussianActor(obs_dim, action_dim, config.hidden_dims, torch.as_tensor(action_low),
                                   torch.as_tensor(action_high)).to(self.device)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.num_updates = 0

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [B, S] -> actions [B, A] in env units (deterministic: the mean)."""
        return self.actor(obs.to(self.device), deterministic=deterministic)[0]

    def update(self, batch: Batch) -> dict[str, float]:
        loss = -self.actor.log_prob(batch.obs, batch.actions).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optim.step()
        self.num_updates += 1
        return {"loss/actor": loss.item()}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "actor_optim": self.actor_optim.state_dict(),
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.num_updates = state["num_updates"]
