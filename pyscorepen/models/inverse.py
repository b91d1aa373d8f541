"""Inverse dynamics model I(s, s') -> a (CDSA, Liu et al. 2024, Eq. 9): the action that takes s to
s', regressed on the dataset's transitions, L = E_(s,a,s')~D || I(s, s') - a ||^2."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pyscorepen.data import TransitionDataset
from pyscorepen.models.nets import mlp


class InverseDynamics(nn.Module):
    """MLP on the normalized pair (s, s') [B, 2S] -> a [B, A] in env units."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...], negative_slope: float = 0.2):
        super().__init__()
        self.net = mlp(2 * obs_dim, hidden_dims, action_dim, activation=lambda: nn.LeakyReLU(negative_slope))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))

    def fit_normalizer(self, dataset: TransitionDataset) -> None:
        """Input and output statistics of the dataset (the net works in normalized units)."""
        self.obs_mean.copy_(dataset.obs.mean(0)); self.obs_std.copy_(dataset.obs.std(0).clamp_min(1e-6))
        self.action_mean.copy_(dataset.actions.mean(0)); self.action_std.copy_(dataset.actions.std(0).clamp_min(1e-6))

    def forward(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        x = torch.cat([(obs - self.obs_mean) / self.obs_std, (next_obs - self.obs_mean) / self.obs_std], -1)  # [B, 2S]
        return self.net(x) * self.action_std + self.action_mean                                             # [B, A]

    def loss(self, obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        """Eq. 9, in normalized action units (each action dimension weighted by 1/std^2)."""
        pred = self.net(torch.cat([(obs - self.obs_mean) / self.obs_std, (next_obs - self.obs_mean) / self.obs_std], -1))
        return (pred - (actions - self.action_mean) / self.action_std).square().sum(-1).mean()
