"""MOBILE penalty as a target-time plug-in (Sun et al. 2023, "Model-Bellman Inconsistency
for Model-based Offline Reinforcement Learning", ICML).

MOBILE penalizes a model transition (s, a) by the disagreement of the elite dynamics models
about its Bellman target:

    u(s, a) = Std_{i in elites} [ T_i Q(s, a) ],
    T_i Q(s, a) = E_{(r, s') ~ T_i(.|s, a)} [ r + gamma * min_k Q'_k(s', a') ],  a' ~ pi(.|s'),

estimated with ``num_samples`` draws (r, s') from each elite's Gaussian (MOBILE §4, Eq. 7-8),
and the critic target becomes ``r - beta * u(s, a) + gamma * (1 - d) V(s')``. Because u needs
the *current* actor and target critics, it is a :class:`pyscorepen.penalties.TargetPenalty`
evaluated inside :meth:`pyscorepen.algos.sac.SAC.compute_target`, not a stored rollout penalty.

Both MOBILE references (the authors' code, github.com/yihaosun1124/mobile, policies/mobile.py,
and OfflineRL-Kit's ``MOBILEPolicy.compute_lcb``) take the std over elites of the sample mean of
``min_k Q'(s', a')`` alone (no r, no gamma): that is the default here (``include_reward=False``);
``include_reward=True`` gives the std of the full backup r + gamma Q' (the Eq. 8 reading). Both
references also clamp the Bellman target at >= 0 (``target_q.clamp(0, None)``):
``MobilePenalty.target_min`` = 0 (``--no-mobile-clamp-target`` turns it off).

ScorePen+MOBILE is the combination of plug-ins ``--algo scorepen --penalties score mobile``
(score penalty stored at rollout time, MOBILE penalty added to the target), each with its
own coefficient (``--beta``, ``--mobile-beta``).

Everything is vectorized over samples x elites x batch (``[K, M, B, ...]``) and over
critics (the Q ensemble); there is no Python loop over members or critics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor



def mobile_penalty(obs: Tensor, actions: Tensor, mean: Tensor, std: Tensor, noise: Tensor,
                   next_value: Callable[[Tensor], Tensor], gamma: float, include_reward: bool = False) -> Tensor:
    """Unweighted MOBILE penalty u(s, a) [B] (MOBILE Eq. 8), all members and samples at once.

    obs [B, S], actions [B, A]; mean, std [M, B, S+1]: the elites' Gaussian over (delta_s, r);
    noise [K, M, B, S+1]: standard normal draws; ``next_value(next_obs [R, S]) -> [R]`` is
    min_k Q'_k(s', a'), a' ~ pi(.|s') (the agent's :meth:`pyscorepen.algos.sac.SAC.soft_value` with
    alpha = 0: one fused op over the actor and every target critic). The K*M*B next states go
    through it in one call: no loop over members, samples or critics.
    """
    K, M, B, D = noise.shape
    S = obs.shape[-1]
    samples = torch.addcmul(mean, std, noise)                              # [K, M, B, S+1]
    next_obs = samples[..., :S].add_(obs)                                  # [K, M, B, S]
    next_q = next_value(next_obs.reshape(K * M * B, S)).view(K, M, B)      # [K, M, B]
    # r + gamma Q' (Eq. 8) or Q' alone (both references' compute_lcb)
    target = samples[..., S] + gamma * next_q if include_reward else next_q     # [K, M, B]
    return target.mean(0).std(0)                                           # [M, B] -> [B]


def mobile_penalty_ref(obs: Tensor, actions: Tensor, mean: Tensor, std: Tensor, noise: Tensor, actor,
                       critic_target, gamma: float, include_reward: bool = False) -> Tensor:
    """Readable loop version of :func:`mobile_penalty` on the actor and target-critic modules
    (tests compare the two with ``next_value = min_k critic_target(s', actor(s'))``)."""
    K, M, B, _ = noise.shape
    S = obs.shape[-1]
    targets = obs.new_empty(K, M, B)
    for k in range(K):                  # sample-major, like the flattened [K, M, B] rows of mobile_penalty
        for m in range(M):
            sample = mean[m] + std[m] * noise[k, m]                        # [B, S+1]
            next_obs = obs + sample[:, :S]
            next_actions = actor(next_obs, with_log_prob=False)[0]
            qs = critic_target(next_obs, next_actions)                     # [N, B]
            q_min = torch.stack([qs[i] for i in range(qs.shape[0])]).min(0).values
            targets[k, m] = sample[:, S] + gamma * q_min if include_reward else q_min
    return targets.mean(0).std(0)                                          # [K, M, B] -> [M, B] -> [B]


@dataclass
class MobilePenalty:
    """Target-time plug-in: ``coef * u(s, a)`` on model transitions, 0 on real ones."""

    coef: float
    dynamics: object
    """The trained :class:`pyscorepen.models.dynamics.EnsembleDynamics` (its ``elites`` are used)."""
    num_samples: int = 10
    """Draws (r, s') per elite (OfflineRL-Kit ``num_samples`` = 10)."""
    include_reward: bool = False
    """False: std of min_k Q'(s', a') alone (both references' compute_lcb); True: std of r + gamma Q'."""
    target_min: float | None = 0.0
    """Lower bound of the whole Bellman target (real and model rows), applied by
    :meth:`pyscorepen.algos.sac.SAC.compute_target`: both references clamp at 0. This assumes
    non-negative values (e.g. Hopper/Walker2d's alive bonus); None where returns can be negative
    (defaults.toml turns it off for halfcheetah-random)."""
    fused: bool = True
    """Next-state values through the fused :meth:`pyscorepen.algos.sac.SAC.soft_value`; False: the loop
    reference :func:`mobile_penalty_ref` on the modules (the benches' ``ref`` provider)."""
    name: str = "mobile"
    requires_all_members: bool = True
    """MOBILE's disagreement needs every elite's prediction, but it evaluates them itself at target
    time (``dynamics.predict``); rollouts only consult the generation-time penalties' flag, so
    ``--penalties score mobile`` still rolls out elite-only."""

    @torch.no_grad()
    def __call__(self, agent, batch) -> Tensor:
        out = torch.zeros_like(batch.rewards)                              # [B]
        model = batch.from_model
        if not bool(model.any()) or self.coef == 0.0:
            return out
        obs, actions = batch.obs[model], batch.actions[model]              # [Bm, S], [Bm, A]
        # the elites only ([M, Bm, S+1] each): the other members' forward would be thrown away
        mean, std = self.dynamics.predict(obs, actions, members=self.dynamics.elites)
        noise = torch.randn((self.num_samples, *mean.shape), device=mean.device)  # [K, M, Bm, S+1]
        if self.fused:
            u = mobile_penalty(obs, actions, mean, std, noise, agent.soft_value, agent.config.gamma,
                               self.include_reward)                        # [Bm]
        else:
            u = mobile_penalty_ref(obs, actions, mean, std, noise, agent.actor, agent.critic_target,
                                   agent.config.gamma, self.include_reward)    # [Bm]
        out[model] = self.coef * u
        return out


def factory(coef: float, **context) -> MobilePenalty:
    """Registry factory (:data:`pyscorepen.penalties.PENALTIES`)."""
    config = context.get("config")
    return MobilePenalty(coef, context["dynamics"], num_samples=getattr(config, "mobile_num_samples", 10),
                         include_reward=getattr(config, "mobile_include_reward", False),
                         target_min=0.0 if getattr(config, "mobile_clamp_target", True) else None)

