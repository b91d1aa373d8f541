"""Implicit Q-Learning (Kostrikov, Nair & Levine 2021, "Offline Reinforcement Learning with
Implicit Q-Learning", ICLR 2022): in-sample Q-learning with an expectile value function and
advantage-weighted regression (AWR) for the policy. It never queries Q on actions outside the
dataset, so it needs no model rollouts and no penalty.

One update (the order of the official code, ``learner.py``):

* value, IQL Eq. 5:  L_V = E_(s,a)~D [ L_2^tau( min_k Q'_k(s, a) - V(s) ) ],
  L_2^tau(u) = |tau - 1(u < 0)| u^2   (:func:`expectile_loss`, tau = ``expectile``);
* policy, IQL Eq. 7 (AWR): L_pi = -E [ exp(beta (min_k Q'_k(s, a) - V(s))) log pi(a|s) ],
  the weights clipped at ``max_weight`` = 100 as in the official code (:func:`awr_weights`);
* critics, IQL Eq. 6:  L_Q = E [ (r + gamma (1 - d) V(s') - Q_k(s, a))^2 ] for each critic;
* Polyak update of the target critics.

Defaults are the paper's MuJoCo (D4RL locomotion) settings, IQL Appendix B / Table 5 and the
official ``configs/mujoco_config.py``: expectile tau = 0.7, inverse temperature beta = 3.0,
2x256 MLPs, Adam lr 3e-4 for all three networks, batch 256, gamma 0.99, Polyak 0.005, and rewards
scaled by 1000 / (max episode return - min episode return) of the dataset. The official cosine
decay of the actor's learning rate over the run is ``actor_lr_decay_steps`` (set it to the run's
``--steps``, e.g. 1M as in the paper; the default None keeps the rate constant).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from pyscorepen.data import Batch, TransitionDataset
from pyscorepen.models.nets import GaussianActor, QEnsemble, mlp, relu_mlp


@dataclass
class IQLConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor, each critic and the value network (IQL: 2x256). Range: [1, inf), each value."""
    actor_lr: float = 3e-4
    """Actor learning rate (IQL: 3e-4). Range: (0, inf)."""
    critic_lr: float = 3e-4
    """Critic learning rate (IQL: 3e-4). Range: (0, inf)."""
    value_lr: float = 3e-4
    """Value-network learning rate (IQL: 3e-4). Range: (0, inf)."""
    gamma: float = 0.99
    """Discount factor. Range: [0, 1)."""
    tau: float = 0.005
    """Polyak coefficient of the target critics. Range: (0, 1]."""
    expectile: float = 0.7
    """Expectile tau of the value loss (IQL Eq. 5; 0.7 on MuJoCo, 0.9 on AntMaze). Range: (0, 1)."""
    beta: float = 3.0
    """Inverse temperature of AWR (IQL Eq. 7; 3.0 on MuJoCo, 10.0 on AntMaze). Range: [0, inf)."""
    max_weight: float = 100.0
    """Clip of the AWR weights exp(beta * advantage) (official code: 100). Range: (0, inf)."""
    num_critics: int = 2
    """Critics in the Q ensemble (min over them in the value and policy targets). Range: [1, inf)."""
    normalize_rewards: bool = True
    """Scale rewards by 1000 / (max - min episode return) of the dataset (official MuJoCo setting)."""
    actor_lr_decay_steps: int | None = None
    """Cosine decay of the actor's learning rate to 0 over this many updates (official code: the run
    length, 1M); None: constant. Range: [1, inf)."""


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """L_2^tau(u) = |tau - 1(u < 0)| u^2, averaged (IQL Eq. 5); ``diff`` = u = Q(s, a) - V(s) [B]."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def awr_weights(q: Tensor, v: Tensor, beta: float, max_weight: float) -> Tensor:
    """exp(beta (Q(s, a) - V(s))) clipped at ``max_weight`` (IQL Eq. 7): [B]."""
    return torch.exp(beta * (q - v)).clamp(max=max_weight)


def episode_return_range(dataset: TransitionDataset) -> tuple[float, float]:
    """(min, max) undiscounted episode return of the dataset. An episode ends at a terminal, a
    time-out, or where the next row does not continue the transition (s'_i != s_{i+1})."""
    n = len(dataset)
    ends = dataset.terminals.bool().clone()                                       # [N]
    if dataset.timeouts is not None:
        ends |= dataset.timeouts.bool()
    if n > 1:
        ends[:-1] |= (dataset.next_obs[:-1] != dataset.obs[1:]).any(-1)
    ends[-1] = True
    episode = torch.cat([ends.new_zeros(1, dtype=torch.long), ends[:-1].long().cumsum(0)])  # [N] episode id
    returns = torch.zeros(int(episode[-1]) + 1, dtype=torch.float64).index_add_(0, episode, dataset.rewards.double())
    return float(returns.min()), float(returns.max())


class IQL:
    """IQL agent: ``update(batch) -> dict[str, float]``, ``act``, ``state_dict``/``load_state_dict``."""

    def __init__(self, obs_dim: int, action_dim: int, config: IQLConfig, action_low: Tensor, action_high: Tensor,
                 device: torch.device | str = "cpu", target_penalties: list | None = None):
        if target_penalties:
            raise ValueError("IQL takes no penalty plug-ins")
        self.config, self.device = config, torch.device(device)
        low, high = torch.as_tensor(action_low), torch.as_tensor(action_high)
        self.actor = GaussianActor(obs_dim, action_dim, config.hidden_dims, low, high).to(self.device)
        self.critic = QEnsemble(config.num_critics, obs_dim, action_dim, config.hidden_dims).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, config.hidden_dims, 1, activation=torch.nn.ReLU).to(self.device)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)
        self.actor_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optim, config.actor_lr_decay_steps)
                               if config.actor_lr_decay_steps else None)
        self.reward_scale = 1.0
        self.num_updates = 0

    def prepare(self, dataset: TransitionDataset) -> None:
        """Reward scale of the official MuJoCo setting: 1000 / (max - min episode return)."""
        if self.config.normalize_rewards:
            low, high = episode_return_range(dataset)
            self.reward_scale = 1000.0 / max(high - low, 1e-6)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [B, S] -> actions [B, A] in env units (deterministic: the mean)."""
        return self.actor(obs.to(self.device), deterministic=deterministic)[0]

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            q_target = self.critic_target(batch.obs, batch.actions).min(0).values   # [B]
        # value: expectile regression on the target critics (Eq. 5)
        v = relu_mlp(self.value, batch.obs).squeeze(-1)                             # [B]
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        self.value_optim.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optim.step()
        # policy: advantage-weighted regression with the updated value (Eq. 7)
        with torch.no_grad():
            v = relu_mlp(self.value, batch.obs).squeeze(-1)                         # [B]
            weights = awr_weights(q_target, v, cfg.beta, cfg.max_weight)            # [B]
            next_v = relu_mlp(self.value, batch.next_obs).squeeze(-1)               # [B]
            target = batch.rewards * self.reward_scale + cfg.gamma * (1.0 - batch.terminals) * next_v
        actor_loss = -(weights * self.actor.log_prob(batch.obs, batch.actions)).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()
        if self.actor_schedule is not None and self.actor_schedule.last_epoch < self.config.actor_lr_decay_steps:
            self.actor_schedule.step()
        # critics: TD regression on r + gamma V(s') (Eq. 6)
        q = self.critic(batch.obs, batch.actions)                                   # [N, B]
        critic_loss = (q - target).square().mean(1).sum()
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()
        with torch.no_grad():
            for p, p_target in zip(self.critic.parameters(), self.critic_target.parameters()):
                p_target.lerp_(p, cfg.tau)
        self.num_updates += 1
        stats = torch.stack([value_loss.detach(), actor_loss.detach(), critic_loss.detach(), q.detach().mean(),
                             v.mean(), weights.mean()]).tolist()
        return dict(zip(("loss/value", "loss/actor", "loss/critic", "q_mean", "v_mean", "awr_weight_mean"), stats))

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "value": self.value.state_dict(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
                "value_optim": self.value_optim.state_dict(), "reward_scale": self.reward_scale,
                "actor_schedule": None if self.actor_schedule is None else self.actor_schedule.state_dict(),
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "critic_target", "value", "actor_optim", "critic_optim", "value_optim"):
            getattr(self, name).load_state_dict(state[name])
        self.reward_scale, self.num_updates = state["reward_scale"], state["num_updates"]
        if self.actor_schedule is not None and state.get("actor_schedule") is not None:
            self.actor_schedule.load_state_dict(state["actor_schedule"])
