"""CDSA: Conservative Denoising Score-based Algorithm (Liu et al. 2024, arXiv 2406.07541).

CDSA does not change how a policy is trained. From the offline data alone it learns three
networks (Algorithm 1), then corrects any pretrained policy's actions at test time (Algorithm 2):

* g(s, a) ~ grad_a log p_D(s, a): denoising score matching that perturbs the actions only,
  a~ ~ N(a, sigma), s~ = s (Eq. 4-6) -- :class:`ScoreModel` with ``perturbed`` = the action columns;
* h(s, a) ~ grad_s log p_D(s, a): the states perturbed instead (Eq. 7-8), the same class;
* I(s, s') -> a, inverse dynamics regressed on the dataset's transitions (Eq. 9);
* correction (Eq. 10, Algorithm 2 lines 4-7):
  a = clip(a_o + K1 g(s, a_o) + K2 I(s, s + h(s, a_o))), re-applied ``iterations`` times with the
  corrected (s, a) fed back in (§4.2, "repeatedly put (s, a) into the model").

``--algo cdsa`` trains the three networks through the library's trainer (one gradient step of
each per iteration on the same batch); the correction lives in :meth:`CDSA.correct` and
:class:`CorrectedPolicy`. Defaults are the paper's Table 3: g, h: MLP 32-128-32 with LeakyReLU(0.1),
Adam lr 3e-4; I: 3 x 128 with LeakyReLU(0.2), lr 1e-3; batch 256 (the trainer's ``batch_size``);
10k iterations (``steps``, see configs/defaults.toml). The paper does not give the noise level
sigma: ours is in normalized (s, a) units like the library's score model, and g, h are returned in
the env's units (normalized score / std). K1, K2 per dataset: configs/defaults.toml (Table 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from pyscorepen.data import Batch, TransitionDataset
from pyscorepen.models.inverse import InverseDynamics
from pyscorepen.models.score import ScoreConfig, ScoreModel


@dataclass
class CDSAConfig:
    score_hidden_dims: tuple[int, ...] = (32, 128, 32)
    """Hidden widths of g and h (CDSA Table 3: 32, 128, 32). Range: [1, inf), each value."""
    score_negative_slope: float = 0.1
    """LeakyReLU slope of g and h (Table 3: 0.1). Range: [0, 1]."""
    score_lr: float = 3e-4
    """Adam learning rate of g and h (Table 3: 3e-4). Range: (0, inf)."""
    sigma: float = 0.1
    """DSM noise level (Eq. 5, 7) in normalized units. Not given in the paper; the library's choice. Range: (0, inf)."""
    inverse_hidden_dims: tuple[int, ...] = (128, 128, 128)
    """Hidden widths of the inverse dynamics model I (Table 3: 3 layers of 128). Range: [1, inf), each value."""
    inverse_negative_slope: float = 0.2
    """LeakyReLU slope of I (Table 3: 0.2). Range: [0, 1]."""
    inverse_lr: float = 1e-3
    """Adam learning rate of I (Table 3: 1e-3). Range: (0, inf)."""
    k1: float = 0.001
    """Default K1 (weight of g) for the correction; per dataset in configs/defaults.toml (Table 2). Range: [0, inf)."""
    k2: float = 0.001
    """Default K2 (weight of I(s, s + h)) for the correction; per dataset in configs/defaults.toml. Range: [0, inf)."""
    iterations: int = 1
    """Default number of correction iterations n (Algorithm 2 applies it once). Range: [1, inf)."""
    displacement: bool = True
    """Use g, h as Tweedie displacements (sigma std)^2 grad log p in env units in Eq. 10 (K1 = 1 moves a to
    the denoised action; K comparable across datasets and sigma). False: the raw scores, the paper's literal
    g, h, whose size ~ distance / (sigma std)^2 makes K depend on sigma and on the data's units."""


class CDSA:
    """The three CDSA networks as a library agent: ``update(batch)`` trains g, h and I one step each;
    ``correct(obs, actions, k1, k2, iterations)`` is Eq. 10. It has no policy of its own."""

    def __init__(self, obs_dim: int, action_dim: int, config: CDSAConfig, action_low: Tensor, action_high: Tensor,
                 device: torch.device | str = "cpu", target_penalties: list | None = None):
        if target_penalties:
            raise ValueError("CDSA takes no penalty plug-ins")
        self.config, self.device = config, torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        dim = obs_dim + action_dim
        score_config = ScoreConfig(sigmas=(config.sigma,), hidden_dims=config.score_hidden_dims, lr=config.score_lr)
        leaky = lambda: nn.LeakyReLU(config.score_negative_slope)
        self.action_score = ScoreModel(dim, score_config, perturbed=(obs_dim, dim), activation=leaky).to(self.device)  # g
        self.state_score = ScoreModel(dim, score_config, perturbed=(0, obs_dim), activation=leaky).to(self.device)     # h
        self.inverse = InverseDynamics(obs_dim, action_dim, config.inverse_hidden_dims,
                                       config.inverse_negative_slope).to(self.device)                                 # I
        self.action_low = torch.as_tensor(action_low, dtype=torch.float32, device=self.device)
        self.action_high = torch.as_tensor(action_high, dtype=torch.float32, device=self.device)
        self.optims = {"g": torch.optim.Adam(self.action_score.net.parameters(), lr=config.score_lr),
                       "h": torch.optim.Adam(self.state_score.net.parameters(), lr=config.score_lr),
                       "inverse": torch.optim.Adam(self.inverse.net.parameters(), lr=config.inverse_lr)}
        self.num_updates = 0

    def prepare(self, dataset: TransitionDataset) -> None:
        """Normalization statistics of the dataset for the three networks."""
        norm = dataset.input_normalizer()
        for model in (self.action_score, self.state_score):
            model.input_mean.copy_(norm.mean)
            model.input_std.copy_(norm.std)
        self.inverse.fit_normalizer(dataset)

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step of g (Eq. 6), h (Eq. 8) and I (Eq. 9) on the same batch."""
        x = self.action_score.normalize(batch.obs, batch.actions)                  # [B, S+A]
        losses = {"g": self.action_score.dsm_loss(x), "h": self.state_score.dsm_loss(x),
                  "inverse": self.inverse.loss(batch.obs, batch.actions, batch.next_obs)}
        for name, loss in losses.items():
            self.optims[name].zero_grad(set_to_none=True)
            loss.backward()
            self.optims[name].step()
        self.num_updates += 1
        values = torch.stack([loss.detach() for loss in losses.values()]).tolist()
        return {f"loss/{name}": v for name, v in zip(losses, values)}

    # ----------------------------------------------------------------------------- correction
    @torch.no_grad()
    def auxiliary_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(a1, a2) = (g(s, a), I(s, s + h(s, a))), each [B, A] (Algorithm 2, lines 5-6); g, h as
        displacements or raw scores (``config.displacement``)."""
        field = "displacement" if self.config.displacement else "score"
        a1 = getattr(self.action_score, field)(obs, actions)                        # [B, A]
        a2 = self.inverse(obs, obs + getattr(self.state_score, field)(obs, actions))  # [B, A]
        return a1, a2

    @torch.no_grad()
    def correct(self, obs: Tensor, actions: Tensor, k1: float, k2: float, iterations: int = 1) -> Tensor:
        """Eq. 10: a <- clip(a + K1 g(s, a) + K2 I(s, s + h(s, a))), ``iterations`` times. [B, A]."""
        a = actions
        for _ in range(iterations):
            a1, a2 = self.auxiliary_actions(obs, a)
            a = torch.maximum(torch.minimum(a + k1 * a1 + k2 * a2, self.action_high), self.action_low)
        return a

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"action_score": self.action_score.state_dict(), "state_score": self.state_score.state_dict(),
                "inverse": self.inverse.state_dict(), "num_updates": self.num_updates,
                "optims": {k: o.state_dict() for k, o in self.optims.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.action_score.load_state_dict(state["action_score"])
        self.state_score.load_state_dict(state["state_score"])
        self.inverse.load_state_dict(state["inverse"])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.num_updates = state["num_updates"]


class CorrectedPolicy:
    """Any policy obs [B, S] -> actions [B, A] turned into its CDSA-corrected version (Algorithm 2).
    Batched: one call corrects the actions of every parallel environment at once."""

    def __init__(self, policy: Callable[[Tensor], Tensor], cdsa: CDSA, k1: float, k2: float, iterations: int = 1):
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.policy, self.cdsa, self.k1, self.k2, self.iterations = policy, cdsa, k1, k2, iterations

    @torch.no_grad()
    def __call__(self, obs: Tensor) -> Tensor:
        obs = obs.to(self.cdsa.device)
        actions = torch.as_tensor(self.policy(obs), dtype=torch.float32, device=self.cdsa.device)
        return self.cdsa.correct(obs, actions, self.k1, self.k2, self.iterations)
