"""Triton dynamics-fit step: :func:`pyscorepen.ops.dynamics_fit_step.dynamics_fit_step_ref` (the
Gaussian NLL with learned log-variance bounds, its gradient, Adam with per-layer L2, in place) as
Triton kernels, with no autograd graph.

Launch sequence of :func:`dynamics_fit_step_triton`:

1. :mod:`.ensemble_mlp`'s ``_forward`` (SiLU, saving the pre-activations);
2. ``_gaussian_nll_kernel``: dL/d(mean | raw log-variance) of every (member, row), and per row block
   the sums of the NLL terms and of dL/dmax_logvar, dL/dmin_logvar (added over the blocks by torch,
   in block order: deterministic, no atomics);
3. ``_backward`` (weight and bias gradients);
4. :mod:`.sac_update`'s ``_adam_kernel``: one launch per weight (its L2 decay), then the biases and
   the bounds, as ``EnsembleDynamics.make_optimizer`` groups them.

Precision: fp32, ``tl.dot`` as in :mod:`.score_penalty`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ensemble_mlp import _backward, _forward
from .rollout_step import _softplus
from .sac_update import _adam


@triton.jit
def _gaussian_nll_kernel(
    out_ptr,        # [R, 2O] mean | raw log-variance (R = E * B rows)
    target_ptr,     # [R, O]
    max_ptr,        # [O]
    min_ptr,        # [O]
    grad_ptr,       # [R, 2O] out: dL/d(mean | raw)
    terms_ptr,      # [n_blocks] out: sum of (mean - y)^2 exp(-lv) + lv over the block
    dmax_ptr,       # [n_blocks, O] out
    dmin_ptr,       # [n_blocks, O] out
    R, O, scale,
    BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """lv = min + softplus(max - softplus(max - raw) - min); per element (scale = 1 / (B O)):
    dmean = scale 2 (mean - y) exp(-lv), g_lv = scale (1 - (mean - y)^2 exp(-lv)),
    draw = g_lv sigmoid(v) sigmoid(u), dmax = g_lv sigmoid(v) (1 - sigmoid(u)), dmin = g_lv (1 - sigmoid(v))
    with u = max - raw, v = max - softplus(u) - min. Grid (cdiv(R, BLOCK_R),)."""
    block = tl.program_id(0)
    rows = block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_O)
    row_ok, col_ok = rows < R, cols < O
    mask = row_ok[:, None] & col_ok[None, :]
    hi = tl.load(max_ptr + cols, mask=col_ok, other=0.0)[None, :]
    lo = tl.load(min_ptr + cols, mask=col_ok, other=0.0)[None, :]
    out_row = out_ptr + rows[:, None] * (2 * O) + cols[None, :]
    mean = tl.load(out_row, mask=mask, other=0.0)
    raw = tl.load(out_row + O, mask=mask, other=0.0)
    target = tl.load(target_ptr + rows[:, None] * O + cols[None, :], mask=mask, other=0.0)
    u = hi - raw
    v = hi - _softplus(u) - lo
    lv = lo + _softplus(v)
    inv_var = tl.exp(-lv)
    diff = mean - target
    q = diff * diff * inv_var
    g_lv = scale * (1.0 - q)
    g_l1 = g_lv * tl.sigmoid(v)
    s_u = tl.sigmoid(u)
    grad_row = grad_ptr + rows[:, None] * (2 * O) + cols[None, :]
    tl.store(grad_row, 2.0 * scale * diff * inv_var, mask=mask)
    tl.store(grad_row + O, g_l1 * s_u, mask=mask)
    tl.store(terms_ptr + block, tl.sum(tl.sum(tl.where(mask, q + lv, 0.0), axis=1), axis=0))
    tl.store(dmax_ptr + block * O + cols, tl.sum(tl.where(mask, g_l1 * (1.0 - s_u), 0.0), axis=0), mask=col_ok)
    tl.store(dmin_ptr + block * O + cols, tl.sum(tl.where(mask, g_lv - g_l1, 0.0), axis=0), mask=col_ok)


@torch.no_grad()
def dynamics_fit_step_triton(
    x: Tensor, target: Tensor, weights: list[Tensor], biases: list[Tensor], max_logvar: Tensor, min_logvar: Tensor,
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor], weight_decays: list[float],
    lr: float, beta1: float, beta2: float, eps: float, logvar_bound_coef: float,
) -> Tensor:
    """:func:`pyscorepen.ops.dynamics_fit_step.dynamics_fit_step_ref`'s step (same arguments; updates the
    parameters and Adam states in place, returns the loss before the step)."""
    L = len(weights)
    members, batch = x.shape[0], x.shape[1]
    outputs = target.shape[-1]
    if x.dim() != 3 or weights[-1].shape[2] != 2 * outputs or target.shape[:2] != x.shape[:2]:
        raise ValueError(f"dynamics_fit_step_triton: x must be [E, B, in] and target [E, B, O] with a last layer of "
                         f"2O outputs, got {tuple(x.shape)}, {tuple(target.shape)}, {tuple(weights[-1].shape)}")
    if len(weight_decays) != L or len(exp_avgs) != 2 * L + 2:
        raise ValueError("dynamics_fit_step_triton: one weight decay per layer and Adam states for 2L + 2 tensors")
    x, target = x.contiguous(), target.contiguous()
    out, saved = _forward(x, weights, biases, "silu", save=True)                      # [E, B, 2O]
    rows = members * batch
    block_r, block_o = 32, triton.next_power_of_2(outputs)
    blocks = triton.cdiv(rows, block_r)
    grad_out = torch.empty_like(out)                                                  # [E, B, 2O]
    terms = torch.empty(blocks, device=x.device, dtype=torch.float32)
    dmax = torch.empty(blocks, outputs, device=x.device, dtype=torch.float32)
    dmin = torch.empty_like(dmax)
    scale = 1.0 / (batch * outputs)
    _gaussian_nll_kernel[(blocks,)](out.contiguous(), target, max_logvar, min_logvar, grad_out, terms, dmax, dmin,
                                    rows, outputs, scale, BLOCK_R=block_r, BLOCK_O=block_o)
    loss = terms.sum() * scale + logvar_bound_coef * (max_logvar.sum() - min_logvar.sum())
    grad_max, grad_min = dmax.sum(0) + logvar_bound_coef, dmin.sum(0) - logvar_bound_coef
    _, grad_w, grad_b = _backward(grad_out, x, weights, saved, "silu", False, [True] * L, [True] * L)
    adam = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    for i, decay in enumerate(weight_decays):
        _adam([weights[i]], [grad_w[i]], exp_avgs[i:i + 1], exp_avg_sqs[i:i + 1], steps[i:i + 1],
              weight_decay=decay, **adam)
    _adam([*biases, max_logvar, min_logvar], [*grad_b, grad_max, grad_min], exp_avgs[L:], exp_avg_sqs[L:], steps[L:],
          weight_decay=0.0, **adam)
    return loss
