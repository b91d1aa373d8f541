"""COMBO (Yu et al. 2021, "COMBO: Conservative Offline Model-Based Policy Optimization"):
SAC plus a CQL regulariser on model rollouts (COMBO Eq. 2)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pyscorepen.algos.sac import SAC
from pyscorepen.data import Batch


@dataclass
class ComboConfig:
    cql_weight: float = 1.0
    """beta of COMBO Eq. 2 (the paper searches {0.5, 1, 5}, §3 and its App. B.2). Per-dataset values are in
    configs/defaults.toml (OfflineRL-Kit run_combo.py's suggested hyperparameters). Range: [0, inf)."""
    rho: Literal["mix", "model"] = "mix"
    """States of the push-down distribution rho(s, a) = rho(s) pi(a|s) of Eq. 2. 'mix': every state of
    the batch, model and dataset states in the batch's proportion (real_ratio), COMBO §3 "we augment
    rho with states sampled from the offline dataset, which shows more stable improvement in practice"
    (OfflineRL-Kit ``rho_s='mix'``, its default). 'model': model-rollout states only (Eq. 2 as written)."""
    num_sampled_actions: int = 10
    """Actions per state for the log-sum-exp (uniform, pi(.|s), pi(.|s') each). Range: [1, inf)."""
    temperature: float = 1.0
    """Temperature of the soft maximum over actions. Range: (0, inf)."""


class COMBO(SAC):
    """COMBO (Yu et al. 2021): SAC whose critic loss adds, per critic (Eq. 2),

        beta * ( E_{s ~ rho} [ log sum_a exp Q(s, a) ] - E_{(s,a) ~ D} [ Q(s, a) ] ),

    with rho(s) the model-rollout states augmented with dataset states (``ComboConfig.rho``),
    the CQL(H) form of "push Q down on model-rollout states with policy/uniform actions,
    up on dataset pairs"; the log-sum-exp uses importance-sampled uniform actions and policy
    actions at s and s' (Kumar et al. 2020, App. F). The fused ``sac_update`` op computes the same
    term from the same samples (:meth:`fused_regularizer_args`) where the op's policy allows it."""

    def __init__(self, *args, combo: ComboConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.combo = combo or ComboConfig()

    def push_down_rows(self, batch: Batch) -> Tensor:
        """Rows of the batch whose states form rho(s) (see ``ComboConfig.rho``): bool [B]."""
        if self.combo.rho == "mix":
            return torch.ones_like(batch.from_model)
        return batch.from_model

    def push_down_samples(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor] | None:
        """The log-sum-exp's importance samples (CQL, Kumar et al. 2020, App. F): states s ~ rho [C, S],
        K = 3R actions per state [K, C, A] (R uniform, R from pi(.|s), R from pi(.|s') in that order)
        and their log densities [K, C]; None when Eq. 2's term is zero for this batch (no rho state
        or no dataset row). One draw order for both update paths: uniform, pi(.|s), pi(.|s')."""
        cfg = self.combo
        rho, real = self.push_down_rows(batch), ~batch.from_model
        if not rho.any() or not real.any():
            return None
        obs, next_obs = batch.obs[rho], batch.next_obs[rho]                         # [C, S]
        R, C = cfg.num_sampled_actions, obs.shape[0]
        scale, offset = self.actor.action_scale, self.actor.action_offset          # [A]
        A = scale.shape[0]
        with torch.no_grad():
            rand_actions = offset + scale * (2 * torch.rand(R * C, A, device=obs.device) - 1)   # [R*C, A]
            # R samples per state, the actor's MLP once per state (its rows are those of obs.repeat(R, 1))
            pi_actions, pi_log_prob = self.actor(obs, repeats=R)                   # [R*C, A], [R*C]
            next_actions, next_log_prob = self.actor(next_obs, repeats=R)
            log_uniform = pi_log_prob.new_full((R * C,), -A * math.log(2.0))   # uniform density on [-1, 1]^A (see actor)
            actions = torch.cat([rand_actions, pi_actions, next_actions]).view(3 * R, C, A)          # [K, C, A]
            log_density = torch.cat([log_uniform, pi_log_prob, next_log_prob]).view(3 * R, C)      # [K, C]
        return obs, actions, log_density

    def critic_regularizer(self, batch: Batch, q_pred: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.combo
        samples = self.push_down_samples(batch)
        if samples is None:
            return q_pred.new_zeros(()), {}
        obs, actions, log_density = samples                                         # [C, S], [K, C, A], [K, C]
        K, C, A = actions.shape
        R = K // 3                                                                  # actions of each kind
        obs_rep = obs.repeat(R, 1)                                                  # [R*C, S]
        # Three critic calls (uniform, pi(.|s), pi(.|s') actions), not one on the K*C rows: on CPU
        # the single call was measured 0.87-0.93x as fast in this module path (1 thread, same-run
        # alternation; its activations are 3x larger, benches/README.md).
        q = torch.cat([self.critic(obs_rep, kind.reshape(R * C, A)).view(-1, R, C)
                       for kind in actions.split(R)], dim=1) - log_density          # [N, K, C]
        t = cfg.temperature
        push_down = (t * torch.logsumexp(q / t, dim=1)).mean(1)                     # [N]
        push_up = q_pred[:, ~batch.from_model].mean(1)                              # [N]
        gap = push_down - push_up
        return cfg.cql_weight * gap.sum(), {"combo/q_gap": gap.detach().mean()}

    def fused_regularizer_args(self, batch: Batch) -> tuple[dict, str | None]:
        """Eq. 2 as the ``cql_*`` arguments of the fused ``sac_update`` op (same samples as
        :meth:`critic_regularizer`); the op's 4th output is ``combo/q_gap``."""
        samples = self.push_down_samples(batch)
        if samples is None:
            return {}, None
        obs, actions, log_density = samples
        return dict(cql_obs=obs, cql_actions=actions, cql_log_density=log_density,
                    cql_push_up=(~batch.from_model).float(), cql_weight=self.combo.cql_weight,
                    cql_temperature=self.combo.temperature), "combo/q_gap"

    def regularizer_rows(self, batch: Batch) -> int:
        """3R sampled actions per push-down state (0 when the term is zero for this batch)."""
        if not bool((~batch.from_model).any()):
            return 0
        return 3 * self.combo.num_sampled_actions * int(self.push_down_rows(batch).sum())
