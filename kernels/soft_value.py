"""Triton soft state value V(s) = min_k Q_k(s, a) - alpha log pi(a|s) of a tanh-Gaussian actor under a
Q ensemble (SAC Eq. 3 with clipped double Q; MOBILE's min_k Q'(s', a') with alpha = 0).
Specification: :func:`pyscorepen.ops.soft_value.soft_value_ref`.

Launch sequence of :func:`soft_value_triton` (actor with L hidden layers, critics with L' >= 0 hidden
layers, N members):

1. L x ``_fused_linear_kernel`` (from :mod:`.score_penalty`, ``ACTIVATION="relu"``, E = 1): the actor's
   hidden layers.                                                           -> [B, H]
2. ``_actor_head_kernel``: the actor's last layer [H, 2A] and the tanh-Gaussian head in its epilogue.
   Each program owns a block of rows and walks over action-column blocks; per block it runs two
   ``tl.dot`` accumulations off the same input tile (the mu columns and the log_std columns of W), then
   clamps log_std, u = mu + exp(log_std) * eps, a = scale * tanh(u) + offset, and adds the block's
   share of log pi(a|s) to a per-row register.                      -> action [B, A], log_prob [B]
3. L' - 1 x ``_fused_linear_kernel`` (ReLU, batched over the N critics): all critic hidden layers but
   the last. The first critic layer loads ``[obs | action]`` (the concatenation is fused into the
   load, so ``cat(s, a)`` is never written).                                  -> [N, B, H']
4. ``_critic_min_value_kernel``: the last critic hidden layer, the output layer (out = 1), the min over
   members and ``- alpha * log_prob``. Each program owns a block of rows and loops over members and
   over column blocks of the last hidden layer; every ReLU tile is reduced against the output weights
   right away (as ``_linear_square_sum_kernel`` does), so neither the last hidden activations nor the
   per-member Q values reach memory: only [B] is written (deterministic, no atomics). ``alpha`` is
   read from its tensor inside the kernel, so there is no host sync.                -> [B]
   With L' = 0 (linear critics) the kernel runs the output layer alone on ``[obs | action]``.

Precision and tolerances: see :mod:`.score_penalty` (fp32, ieee ``tl.dot``; tests use rtol = atol = 1e-4).
Block sizes are ``triton.autotune`` configs keyed on the dims; under ``TRITON_INTERPRET=1`` one small
config, so that tiny test shapes span several row / column / K blocks and exercise the masks.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .rollout_step import _softplus
from .score_penalty import DOT_PRECISION, INTERPRET, _linear_tile, mlp_forward

_LOG_2 = tl.constexpr(math.log(2.0))
_HALF_LOG_2PI = tl.constexpr(0.5 * math.log(2.0 * math.pi))


def head_configs() -> list[triton.Config]:
    """Autotune search space for the actor head (BLOCK_A is picked from A on the host)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_B": 16, "BLOCK_K": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bb, bk, warps, stages in [
            (16, 64, 2, 3),
            (32, 32, 4, 3),
            (32, 64, 4, 3),
            (64, 32, 4, 3),
            (64, 64, 4, 3),
            (128, 32, 8, 3),
        ]
    ]


def critic_configs() -> list[triton.Config]:
    """Autotune search space for the fused critic tail. The grid only spans row blocks (members and
    hidden columns are loops), so small BLOCK_M configs keep the SMs busy at SAC batch sizes."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in [
            (16, 64, 32, 2, 3),
            (16, 128, 32, 4, 3),
            (32, 64, 32, 4, 3),
            (32, 128, 32, 4, 3),
            (64, 64, 32, 4, 3),
            (64, 128, 32, 8, 3),
            (128, 64, 32, 8, 3),
            (64, 64, 64, 4, 3),
        ]
    ]


@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e^{-2|x|}) / (1 + e^{-2|x|}): no overflow for any x; abs. error ~1e-7 near 0
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0.0, -y, y)


@triton.autotune(configs=head_configs(), key=["B", "H", "A"])
@triton.jit
def _actor_head_kernel(
    h_ptr,            # [B, H] input of the actor's last layer (obs when the actor has no hidden layer)
    w_ptr,            # [H, 2A] last actor layer: columns [0, A) -> mu, [A, 2A) -> log_std
    b_ptr,            # [2A]
    noise_ptr,        # [B, A] standard normal eps
    scale_ptr,        # [A] (stride 0 when broadcast from a scalar)
    offset_ptr,       # [A]
    action_ptr,       # [B, A] out: scale * tanh(u) + offset
    log_prob_ptr,     # [B]    out: log pi(a|s) in the normalized box
    B, H, A,
    log_std_min, log_std_max,
    stride_hb, stride_hk,
    stride_wk, stride_wn, stride_bn,
    stride_noise_b, stride_noise_a,
    stride_scale, stride_offset,
    stride_action_b, stride_action_a,
    stride_log_prob,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """Actor last layer + tanh-Gaussian sample and log-density; grid (cdiv(B, BLOCK_B),)."""
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)                             # [BB]
    row_mask = offs_b < B
    log_prob = tl.zeros((BLOCK_B,), dtype=tl.float32)                          # [BB]
    for a_start in range(0, A, BLOCK_A):
        offs_a = a_start + tl.arange(0, BLOCK_A)                               # [BA]
        a_mask = offs_a < A
        mu = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32)                    # [BB, BA]
        log_std = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32)               # [BB, BA]
        for k_start in range(0, H, BLOCK_K):
            offs_k = k_start + tl.arange(0, BLOCK_K)                           # [BK]
            k_mask = offs_k < H
            x = tl.load(h_ptr + offs_b[:, None] * stride_hb + offs_k[None, :] * stride_hk,
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # [BB, BK]
            w_mask = k_mask[:, None] & a_mask[None, :]
            w_mu = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_a[None, :] * stride_wn,
                           mask=w_mask, other=0.0)                             # [BK, BA]
            w_log_std = tl.load(w_ptr + offs_k[:, None] * stride_wk + (offs_a + A)[None, :] * stride_wn,
                                mask=w_mask, other=0.0)                        # [BK, BA]
            mu = tl.dot(x, w_mu, mu, input_precision=DOT_PRECISION)
            log_std = tl.dot(x, w_log_std, log_std, input_precision=DOT_PRECISION)
        mu += tl.load(b_ptr + offs_a * stride_bn, mask=a_mask, other=0.0)[None, :]
        log_std += tl.load(b_ptr + (offs_a + A) * stride_bn, mask=a_mask, other=0.0)[None, :]
        log_std = tl.minimum(tl.maximum(log_std, log_std_min), log_std_max)   # clamp(min, max)

        mask = row_mask[:, None] & a_mask[None, :]                             # [BB, BA]
        eps = tl.load(noise_ptr + offs_b[:, None] * stride_noise_b + offs_a[None, :] * stride_noise_a,
                      mask=mask, other=0.0)                                    # [BB, BA]
        u = mu + tl.exp(log_std) * eps                                         # pre-squash sample
        scale = tl.load(scale_ptr + offs_a * stride_scale, mask=a_mask, other=0.0)
        offset = tl.load(offset_ptr + offs_a * stride_offset, mask=a_mask, other=0.0)
        action = scale[None, :] * _tanh(u) + offset[None, :]                   # [BB, BA]
        tl.store(action_ptr + offs_b[:, None] * stride_action_b + offs_a[None, :] * stride_action_a,
                 action, mask=mask)
        # Gaussian log-density of u, minus the tanh Jacobian log(1 - tanh(u)^2) in its stable form
        term = (-0.5 * eps * eps - log_std - _HALF_LOG_2PI
                - 2.0 * (_LOG_2 - u - _softplus(-2.0 * u)))                    # [BB, BA]
        log_prob += tl.sum(tl.where(mask, term, 0.0), axis=1)
    tl.store(log_prob_ptr + offs_b * stride_log_prob, log_prob, mask=row_mask)


@triton.autotune(configs=critic_configs(), key=["M", "N", "K", "E", "HIDDEN", "CONCAT"])
@triton.jit
def _critic_min_value_kernel(
    x_ptr,            # [E, M, K] layer input (stride_xe = 0 when shared; x1 = obs when CONCAT)
    x2_ptr,           # [M, K - K_SPLIT] action, concatenated after x (CONCAT only)
    w_ptr,            # HIDDEN: last hidden layer [E, K, N]; else the output layer [E, K, 1]
    b_ptr,            # HIDDEN: [E, N];                      else [E, 1]
    w_out_ptr,        # HIDDEN: output layer [E, N, 1] (unused otherwise)
    b_out_ptr,        # HIDDEN: [E, 1]
    log_prob_ptr,     # [B]
    alpha_ptr,        # [1]
    out_ptr,          # [B] out
    M, N, K, K_SPLIT, E,
    stride_xe, stride_xm, stride_xk, stride_x2m, stride_x2k,
    stride_we, stride_wk, stride_wn, stride_be, stride_bn,
    stride_woe, stride_wok, stride_boe,
    stride_log_prob, stride_out,
    HIDDEN: tl.constexpr, CONCAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[m] = min_e Q_e[m] - alpha * log_prob[m]; grid (cdiv(M, BLOCK_M),).

    HIDDEN: Q_e = relu(x_e @ W_e + b_e) @ w_out_e + b_out_e, the [BM, N] hidden tile reduced against
    w_out block by block in registers. Otherwise (linear critics, N = 1): Q_e = x_e @ W_e + b_e.
    """
    pid_m = tl.program_id(0)
    row_start = pid_m * BLOCK_M
    offs_m = row_start + tl.arange(0, BLOCK_M)                                 # [BM]
    q_min = tl.full((BLOCK_M,), float("inf"), dtype=tl.float32)                # [BM]
    x_e, w_e, b_e, w_out_e, b_out_e = x_ptr, w_ptr, b_ptr, w_out_ptr, b_out_ptr  # member 0 (64-bit ptrs)
    for _member in range(E):
        if HIDDEN:
            q = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(b_out_e)      # [BM] output bias
            for col_start in range(0, N, BLOCK_N):
                tile = _linear_tile(
                    x_e, x2_ptr, x_ptr, x_ptr, w_e, b_e,                       # (no normalization)
                    M, N, K, K_SPLIT,
                    stride_xm, stride_xk, stride_x2m, stride_x2k,
                    stride_wk, stride_wn, stride_bn,
                    row_start, col_start,
                    False, CONCAT, "relu", DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                )                                                              # [BM, BN], 0 past N
                offs_n = col_start + tl.arange(0, BLOCK_N)
                w_out = tl.load(w_out_e + offs_n * stride_wok, mask=offs_n < N, other=0.0)   # [BN]
                q += tl.sum(tile * w_out[None, :], axis=1)                     # [BM]
        else:
            tile = _linear_tile(
                x_e, x2_ptr, x_ptr, x_ptr, w_e, b_e,
                M, 1, K, K_SPLIT,
                stride_xm, stride_xk, stride_x2m, stride_x2k,
                stride_wk, stride_wn, stride_bn,
                row_start, 0,
                False, CONCAT, "none", DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
            )                                                                  # [BM, BN], column 0 = Q
            q = tl.sum(tile, axis=1)
        q_min = tl.minimum(q_min, q, propagate_nan=tl.PropagateNan.ALL)        # torch.amin keeps NaN
        x_e += stride_xe
        w_e += stride_we
        b_e += stride_be
        w_out_e += stride_woe
        b_out_e += stride_boe
    row_mask = offs_m < M
    alpha = tl.load(alpha_ptr)
    log_prob = tl.load(log_prob_ptr + offs_m * stride_log_prob, mask=row_mask, other=0.0)
    tl.store(out_ptr + offs_m * stride_out, q_min - alpha * log_prob, mask=row_mask)


def _as_f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


@torch.no_grad()
def soft_value_triton(
    obs: Tensor,                    # [B, S]
    noise: Tensor,                  # [B, A] standard normal
    actor_weights: list[Tensor],    # [in_l, out_l]; first in = S, last out = 2A (mu | log_std)
    actor_biases: list[Tensor],     # [out_l]
    critic_weights: list[Tensor],   # [N, in_l, out_l]; first in = S + A, last out = 1
    critic_biases: list[Tensor],    # [N, out_l]
    action_scale: Tensor,           # [A] (or broadcastable to it)
    action_offset: Tensor,          # [A]
    alpha: Tensor,                  # [] entropy temperature (0: min_k Q only)
    log_std_min: float,
    log_std_max: float,
) -> Tensor:
    """V(s) = min_k Q_k(s, a) - alpha log pi(a|s), a ~ pi(.|s) drawn with ``noise``, as fused Triton
    kernels (SAC Eq. 3 target; MOBILE's min_k Q' with alpha = 0). Returns [B] in ``obs.dtype``.

    Same contract as :func:`pyscorepen.ops.soft_value.soft_value_ref`; all math is fp32 (inputs are
    cast). ``alpha`` stays on the device and is read by the last kernel (no ``.item()`` sync).
    Inference only (runs under ``torch.no_grad``).
    """
    if obs.dim() != 2 or noise.dim() != 2 or noise.shape[0] != obs.shape[0]:
        raise ValueError(f"expected obs [B, S] and noise [B, A], got {tuple(obs.shape)} and {tuple(noise.shape)}")
    batch, state_dim = obs.shape
    action_dim = noise.shape[1]
    if not actor_weights or len(actor_weights) != len(actor_biases):
        raise ValueError(f"need matching non-empty actor weights/biases, got {len(actor_weights)} and "
                         f"{len(actor_biases)}")
    if not critic_weights or len(critic_weights) != len(critic_biases):
        raise ValueError(f"need matching non-empty critic weights/biases, got {len(critic_weights)} and "
                         f"{len(critic_biases)}")
    w_head, b_head = _as_f32(actor_weights[-1]), _as_f32(actor_biases[-1])     # [H, 2A], [2A]
    if w_head.dim() != 2 or w_head.shape[1] != 2 * action_dim or b_head.shape != (2 * action_dim,):
        raise ValueError(f"last actor layer must map to 2A = {2 * action_dim} features, got weight "
                         f"{tuple(w_head.shape)} / bias {tuple(b_head.shape)}")
    members = critic_weights[0].shape[0]
    if members < 1 or critic_weights[-1].shape[-1] != 1:
        raise ValueError(f"critics must be [N >= 1, in, out] with last out = 1, got last weight "
                         f"{tuple(critic_weights[-1].shape)}")
    if batch == 0:
        return obs.new_zeros(0)
    device = obs.device
    obs32, noise32 = _as_f32(obs), _as_f32(noise)

    # 1. actor hidden layers (ReLU)                                                    -> [B, H]
    if len(actor_weights) > 1:
        h = mlp_forward(obs32, None, None, None,
                        [w.unsqueeze(0) for w in actor_weights[:-1]], [b.unsqueeze(0) for b in actor_biases[:-1]],
                        activation="relu", activate_last=True)[0]
    else:
        h = obs32
    if w_head.shape[0] != h.shape[1]:
        raise ValueError(f"last actor layer expects {w_head.shape[0]} inputs, its input has {h.shape[1]}")

    # 2. actor last layer + tanh-Gaussian head                  -> action [B, A], log_prob [B]
    scale = _as_f32(action_scale).broadcast_to((action_dim,))                  # stride 0 if broadcast
    offset = _as_f32(action_offset).broadcast_to((action_dim,))
    action = torch.empty(batch, action_dim, device=device, dtype=torch.float32)
    log_prob = torch.empty(batch, device=device, dtype=torch.float32)
    block_a = 16 if INTERPRET else min(64, max(16, triton.next_power_of_2(action_dim)))  # tl.dot: >= 16
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)                  # noqa: E731
    _actor_head_kernel[grid](
        h, w_head, b_head, noise32, scale, offset, action, log_prob,
        batch, h.shape[1], action_dim,
        float(log_std_min), float(log_std_max),
        h.stride(0), h.stride(1),
        w_head.stride(0), w_head.stride(1), b_head.stride(0),
        noise32.stride(0), noise32.stride(1),
        scale.stride(0), offset.stride(0),
        action.stride(0), action.stride(1),
        log_prob.stride(0),
        DOT_PRECISION=DOT_PRECISION, BLOCK_A=block_a,
    )

    # 3. critic hidden layers but the last (ReLU, all members); the first reads [obs | action]
    layers = len(critic_weights)
    if layers >= 3:
        x = mlp_forward(obs32, action, None, None, critic_weights[:-2], critic_biases[:-2],
                        activation="relu", activate_last=True)                 # [N, B, H']
        x2, concat, k_split = x, False, x.shape[2]
        stride_xe, stride_xm, stride_xk = x.stride()
        in_width = x.shape[2]
    else:
        x, x2, concat, k_split = obs32, action, True, state_dim                # cat(s, a) fused into the load
        stride_xe, stride_xm, stride_xk = 0, obs32.stride(0), obs32.stride(1)
        in_width = state_dim + action_dim

    # 4. last critic hidden layer + output layer + min over members - alpha log pi   -> [B]
    hidden = layers >= 2
    w, b = _as_f32(critic_weights[-2 if hidden else -1]), _as_f32(critic_biases[-2 if hidden else -1])
    w_out, b_out = _as_f32(critic_weights[-1]), _as_f32(critic_biases[-1])      # [N, H', 1], [N, 1]
    n_dim = w.shape[2]
    if w.shape[:2] != (members, in_width) or b.shape != (members, n_dim):
        raise ValueError(f"critic layer {layers - 1 - hidden}: weight {tuple(w.shape)} / bias {tuple(b.shape)} "
                         f"do not fit input width {in_width} and {members} members")
    if hidden and (w_out.shape != (members, n_dim, 1) or b_out.shape != (members, 1)):
        raise ValueError(f"critic output layer: weight {tuple(w_out.shape)} / bias {tuple(b_out.shape)} "
                         f"do not fit {n_dim} inputs and {members} members")
    alpha32 = torch.as_tensor(alpha, dtype=torch.float32, device=device).detach().reshape(-1)  # no sync
    if alpha32.numel() != 1:
        raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha32.shape)}")
    out = torch.empty(batch, device=device, dtype=torch.float32)               # [B]
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]),)                  # noqa: E731
    _critic_min_value_kernel[grid](
        x, x2, w, b, w_out, b_out, log_prob, alpha32, out,
        batch, n_dim, in_width, k_split, members,
        stride_xe, stride_xm, stride_xk,
        x2.stride(0) if concat else 0, x2.stride(1) if concat else 0,
        w.stride(0), w.stride(1), w.stride(2), b.stride(0), b.stride(1),
        w_out.stride(0), w_out.stride(1), b_out.stride(0),
        log_prob.stride(0), out.stride(0),
        HIDDEN=hidden, CONCAT=concat, DOT_PRECISION=DOT_PRECISION,
    )
    return out.to(obs.dtype)
