"""One fused step of a probabilistic-ensemble model rollout.

Public API: :func:`rollout_step` (dispatching) and :func:`rollout_step_ref`
(the readable pure-PyTorch specification every backend is tested against).

The math (MOPO §4.3, Yu et al. 2020; ScorePen-MORL Eq. 20, Algorithm 1):

* every ensemble member i predicts a Gaussian N(mu_i, diag(sigma_i^2)) over
  (delta_s, r) from the normalized input x = (s, a);
* the log-variance is soft-bounded (Chua et al. 2018, MOPO appendix)::

      logvar = max_logvar - softplus(max_logvar - logvar)
      logvar = min_logvar + softplus(logvar - min_logvar)

* each sample b takes one member e_b (an elite drawn by the caller) and
  draws y_b = mu_{e_b} + sigma_{e_b} * noise_b; s' = s + y[:S], r = y[S];
* MOPO penalty (Algorithm 2): u(s, a) = max_i || sigma_i(s, a) ||_2 over all
  members;
* score penalty (ScorePen Eq. 20): ||h_xi(x)||^2 from the frozen score MLP
  evaluated on the same normalized x (the penalty lives in normalized space).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyscorepen.ops import backend as _backend


class RolloutStepOut(NamedTuple):
    next_obs: Tensor       # [B, S]
    rewards: Tensor        # [B]
    mopo_penalty: Tensor   # [B]  max_i ||sigma_i||_2
    score_penalty: Tensor  # [B]  ||h(x)||^2 (zeros when no score net given)


def soft_bound_logvar(logvar: Tensor, max_logvar: Tensor, min_logvar: Tensor) -> Tensor:
    """Soft clamp of the predicted log-variance into [min_logvar, max_logvar]."""
    logvar = max_logvar - F.softplus(max_logvar - logvar)
    return min_logvar + F.softplus(logvar - min_logvar)


def ensemble_mlp_ref(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation=F.silu) -> Tensor:
    """Vectorized ensemble MLP, SiLU (Swish) hidden activations unless ``activation`` says otherwise.

    x: [B, in] shared by all members, or [E, B, in].
    weights[l]: [E, in_l, out_l]; biases[l]: [E, out_l]. Returns [E, B, out].
    """
    E = weights[0].shape[0]
    h = x.expand(E, *x.shape) if x.dim() == 2 else x           # [E, B, in]
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.unsqueeze(1), h, w)                   # [E, B, out_l]
        if layer != last:
            h = activation(h)
    return h


def mlp_ref(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation=F.silu) -> Tensor:
    """Plain MLP, SiLU hidden activations unless ``activation`` says otherwise.
    weights[l]: [in_l, out_l], biases[l]: [out_l]."""
    h = x
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = torch.addmm(b, h, w)                                  # [B, out_l]
        if layer != last:
            h = activation(h)
    return h


def rollout_step_ref(
    obs: Tensor,                  # [B, S] raw observations
    actions: Tensor,              # [B, A] raw actions
    input_mean: Tensor,           # [S + A]
    input_std: Tensor,            # [S + A]
    weights: list[Tensor],        # [E, in_l, out_l]; last out = 2 * (S + 1)
    biases: list[Tensor],         # [E, out_l]
    max_logvar: Tensor,           # [S + 1]
    min_logvar: Tensor,           # [S + 1]
    member_index: Tensor,         # [B] int64, ensemble member used by each sample
    noise: Tensor,                # [B, S + 1] standard normal (zeros: mean prediction)
    score_weights: list[Tensor],  # [in_l, out_l]; first in = S + A, last out = S + A
    score_biases: list[Tensor],   # [out_l]  (empty lists: no score penalty)
) -> RolloutStepOut:
    S = obs.shape[1]
    x = (torch.cat([obs, actions], dim=-1) - input_mean) / input_std   # [B, S+A]
    out = ensemble_mlp_ref(x, weights, biases)                          # [E, B, 2(S+1)]
    mean, logvar = out.chunk(2, dim=-1)                                 # [E, B, S+1] each
    logvar = soft_bound_logvar(logvar, max_logvar, min_logvar)
    std = torch.exp(0.5 * logvar)                                       # [E, B, S+1]
    mopo_penalty = std.norm(dim=-1).amax(dim=0)                         # [B]
    rows = torch.arange(obs.shape[0], device=obs.device)
    sample = mean[member_index, rows] + std[member_index, rows] * noise  # [B, S+1]
    next_obs = obs + sample[:, :S]
    rewards = sample[:, S]
    if score_weights:
        score_penalty = mlp_ref(x, score_weights, score_biases).square().sum(-1)  # [B]
    else:
        score_penalty = torch.zeros_like(rewards)
    return RolloutStepOut(next_obs, rewards, mopo_penalty, score_penalty)


_backend.register_reference("rollout_step", rollout_step_ref)


def rollout_step(
    obs: Tensor,                  # [B, S] raw observations
    actions: Tensor,              # [B, A] raw actions
    input_mean: Tensor,           # [S + A]
    input_std: Tensor,            # [S + A]
    weights: list[Tensor],        # [E, in_l, out_l]; last out = 2 * (S + 1)
    biases: list[Tensor],         # [E, out_l]
    max_logvar: Tensor,           # [S + 1]
    min_logvar: Tensor,           # [S + 1]
    member_index: Tensor,         # [B] int64
    noise: Tensor,                # [B, S + 1]
    score_weights: list[Tensor],  # [in_l, out_l] (empty: no score penalty)
    score_biases: list[Tensor],   # [out_l]
    *,
    backend: str | None = None,
) -> RolloutStepOut:
    """One fused model-rollout step: sample (s', r) from the ensemble member of each row and
    return the MOPO penalty max_i ||sigma_i(s, a)||_2 (MOPO Algorithm 2) and the score penalty
    ||h_xi(x)||^2 (ScorePen-MORL Eq. 20), all from a single pass over the batch.

    Same arguments and result as :func:`rollout_step_ref`; ``backend`` picks the kernel
    (``ref``/``cpp``/``triton``/``cuda``, default: ``$PYSCOREPEN_BACKEND`` or automatic, see
    :mod:`pyscorepen.ops.backend`). Inference only: no gradients flow through it.
    """
    name = _backend.resolve_backend("rollout_step", obs, backend, rows=obs.shape[0])
    out = _backend.get_kernel("rollout_step", name)(
        obs, actions, input_mean, input_std, list(weights), list(biases), max_logvar, min_logvar,
        member_index, noise, list(score_weights), list(score_biases))
    return RolloutStepOut(*out)
