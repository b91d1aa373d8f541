"""Triton SAC step: :func:`pyscorepen.ops.sac_update.sac_update_ref` (critic, actor and temperature
Adam steps and the Polyak average, in place) as Triton kernels, with no autograd graph.

Launch sequence of :func:`sac_update_triton` (Triton kernels; the rest is a handful of small torch
ops on [N, B] / [B] tensors and one ``_foreach_lerp_``):

1. Bellman target: :func:`.soft_value.soft_value_triton` on s' with the target critics.
2. Critic step: :mod:`.ensemble_mlp`'s ``_forward`` (saving the ReLU activations) and ``_backward``
   (weight and bias gradients), from dL/dQ = 2 (Q - y) / B; with COMBO's CQL term the sampled rows
   run in the same calls, their dL/dQ a softmax over each state's actions; ``_adam_kernel`` per
   parameter tensor.
3. Actor step: ``_forward`` of the actor (a 1-member ensemble read through the transposed strides of
   the ``nn.Linear`` weights, no copy); ``_tanh_gaussian_kernel`` (forward: action and log pi);
   ``_forward`` of the updated critics on (s, a); ``_backward`` for dL/da only (input gradient chain);
   ``_tanh_gaussian_kernel`` (backward: dL/dmu, dL/dlog_std from dL/da, analytic); ``_backward`` of
   the actor (weight and bias gradients); ``_adam_kernel``.
4. Temperature: ``_adam_kernel`` on log alpha with -mean(log pi + target entropy).
5. Polyak: ``torch._foreach_lerp_`` (one foreach kernel on CUDA).

Precision: fp32, ``tl.dot`` as in :mod:`.score_penalty`; deterministic (no atomics). The Adam bias
corrections are computed on the host from the step counters (one host read per tensor).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ensemble_mlp import _backward, _forward
from .rollout_step import _softplus
from .soft_value import _tanh, soft_value_triton

_LOG_2 = tl.constexpr(math.log(2.0))
_HALF_LOG_2PI = tl.constexpr(0.5 * math.log(2.0 * math.pi))
_ADAM_BLOCK = 1024


@triton.jit
def _tanh_gaussian_kernel(
    head_ptr,         # [B, 2A] actor output (mu | log_std before the clamp)
    noise_ptr,        # [B, A]  eps
    scale_ptr,        # [A]
    offset_ptr,       # [A]
    alpha_ptr,        # []      entropy temperature
    grad_action_ptr,  # [B, A]  dL/da (BACKWARD)
    action_ptr,       # [B, A]  out (forward)
    log_prob_ptr,     # [B]     out (forward)
    grad_head_ptr,    # [B, 2A] out (BACKWARD): dL/dmu | dL/dlog_std
    B, A, log_std_min, log_std_max, inv_batch,
    stride_hb, stride_ha, stride_nb, stride_na, stride_gab, stride_gaa, stride_ab, stride_aa,
    stride_ghb, stride_gha,
    BACKWARD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """Forward: a = scale tanh(u) + offset, u = mu + exp(clamp(log_std)) eps, and log pi (as
    TanhGaussianActor). Backward of L = mean_b [alpha log pi - Q(s, a)] given dL/da:
    dL/du = alpha/B 2 tanh(u) + dL/da scale (1 - tanh(u)^2), dL/dmu = dL/du,
    dL/dlog_std = (dL/du exp(log_std) eps - alpha/B) [log_std inside the clamp]. Grid (cdiv(B, BLOCK_B),)."""
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)                             # [BB]
    row_mask = offs_b < B
    alpha = tl.load(alpha_ptr)
    log_prob = tl.zeros((BLOCK_B,), dtype=tl.float32)                          # [BB]
    for a_start in range(0, A, BLOCK_A):
        offs_a = a_start + tl.arange(0, BLOCK_A)                               # [BA]
        a_mask = offs_a < A
        mask = row_mask[:, None] & a_mask[None, :]                             # [BB, BA]
        mu = tl.load(head_ptr + offs_b[:, None] * stride_hb + offs_a[None, :] * stride_ha, mask=mask, other=0.0)
        raw = tl.load(head_ptr + offs_b[:, None] * stride_hb + (offs_a + A)[None, :] * stride_ha, mask=mask,
                      other=0.0)
        eps = tl.load(noise_ptr + offs_b[:, None] * stride_nb + offs_a[None, :] * stride_na, mask=mask, other=0.0)
        log_std = tl.minimum(tl.maximum(raw, log_std_min), log_std_max)
        std = tl.exp(log_std)
        u = mu + std * eps
        t = _tanh(u)
        scale = tl.load(scale_ptr + offs_a, mask=a_mask, other=0.0)
        if BACKWARD:
            grad_a = tl.load(grad_action_ptr + offs_b[:, None] * stride_gab + offs_a[None, :] * stride_gaa,
                             mask=mask, other=0.0)
            grad_u = 2.0 * alpha * inv_batch * t + grad_a * scale[None, :] * (1.0 - t * t)
            inside = (raw >= log_std_min) & (raw <= log_std_max)
            grad_log_std = tl.where(inside, grad_u * std * eps - alpha * inv_batch, 0.0)
            out = grad_head_ptr + offs_b[:, None] * stride_ghb
            tl.store(out + offs_a[None, :] * stride_gha, grad_u, mask=mask)
            tl.store(out + (offs_a + A)[None, :] * stride_gha, grad_log_std, mask=mask)
        else:
            offset = tl.load(offset_ptr + offs_a, mask=a_mask, other=0.0)
            tl.store(action_ptr + offs_b[:, None] * stride_ab + offs_a[None, :] * stride_aa,
                     scale[None, :] * t + offset[None, :], mask=mask)
            term = -0.5 * eps * eps - log_std - _HALF_LOG_2PI - 2.0 * (_LOG_2 - u - _softplus(-2.0 * u))
            log_prob += tl.sum(tl.where(mask, term, 0.0), axis=1)
    if not BACKWARD:
        tl.store(log_prob_ptr + offs_b, log_prob, mask=row_mask)


@triton.jit
def _adam_kernel(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, n, lr, beta1, beta2, eps, weight_decay,
                 bias_correction1, bias_correction2_sqrt, BLOCK: tl.constexpr):
    """torch.optim.Adam's update of n contiguous elements (step counter already incremented)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    param = tl.load(param_ptr + offs, mask=mask)
    grad = tl.load(grad_ptr + offs, mask=mask) + weight_decay * param
    exp_avg = tl.load(exp_avg_ptr + offs, mask=mask)
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)                       # lerp towards the gradient
    exp_avg_sq = beta2 * tl.load(exp_avg_sq_ptr + offs, mask=mask) + (1.0 - beta2) * grad * grad
    denom = tl.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    tl.store(param_ptr + offs, param - (lr / bias_correction1) * exp_avg / denom, mask=mask)
    tl.store(exp_avg_ptr + offs, exp_avg, mask=mask)
    tl.store(exp_avg_sq_ptr + offs, exp_avg_sq, mask=mask)


def _adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay) -> None:
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step += 1
        count = float(step)
        n = param.numel()
        _adam_kernel[(triton.cdiv(n, _ADAM_BLOCK),)](
            param, grad.contiguous(), exp_avg, exp_avg_sq, n, lr, beta1, beta2, eps, weight_decay,
            1.0 - beta1 ** count, math.sqrt(1.0 - beta2 ** count), BLOCK=_ADAM_BLOCK)


def _tanh_gaussian(head: Tensor, noise: Tensor, scale: Tensor, offset: Tensor, alpha: Tensor,
                   log_std_min: float, log_std_max: float, grad_action: Tensor | None = None):
    """Forward: (action [B, A], log_prob [B]); with ``grad_action``: dL/dhead [B, 2A]."""
    batch, action_dim = noise.shape
    action = head.new_empty(batch, action_dim)
    log_prob = head.new_empty(batch)
    grad_head = head.new_empty(batch, 2 * action_dim)
    grad_action = grad_action if grad_action is not None else action
    block_b, block_a = 16, min(triton.next_power_of_2(max(action_dim, 1)), 64)
    _tanh_gaussian_kernel[(triton.cdiv(batch, block_b),)](
        head, noise, scale, offset, alpha, grad_action, action, log_prob, grad_head,
        batch, action_dim, log_std_min, log_std_max, 1.0 / batch,
        head.stride(0), head.stride(1), noise.stride(0), noise.stride(1), grad_action.stride(0),
        grad_action.stride(1), action.stride(0), action.stride(1), grad_head.stride(0), grad_head.stride(1),
        BACKWARD=grad_action is not action, BLOCK_B=block_b, BLOCK_A=block_a)
    return grad_head if grad_action is not action else (action, log_prob)


@torch.no_grad()
def sac_update_triton(
    obs, actions, rewards, next_obs, terminals, penalty, target_penalty, target_noise, actor_noise,
    actor_weights, actor_biases, critic_weights, critic_biases, target_weights, target_biases, log_alpha,
    exp_avgs, exp_avg_sqs, steps, action_scale, action_offset, gamma, tau, target_entropy, auto_alpha,
    actor_lr, critic_lr, alpha_lr, beta1, beta2, adam_eps, weight_decay, log_std_min, log_std_max,
    deterministic_backup=False, target_min=None, cql_obs=None, cql_actions=None, cql_log_density=None,
    cql_push_up=None, cql_weight=0.0, cql_temperature=1.0,
) -> Tensor:
    """The SAC step of :func:`pyscorepen.ops.sac_update.sac_update_ref` (same arguments, same in-place
    updates, returns [4]: TD critic loss, actor loss, mean Q, CQL gap) as Triton kernels; float32 tensors."""
    batch, obs_dim = obs.shape
    action_dim = actions.shape[1]
    n_actor, n_critic = 2 * len(actor_weights), 2 * len(critic_weights)
    adam = dict(beta1=beta1, beta2=beta2, eps=adam_eps, weight_decay=weight_decay)
    scale, offset = action_scale.reshape(action_dim).contiguous(), action_offset.reshape(action_dim).contiguous()
    alpha = log_alpha.exp()                                                    # [] before the step
    inv_batch = 1.0 / batch

    # 1. target y = r - penalty [- target_penalty] + gamma (1 - d) V'(s'), V' entropy-free with
    #    deterministic_backup, y clamped at >= target_min when given
    actor_w_io = [w.t() for w in actor_weights]                                # [in, out] views
    target_alpha = torch.zeros_like(alpha) if deterministic_backup else alpha
    next_v = soft_value_triton(next_obs, target_noise, actor_w_io, list(actor_biases), list(target_weights),
                               list(target_biases), scale, offset, target_alpha, log_std_min, log_std_max)  # [B]
    reward = rewards - penalty
    if target_penalty is not None:
        reward = reward - target_penalty
    target = torch.addcmul(reward, 1.0 - terminals, next_v, value=gamma)      # [B]
    if target_min is not None:
        target = target.clamp_min(target_min)

    # 2. critic step
    critic_w, critic_b = list(critic_weights), list(critic_biases)
    layers = len(critic_w)
    x = torch.cat([obs, actions], 1)                                           # [B, S+A]
    if cql_actions is not None:   # COMBO Eq. 2: the K*C sampled rows after the batch, row B + j*C + c
        K, C, _ = cql_actions.shape
        x = torch.cat([x, torch.cat([cql_obs.repeat(K, 1), cql_actions.reshape(K * C, action_dim)], 1)], 0)
    q_all, saved = _forward(x, critic_w, critic_b, "relu", save=True)          # [N, R, 1]
    q = q_all[:, :batch, 0]                                                    # [N, B]
    diff = q - target                                                          # [N, B]
    critic_loss, q_mean = diff.square().mean(1).sum(), q.mean()
    grad_q = torch.zeros_like(q_all[..., 0])                                   # [N, R]
    grad_q[:, :batch] = diff * (2.0 * inv_batch)
    gap = torch.zeros((), device=obs.device)
    if cql_actions is not None:
        logits = (q_all[:, batch:, 0].view(-1, K, C) - cql_log_density) / cql_temperature   # [N, K, C]
        push_down = (cql_temperature * torch.logsumexp(logits, 1)).mean(1)     # [N]
        up = cql_push_up / cql_push_up.sum()                                   # [B]
        gap = (push_down - (q * up).sum(1)).mean()
        grad_q[:, :batch] -= cql_weight * up
        grad_q[:, batch:] = (cql_weight / C) * torch.softmax(logits, 1).reshape(-1, K * C)
    _, grad_w, grad_b = _backward(grad_q.unsqueeze(-1), x, critic_w, saved, "relu",
                                  False, [True] * layers, [True] * layers)
    critic_params = [p for pair in zip(critic_w, critic_b) for p in pair]
    _adam(critic_params, [g for pair in zip(grad_w, grad_b) for g in pair], exp_avgs[n_actor:n_actor + n_critic],
          exp_avg_sqs[n_actor:n_actor + n_critic], steps[n_actor:n_actor + n_critic], critic_lr, **adam)

    # 3. actor step through the updated critics
    actor_w1 = [w.t().unsqueeze(0) for w in actor_weights]                     # [1, in, out] views
    actor_b1 = [b.unsqueeze(0) for b in actor_biases]                          # [1, out]
    head, saved_pi = _forward(obs, actor_w1, actor_b1, "relu", save=True)      # [1, B, 2A]
    head = head[0]
    action, log_prob = _tanh_gaussian(head, actor_noise, scale, offset, alpha, log_std_min, log_std_max)
    x_pi = torch.cat([obs, action], 1)                                         # [B, S+A]
    q_pi, saved_q_pi = _forward(x_pi, critic_w, critic_b, "relu", save=True)  # [N, B, 1]
    q_min, argmin = q_pi.squeeze(-1).min(0)                                    # [B]
    actor_loss = (alpha * log_prob - q_min).mean()
    grad_q = torch.zeros_like(q_pi.squeeze(-1)).scatter_(0, argmin.unsqueeze(0), -inv_batch)   # [N, B]
    grad_x, _, _ = _backward(grad_q.unsqueeze(-1), x_pi, critic_w, saved_q_pi, "relu", True,
                             [False] * layers, [False] * layers)               # [B, S+A]
    grad_head = _tanh_gaussian(head, actor_noise, scale, offset, alpha, log_std_min, log_std_max,
                               grad_action=grad_x[:, obs_dim:])                # [B, 2A]
    actor_layers = len(actor_weights)
    _, grad_aw, grad_ab = _backward(grad_head.unsqueeze(0), obs, actor_w1, saved_pi, "relu", False,
                                    [True] * actor_layers, [True] * actor_layers)
    actor_params = [p for pair in zip(actor_weights, actor_biases) for p in pair]
    actor_grads = [g for pair in zip(grad_aw, grad_ab) for g in (pair[0][0].t(), pair[1][0])]
    _adam(actor_params, actor_grads, exp_avgs[:n_actor], exp_avg_sqs[:n_actor], steps[:n_actor], actor_lr, **adam)

    # 4. temperature, 5. Polyak
    if auto_alpha:
        grad_log_alpha = -(log_prob + target_entropy).mean()
        _adam([log_alpha], [grad_log_alpha], exp_avgs[-1:], exp_avg_sqs[-1:], steps[-1:], alpha_lr, **adam)
    torch._foreach_lerp_([p for pair in zip(target_weights, target_biases) for p in pair], critic_params, tau)
    return torch.stack([critic_loss, actor_loss, q_mean, gap])
