"""Triton rollout step of a probabilistic-ensemble dynamics model (MOPO / ScorePen-MORL).

Launch sequence of :func:`rollout_step_triton` (L ensemble layers, L' score layers):

1. L x ``_fused_linear_kernel`` (from :mod:`.score_penalty`), batched over the E members; the first
   layer loads ``[obs | actions]`` and normalizes it in registers.          -> [E, B, 2(S+1)]
2. ``_rollout_head_kernel``: per block of rows, loop over members: soft-bound logvar, sigma, ||sigma||_2,
   running max (MOPO penalty) and a select of the row's member -> next_obs, reward.
3. L' score layers (E = 1), the last one reducing ||h(x)||^2 in its epilogue (ScorePen Eq. 20); the
   score net reads the same fused-normalized ``[obs | actions]``.              -> [B]

Precision and tolerances: see :mod:`.score_penalty` (fp32, ieee ``tl.dot``; tests use rtol = atol = 1e-4).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut

from .score_penalty import INTERPRET, mlp_forward, score_mlp_penalty


def head_configs() -> list[triton.Config]:
    """Autotune search space for the head kernel (one config under the interpreter)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_B": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_B": bb}, num_warps=warps)
            for bb, warps in [(32, 2), (64, 4), (128, 4), (128, 8)]]


@triton.jit
def _softplus(x):
    # log(1 + e^x), stable for large |x|
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.autotune(configs=head_configs(), key=["B", "E", "S"])
@triton.jit
def _rollout_head_kernel(
    out_ptr,          # [E, B, 2D] ensemble output: mean = [..., :D], logvar = [..., D:]
    obs_ptr,          # [B, S]
    noise_ptr,        # [B, D]
    member_ptr,       # [B] int
    max_logvar_ptr,   # [D]
    min_logvar_ptr,   # [D]
    next_obs_ptr,     # [B, S]  out
    rewards_ptr,      # [B]     out
    penalty_ptr,      # [B]     out
    B, E, S,
    stride_oe, stride_ob, stride_od,
    stride_obs_b, stride_obs_d,
    stride_noise_b, stride_noise_d,
    stride_member,
    stride_max_lv, stride_min_lv,
    stride_next_b, stride_next_d,
    stride_rewards, stride_penalty,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gaussian head of one rollout step for BLOCK_B rows; grid (cdiv(B, BLOCK_B),). D = S + 1."""
    D = S + 1
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)                             # [BB]
    offs_d = tl.arange(0, BLOCK_D)                                             # [BD]
    row_mask = offs_b < B
    d_mask = offs_d < D
    mask = row_mask[:, None] & d_mask[None, :]                                 # [BB, BD]

    max_logvar = tl.load(max_logvar_ptr + offs_d * stride_max_lv, mask=d_mask, other=0.0)[None, :]
    min_logvar = tl.load(min_logvar_ptr + offs_d * stride_min_lv, mask=d_mask, other=0.0)[None, :]
    member = tl.load(member_ptr + offs_b * stride_member, mask=row_mask, other=-1)   # [BB]

    penalty = tl.zeros((BLOCK_B,), dtype=tl.float32)                           # max_i ||sigma_i||, >= 0
    chosen_mean = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)               # mu_{e_b}
    chosen_std = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)                # sigma_{e_b}
    base = out_ptr + offs_b[:, None] * stride_ob                               # [BB, 1] member 0
    for e in range(E):
        mean = tl.load(base + offs_d[None, :] * stride_od, mask=mask, other=0.0)          # [BB, BD]
        logvar = tl.load(base + (offs_d + D)[None, :] * stride_od, mask=mask, other=0.0)  # [BB, BD]
        logvar = max_logvar - _softplus(max_logvar - logvar)                   # soft upper bound
        logvar = min_logvar + _softplus(logvar - min_logvar)                   # soft lower bound
        std = tl.where(mask, tl.exp(0.5 * logvar), 0.0)                        # [BB, BD]
        norm = tl.sqrt(tl.sum(std * std, axis=1))                              # [BB]
        penalty = tl.maximum(penalty, norm, propagate_nan=tl.PropagateNan.ALL)
        chosen = (member == e)[:, None]                                        # [BB, 1]
        chosen_mean = tl.where(chosen, mean, chosen_mean)
        chosen_std = tl.where(chosen, std, chosen_std)
        base += stride_oe                                                      # next member (64-bit ptr)

    noise = tl.load(noise_ptr + offs_b[:, None] * stride_noise_b + offs_d[None, :] * stride_noise_d,
                    mask=mask, other=0.0)                                      # [BB, BD]
    sample = chosen_mean + chosen_std * noise                                  # [BB, BD] (delta_s, r)
    state_mask = row_mask[:, None] & (offs_d < S)[None, :]
    obs = tl.load(obs_ptr + offs_b[:, None] * stride_obs_b + offs_d[None, :] * stride_obs_d,
                  mask=state_mask, other=0.0)                                  # [BB, BD]
    tl.store(next_obs_ptr + offs_b[:, None] * stride_next_b + offs_d[None, :] * stride_next_d,
             obs + sample, mask=state_mask)
    reward = tl.sum(tl.where((offs_d == S)[None, :], sample, 0.0), axis=1)    # [BB] = sample[:, S]
    tl.store(rewards_ptr + offs_b * stride_rewards, reward, mask=row_mask)
    tl.store(penalty_ptr + offs_b * stride_penalty, penalty, mask=row_mask)


def _as_f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def rollout_step_triton(
    obs: Tensor,                  # [B, S] raw observations
    actions: Tensor,              # [B, A] raw actions
    input_mean: Tensor,           # [S + A]
    input_std: Tensor,            # [S + A]
    weights: list[Tensor],        # [E, in_l, out_l]; last out = 2 * (S + 1)
    biases: list[Tensor],         # [E, out_l]
    max_logvar: Tensor,           # [S + 1]
    min_logvar: Tensor,           # [S + 1]
    member_index: Tensor,         # [B] int, ensemble member used by each sample, in [0, E)
    noise: Tensor,                # [B, S + 1] standard normal (zeros: mean prediction)
    score_weights: list[Tensor],  # [in_l, out_l]; first in = S + A, last out = S + A
    score_biases: list[Tensor],   # [out_l]  (empty lists: no score penalty)
) -> RolloutStepOut:
    """One model-rollout step with the MOPO and ScorePen penalties, as fused Triton kernels.

    Same contract as :func:`pyscorepen.ops.rollout_step.rollout_step_ref`:

    * every member i predicts N(mu_i, sigma_i^2) of (delta_s, r) from x = ([s | a] - mean) / std, with
      the log-variance soft-bounded into [min_logvar, max_logvar];
    * row b samples y_b = mu_{e_b} + sigma_{e_b} * noise_b; s' = s + y_b[:S], r = y_b[S];
    * MOPO penalty (Yu et al. 2020, Algorithm 2): u(s, a) = max_i ||sigma_i(s, a)||_2 over all members;
    * score penalty (ScorePen-MORL Eq. 20): ||h_xi(x)||^2 of the frozen score MLP on the same x
      (zeros when ``score_weights`` is empty).

    All math is fp32 (inputs are cast); outputs come back in ``obs.dtype``. ``member_index`` is not
    range-checked (that would need a device sync): an index outside [0, E) selects nothing and gives
    next_obs = obs, reward = 0 for that row, where the reference raises an IndexError.
    """
    batch, state_dim = obs.shape
    out_dim = state_dim + 1
    if actions.shape[0] != batch or noise.shape != (batch, out_dim) or member_index.shape != (batch,):
        raise ValueError(f"batch shapes disagree: obs {tuple(obs.shape)}, actions {tuple(actions.shape)}, "
                         f"noise {tuple(noise.shape)}, member_index {tuple(member_index.shape)}")
    if not weights or weights[-1].shape[-1] != 2 * out_dim:
        raise ValueError(f"last ensemble layer must output 2 * (S + 1) = {2 * out_dim} features")
    members = weights[0].shape[0]
    if batch == 0:
        empty = obs.new_zeros(0)
        return RolloutStepOut(obs.clone(), empty, empty.clone(), empty.clone())

    out = mlp_forward(obs, actions, input_mean, input_std, weights, biases)     # [E, B, 2(S+1)]

    obs32, noise32 = _as_f32(obs), _as_f32(noise)
    max_logvar, min_logvar = _as_f32(max_logvar), _as_f32(min_logvar)
    next_obs = torch.empty(batch, state_dim, device=obs.device, dtype=torch.float32)   # [B, S]
    rewards = torch.empty(batch, device=obs.device, dtype=torch.float32)               # [B]
    mopo_penalty = torch.empty(batch, device=obs.device, dtype=torch.float32)          # [B]
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)                         # noqa: E731
    _rollout_head_kernel[grid](
        out, obs32, noise32, member_index, max_logvar, min_logvar,
        next_obs, rewards, mopo_penalty,
        batch, members, state_dim,
        out.stride(0), out.stride(1), out.stride(2),
        obs32.stride(0), obs32.stride(1),
        noise32.stride(0), noise32.stride(1),
        member_index.stride(0),
        max_logvar.stride(0), min_logvar.stride(0),
        next_obs.stride(0), next_obs.stride(1),
        rewards.stride(0), mopo_penalty.stride(0),
        BLOCK_D=triton.next_power_of_2(out_dim),
    )

    if score_weights:
        score_penalty = score_mlp_penalty(obs, actions, input_mean, input_std,
                                          score_weights, score_biases)          # [B]
    else:
        score_penalty = torch.zeros_like(rewards)
    dtype = obs.dtype
    return RolloutStepOut(next_obs.to(dtype), rewards.to(dtype), mopo_penalty.to(dtype),
                          score_penalty.to(dtype))
