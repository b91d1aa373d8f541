"""Fused soft state value of a tanh-Gaussian policy under a Q ensemble (no gradients).

Public API: :func:`soft_value` (dispatching) and :func:`soft_value_ref` (the readable
pure-PyTorch specification every backend is tested against).

The math (SAC, Haarnoja et al. 2018, Eq. 3 with clipped double Q, Fujimoto et al. 2018)::

    mu, log_std = actor(s)                      ReLU MLP, last layer [2A] split in halves
    log_std     = clamp(log_std, log_std_min, log_std_max)
    u           = mu + exp(log_std) * eps,      eps ~ N(0, I)   (given as ``noise``)
    a           = action_scale * tanh(u) + action_offset
    log pi(a|s) = sum_j [ -eps_j^2 / 2 - log_std_j - log(2 pi) / 2 ]
                  - sum_j 2 (log 2 - u_j - softplus(-2 u_j))
    V(s)        = min_k Q_k(s, a) - alpha * log pi(a|s)

``log pi`` is the density of the action in the normalized box [-1, 1]^A, exactly as
:class:`pyscorepen.models.nets.TanhGaussianActor` computes it (the constant log(action_scale) is left
out). Each critic Q_k is a ReLU MLP on cat(s, a) with stacked weights ``[N, in, out]``, as in
:class:`pyscorepen.models.nets.QEnsemble`.

Users: SAC's Bellman target (``alpha`` = the entropy temperature, one sample of a' ~ pi(.|s'))
and the MOBILE penalty (``alpha`` = 0: min_k Q'(s', a') on K x M x B sampled next states,
MOBILE Eq. 7-8), which is where the rows are many and the fusion pays.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyscorepen.ops import backend as _backend
from pyscorepen.ops.rollout_step import ensemble_mlp_ref, mlp_ref


def relu_mlp_ref(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """:func:`~pyscorepen.ops.rollout_step.mlp_ref` with ReLU hidden activations (SAC's actor and critics)."""
    return mlp_ref(x, weights, biases, activation=F.relu)


def soft_value_ref(
    obs: Tensor,                    # [B, S]
    noise: Tensor,                  # [B, A] standard normal
    actor_weights: list[Tensor],    # [in_l, out_l]; first in = S, last out = 2A (mu | log_std)
    actor_biases: list[Tensor],     # [out_l]
    critic_weights: list[Tensor],   # [N, in_l, out_l]; first in = S + A, last out = 1
    critic_biases: list[Tensor],    # [N, out_l]
    action_scale: Tensor,           # [A]
    action_offset: Tensor,          # [A]
    alpha: Tensor,                  # [] entropy temperature (0: min_k Q only)
    log_std_min: float,
    log_std_max: float,
) -> Tensor:
    """V(s) = min_k Q_k(s, a) - alpha log pi(a|s), a ~ pi(.|s) drawn with ``noise``. Returns [B]."""
    mu, log_std = relu_mlp_ref(obs, actor_weights, actor_biases).chunk(2, dim=-1)  # [B, A] each
    log_std = log_std.clamp(log_std_min, log_std_max)
    u = mu + log_std.exp() * noise                                              # [B, A]
    action = torch.tanh(u) * action_scale + action_offset                       # [B, A]
    log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)  # [B]
    q = ensemble_mlp_ref(torch.cat([obs, action], dim=-1), critic_weights, critic_biases,
                         activation=F.relu)                                     # [N, B, 1]
    q_min = q.squeeze(-1).amin(dim=0)                                           # [B]
    return q_min - alpha * log_prob


_backend.register_reference("soft_value", soft_value_ref)


def soft_value(
    obs: Tensor,                    # [B, S]
    noise: Tensor,                  # [B, A]
    actor_weights: list[Tensor],    # [in_l, out_l]
    actor_biases: list[Tensor],     # [out_l]
    critic_weights: list[Tensor],   # [N, in_l, out_l]
    critic_biases: list[Tensor],    # [N, out_l]
    action_scale: Tensor,           # [A]
    action_offset: Tensor,          # [A]
    alpha: Tensor,                  # []
    log_std_min: float,
    log_std_max: float,
    *,
    backend: str | None = None,
) -> Tensor:
    """Fused soft value min_k Q_k(s, a) - alpha log pi(a|s), a ~ pi(.|s) (SAC Eq. 3), one pass
    over the batch: actor MLP, tanh-Gaussian sample and log-density, every critic, the min.

    Same arguments and result as :func:`soft_value_ref`; ``backend`` picks the kernel
    (``ref``/``cpp``/``triton``/``cuda``, default: ``$PYSCOREPEN_BACKEND`` or automatic, see
    :mod:`pyscorepen.ops.backend`). Inference only: no gradients flow through it.
    """
    name = _backend.resolve_backend("soft_value", obs, backend, rows=obs.shape[0])
    return _backend.get_kernel("soft_value", name)(
        obs, noise, list(actor_weights), list(actor_biases), list(critic_weights), list(critic_biases),
        action_scale, action_offset, alpha, float(log_std_min), float(log_std_max))
