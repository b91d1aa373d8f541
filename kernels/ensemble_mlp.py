"""Triton vectorized ensemble MLP with a fused backward, for training (SAC critics: E = 2, 23 -> 256
-> 256 -> 1, ReLU; dynamics ensemble: E = 7, 23 -> 200 x 4 -> 36, SiLU).
Specification: :func:`pyscorepen.ops.rollout_step.ensemble_mlp_ref` with autograd.

Notation: layer l maps h_{l-1} [E, B, in_l] to z_l = h_{l-1} @ W_l + b_l [E, B, out_l], h_l = act(z_l)
for every layer but the last (h_{-1} = x, shared by all members when 2-D); output z_{L-1}.

Forward (one launch per layer, grid (row blocks, column blocks, members)):

* hidden ReLU layers, the last layer, and every layer when no gradient is needed: the shared dense
  layer ``_fused_linear_kernel`` of :mod:`.score_penalty`. For ReLU the saved tensor is h_l itself:
  relu'(z) = [z > 0] = [h > 0] (what PyTorch's ``threshold_backward`` uses), so z is never kept.
* hidden SiLU layers when a gradient is needed: ``_linear_pre_act_kernel`` (the same ``_linear_tile``)
  writes z_l, which the backward keeps, and h_l = silu(z_l), which only the next layer reads.

Backward, from the last layer down (dz_{L-1} = grad_output, read through its strides, so the stride-0
gradient of ``out.sum()`` is never copied):

* ``_ensemble_grad_weight_kernel``: grad_W_l[e] = h_{l-1}[e]^T dz_l[e] as a ``tl.dot`` over the batch,
  grid (in-blocks, out-blocks, members), each program looping over all row blocks (deterministic, no
  atomics; h_{l-1} is read transposed through strides, and for SiLU recomputed as silu(z_{l-1}) in the
  load). grad_b_l[e] = sum_rows dz_l[e] is reduced from the same dz tiles and stored by the programs
  of in-block 0.
* ``_ensemble_grad_input_kernel``: dz_{l-1} = (dz_l[e] @ W_l[e]^T) * act'(z_{l-1}), W read transposed
  through strides, act' applied in the epilogue (ReLU: mask h_{l-1} > 0; SiLU: s (1 + z (1 - s)),
  s = sigmoid(z)), so dh_{l-1} is never written: the kernel emits dz_{l-1} directly, which is what
  both kernels of the layer below read. For l = 0 it gives grad_x; with a shared 2-D x the program
  loops over the members and writes sum_e dz_0[e] W_0[e]^T (deterministic, no atomics).

``ctx.needs_input_grad`` decides what runs: a layer's weight-gradient kernel only when its W or b
needs a gradient (and only the reduction that is needed), the input-gradient chain only as far down
as something below still needs a gradient. SAC's actor loss (frozen critics) thus runs only the
input-gradient chain. The backward is ``once_differentiable`` (no double backward).

Precision: fp32 (inputs are cast), ``tl.dot`` with ``input_precision="ieee"`` unless
``PYSCOREPEN_TRITON_TF32=1`` (see :mod:`.score_penalty`); the output comes back in x's dtype and each
gradient in its input's dtype. Block sizes are ``triton.autotune`` configs keyed on the dims (one small
config under ``TRITON_INTERPRET=1`` so tiny test shapes span several blocks). All kernels overwrite
their outputs, so autotuning's repeated launches are harmless.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .score_penalty import DOT_PRECISION, _fused_linear_kernel, _linear_tile, linear_configs

_ACTIVATIONS: dict[object, str] = {
    "relu": "relu", "silu": "silu",
    F.relu: "relu", torch.relu: "relu", F.silu: "silu",
}


@triton.jit
def _silu_grad(z):
    """d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)."""
    s = tl.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


@triton.autotune(configs=linear_configs(), key=["M", "N", "K"])
@triton.jit
def _linear_pre_act_kernel(
    x_ptr, w_ptr, b_ptr, z_ptr, h_ptr,
    M, N, K,
    stride_xe, stride_xm, stride_xk,
    stride_we, stride_wk, stride_wn, stride_be, stride_bn,
    stride_ze, stride_zm, stride_zn, stride_he, stride_hm, stride_hn,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """z[e] = x[e] @ W[e] + b[e] and h[e] = silu(z[e]); grid (cdiv(M, BM), cdiv(N, BN), E).

    x: [E, M, K] (stride_xe = 0 when shared); W: [E, K, N]; b: [E, N]; z, h: [E, M, N].
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    member = tl.program_id(2).to(tl.int64)
    x_e = x_ptr + member * stride_xe
    z = _linear_tile(
        x_e, x_e, x_e, x_e, w_ptr + member * stride_we, b_ptr + member * stride_be,
        M, N, K, K,
        stride_xm, stride_xk, 0, 0,
        stride_wk, stride_wn, stride_bn,
        pid_m * BLOCK_M, pid_n * BLOCK_N,
        False, False, "none", DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )                                                                          # [BM, BN]
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(z_ptr + member * stride_ze + offs_m[:, None] * stride_zm + offs_n[None, :] * stride_zn,
             z, mask=mask)
    tl.store(h_ptr + member * stride_he + offs_m[:, None] * stride_hm + offs_n[None, :] * stride_hn,
             z * tl.sigmoid(z), mask=mask)


@triton.jit
def _dz_wt_tile(
    acc, dz_ptr, w_ptr,                 # already offset to one member
    M, N, K,
    stride_dzm, stride_dzk, stride_wn, stride_wk,
    offs_m, offs_n, row_mask, col_mask,
    DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """acc += dz[offs_m, :] @ W[offs_n, :]^T, i.e. sum_k dz[m, k] W[n, k]; W is read transposed."""
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)                               # [BK]
        k_mask = offs_k < K
        dz = tl.load(dz_ptr + offs_m[:, None] * stride_dzm + offs_k[None, :] * stride_dzk,
                     mask=row_mask[:, None] & k_mask[None, :], other=0.0)     # [BM, BK]
        w_t = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                      mask=k_mask[:, None] & col_mask[None, :], other=0.0)    # [BK, BN]
        acc = tl.dot(dz, w_t, acc, input_precision=DOT_PRECISION)
    return acc


@triton.autotune(configs=linear_configs(), key=["M", "N", "K", "E", "SUM_MEMBERS", "ACTIVATION"])
@triton.jit
def _ensemble_grad_input_kernel(
    dz_ptr,           # [E, M, K] gradient w.r.t. this layer's pre-activation (K = out_l)
    w_ptr,            # [E, N, K] this layer's weight (N = in_l)
    a_ptr,            # [E, M, N] saved tensor of the layer below (ReLU: h, SiLU: z; unused for "none")
    g_ptr,            # [E, M, N] out (or [M, N] with SUM_MEMBERS)
    M, N, K, E,
    stride_dze, stride_dzm, stride_dzk,
    stride_we, stride_wn, stride_wk,
    stride_ae, stride_am, stride_an,
    stride_ge, stride_gm, stride_gn,
    ACTIVATION: tl.constexpr, SUM_MEMBERS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """g[e] = (dz[e] @ W[e]^T) * act'(below[e]); grid (cdiv(M, BM), cdiv(N, BN), E or 1).

    ``ACTIVATION``: ``"relu"`` (a = h of the layer below, mask a > 0), ``"silu"`` (a = z of the layer
    below) or ``"none"`` (the input gradient). ``SUM_MEMBERS``: g = sum_e dz[e] @ W[e]^T (a shared
    2-D input; grid axis 2 is 1, the program loops over the members).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                           # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                           # [BN]
    row_mask = offs_m < M
    col_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)                       # [BM, BN]
    if SUM_MEMBERS:
        member = tl.program_id(2).to(tl.int64) * 0                             # 64-bit member offsets
        for _e in range(E):
            acc = _dz_wt_tile(acc, dz_ptr + member * stride_dze, w_ptr + member * stride_we,
                              M, N, K, stride_dzm, stride_dzk, stride_wn, stride_wk,
                              offs_m, offs_n, row_mask, col_mask, DOT_PRECISION, BLOCK_K)
            member += 1
    else:
        member = tl.program_id(2).to(tl.int64)
        acc = _dz_wt_tile(acc, dz_ptr + member * stride_dze, w_ptr + member * stride_we,
                          M, N, K, stride_dzm, stride_dzk, stride_wn, stride_wk,
                          offs_m, offs_n, row_mask, col_mask, DOT_PRECISION, BLOCK_K)
    mask = row_mask[:, None] & col_mask[None, :]
    if ACTIVATION != "none":
        a = tl.load(a_ptr + member * stride_ae + offs_m[:, None] * stride_am + offs_n[None, :] * stride_an,
                    mask=mask, other=0.0)                                      # [BM, BN]
        if ACTIVATION == "relu":
            acc = tl.where(a > 0.0, acc, 0.0)
        else:
            acc = acc * _silu_grad(a)
    # SUM_MEMBERS: g is [M, N] and stride_ge = 0
    tl.store(g_ptr + member * stride_ge + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn, acc, mask=mask)


@triton.autotune(configs=linear_configs(),
                 key=["M", "N", "K", "INPUT_ACTIVATION", "COMPUTE_W", "COMPUTE_B"])
@triton.jit
def _ensemble_grad_weight_kernel(
    h_ptr,            # [E, K, M] layer input (stride_he = 0 when shared; SiLU: z of the layer below)
    dz_ptr,           # [E, K, N] gradient w.r.t. the layer's pre-activation
    gw_ptr,           # [E, M, N] out: grad_W
    gb_ptr,           # [E, N]    out: grad_b
    M, N, K,          # M = in_l, N = out_l, K = batch rows (the reduction)
    stride_he, stride_hk, stride_hm,
    stride_dze, stride_dzk, stride_dzn,
    stride_gwe, stride_gwm, stride_gwn,
    stride_gbe, stride_gbn,
    INPUT_ACTIVATION: tl.constexpr, COMPUTE_W: tl.constexpr, COMPUTE_B: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_W[e] = h[e]^T @ dz[e], grad_b[e] = sum_rows dz[e]; grid (cdiv(M, BM) or 1, cdiv(N, BN), E).

    Each program loops over all row blocks (no atomics, deterministic). ``INPUT_ACTIVATION="silu"``:
    h = silu(saved z), recomputed in the load. grad_b is stored by the programs with in-block 0.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    member = tl.program_id(2).to(tl.int64)
    h_e = h_ptr + member * stride_he
    dz_e = dz_ptr + member * stride_dze
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                           # [BM] input features
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                           # [BN] output features
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)                       # [BM, BN]
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)                          # [BN]
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)                               # [BK] batch rows
        k_mask = offs_k < K
        dz = tl.load(dz_e + offs_k[:, None] * stride_dzk + offs_n[None, :] * stride_dzn,
                     mask=k_mask[:, None] & n_mask[None, :], other=0.0)       # [BK, BN]
        if COMPUTE_W:
            h_t = tl.load(h_e + offs_m[:, None] * stride_hm + offs_k[None, :] * stride_hk,
                          mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # [BM, BK] = h^T tile
            if INPUT_ACTIVATION == "silu":
                h_t = h_t * tl.sigmoid(h_t)                                    # silu(0) = 0 in padding
            acc = tl.dot(h_t, dz, acc, input_precision=DOT_PRECISION)
        if COMPUTE_B:
            bias_acc += tl.sum(dz, axis=0)
    if COMPUTE_W:
        tl.store(gw_ptr + member * stride_gwe + offs_m[:, None] * stride_gwm + offs_n[None, :] * stride_gwn,
                 acc, mask=m_mask[:, None] & n_mask[None, :])
    if COMPUTE_B:
        if pid_m == 0:                                                         # one writer per column block
            tl.store(gb_ptr + member * stride_gbe + offs_n * stride_gbn, bias_acc, mask=n_mask)


def _as_f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _member_strides(t: Tensor) -> tuple[int, int, int]:
    """(member, row, feature) strides of a [B, F] (shared: member stride 0) or [E, B, F] tensor."""
    return (0, *t.stride()) if t.dim() == 2 else tuple(t.stride())


def _forward(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str,
             save: bool) -> tuple[Tensor, list[Tensor]]:
    """fp32 forward. Returns the output [E, B, out] and, when ``save``, for every hidden layer the
    tensor the backward needs (ReLU: h_l, SiLU: z_l), [E, B, out_l] each."""
    members, batch = weights[0].shape[0], x.shape[-2]
    last = len(weights) - 1
    saved: list[Tensor] = []
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases)):
        k_dim, n_dim = w.shape[1], w.shape[2]
        stride_he, stride_hm, stride_hk = _member_strides(h)
        grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]), triton.cdiv(n_dim, meta["BLOCK_N"]),  # noqa: E731
                             members)
        y = torch.empty(members, batch, n_dim, device=x.device, dtype=torch.float32)  # [E, B, N]
        if save and layer != last and activation == "silu":
            z = torch.empty_like(y)                                            # kept for the backward
            _linear_pre_act_kernel[grid](
                h, w, b, z, y,
                batch, n_dim, k_dim,
                stride_he, stride_hm, stride_hk,
                w.stride(0), w.stride(1), w.stride(2), b.stride(0), b.stride(1),
                z.stride(0), z.stride(1), z.stride(2), y.stride(0), y.stride(1), y.stride(2),
                DOT_PRECISION=DOT_PRECISION,
            )
            saved.append(z)
        else:
            _fused_linear_kernel[grid](
                h, h, h, h, w, b, y,                                           # no concat / normalization
                batch, n_dim, k_dim, k_dim,
                stride_he, stride_hm, stride_hk, 0, 0,
                w.stride(0), w.stride(1), w.stride(2), b.stride(0), b.stride(1),
                y.stride(0), y.stride(1), y.stride(2),
                NORMALIZE=False, CONCAT=False,
                ACTIVATION=activation if layer != last else "none",
                DOT_PRECISION=DOT_PRECISION,
            )
            if save and layer != last:
                saved.append(y)                                                # ReLU: h_l (mask h > 0)
        h = y
    return h, saved


def _backward(grad_out: Tensor, x: Tensor, weights: list[Tensor], saved: list[Tensor], activation: str,
              need_x: bool, need_w: list[bool], need_b: list[bool]
              ) -> tuple[Tensor | None, list[Tensor | None], list[Tensor | None]]:
    """fp32 gradients w.r.t. x, the weights and the biases (None where not needed)."""
    members, batch = weights[0].shape[0], x.shape[-2]
    layers = len(weights)
    grad_w: list[Tensor | None] = [None] * layers
    grad_b: list[Tensor | None] = [None] * layers
    grad_x: Tensor | None = None
    device = x.device
    dz = grad_out                                                              # [E, B, out_{L-1}]
    for layer in range(layers - 1, -1, -1):
        w = weights[layer]                                                     # [E, in, out]
        in_dim, out_dim = w.shape[1], w.shape[2]
        h = x if layer == 0 else saved[layer - 1]                              # layer input (SiLU: its z)
        input_activation = "silu" if layer > 0 and activation == "silu" else "none"
        if need_w[layer] or need_b[layer]:
            gw = torch.empty(members, in_dim, out_dim, device=device, dtype=torch.float32) if need_w[layer] else dz
            gb = torch.empty(members, out_dim, device=device, dtype=torch.float32) if need_b[layer] else dz
            stride_he, stride_hk, stride_hm = _member_strides(h)
            in_blocks_needed = need_w[layer]
            grid = lambda meta: (triton.cdiv(in_dim, meta["BLOCK_M"]) if in_blocks_needed else 1,  # noqa: E731
                                 triton.cdiv(out_dim, meta["BLOCK_N"]), members)
            _ensemble_grad_weight_kernel[grid](
                h, dz, gw, gb,
                in_dim, out_dim, batch,
                stride_he, stride_hk, stride_hm,
                dz.stride(0), dz.stride(1), dz.stride(2),
                gw.stride(0), gw.stride(1), gw.stride(2),
                gb.stride(0), gb.stride(1),
                INPUT_ACTIVATION=input_activation, COMPUTE_W=bool(need_w[layer]), COMPUTE_B=bool(need_b[layer]),
                DOT_PRECISION=DOT_PRECISION,
            )
            grad_w[layer] = gw if need_w[layer] else None
            grad_b[layer] = gb if need_b[layer] else None
        if layer > 0:
            if not (need_x or any(need_w[:layer]) or any(need_b[:layer])):
                break                                                          # nothing below needs a gradient
            below = saved[layer - 1]                                           # ReLU: h, SiLU: z  [E, B, in]
            out = torch.empty(members, batch, in_dim, device=device, dtype=torch.float32)
            epilogue, sum_members, grid_e = activation, False, members
        elif need_x:
            below = dz                                                         # unused (no epilogue)
            sum_members = x.dim() == 2
            shape = (batch, in_dim) if sum_members else (members, batch, in_dim)
            out = torch.empty(*shape, device=device, dtype=torch.float32)
            epilogue, grid_e = "none", 1 if sum_members else members
        else:
            break
        stride_ge, stride_gm, stride_gn = _member_strides(out)
        grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]), triton.cdiv(in_dim, meta["BLOCK_N"]),  # noqa: E731
                             grid_e)
        _ensemble_grad_input_kernel[grid](
            dz, w, below, out,
            batch, in_dim, out_dim, members,
            dz.stride(0), dz.stride(1), dz.stride(2),
            w.stride(0), w.stride(1), w.stride(2),
            below.stride(0), below.stride(1), below.stride(2),
            stride_ge, stride_gm, stride_gn,
            ACTIVATION=epilogue, SUM_MEMBERS=sum_members,
            DOT_PRECISION=DOT_PRECISION,
        )
        if layer == 0:
            grad_x = out
        dz = out
    return grad_x, grad_w, grad_b


class _EnsembleMLPFunction(torch.autograd.Function):
    """Autograd wrapper; ``params`` = (*weights, *biases)."""

    @staticmethod
    def forward(ctx, x: Tensor, activation: str, *params: Tensor) -> Tensor:
        layers = len(params) // 2
        weights, biases = params[:layers], params[layers:]
        x32 = _as_f32(x)
        w32 = [_as_f32(w) for w in weights]
        out, saved = _forward(x32, w32, [_as_f32(b) for b in biases], activation, save=True)
        ctx.activation = activation
        ctx.layers = layers
        ctx.dtypes = (x.dtype, [w.dtype for w in weights], [b.dtype for b in biases])
        ctx.save_for_backward(x32, *w32, *saved)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        layers = ctx.layers
        x32, *rest = ctx.saved_tensors
        weights, saved = rest[:layers], rest[layers:]
        needs = ctx.needs_input_grad
        need_x, need_w, need_b = needs[0], list(needs[2:2 + layers]), list(needs[2 + layers:])
        x_dtype, w_dtypes, b_dtypes = ctx.dtypes
        grad_x, grad_w, grad_b = _backward(_as_f32(grad_out), x32, list(weights), list(saved), ctx.activation,
                                           need_x, need_w, need_b)
        grad_x = grad_x.to(x_dtype) if grad_x is not None else None
        grad_w = [g.to(d) if g is not None else None for g, d in zip(grad_w, w_dtypes)]
        grad_b = [g.to(d) if g is not None else None for g, d in zip(grad_b, b_dtypes)]
        return (grad_x, None, *grad_w, *grad_b)


def _check(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> None:
    if not weights or len(weights) != len(biases):
        raise ValueError(f"need matching non-empty weights/biases, got {len(weights)} and {len(biases)}")
    if weights[0].dim() != 3:
        raise ValueError(f"weights must be [E, in, out], got {tuple(weights[0].shape)}")
    members = weights[0].shape[0]
    if x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[0] != members):
        raise ValueError(f"x must be [B, in] or [E={members}, B, in], got {tuple(x.shape)}")
    width = x.shape[-1]
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 3 or w.shape[:2] != (members, width) or b.shape != (members, w.shape[-1]):
            raise ValueError(f"layer {layer}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not fit "
                             f"input width {width} and {members} members")
        width = w.shape[-1]


def ensemble_mlp_triton(x: Tensor, weights: list[Tensor], biases: list[Tensor],
                        activation: str | Callable = "silu") -> Tensor:
    """Vectorized ensemble MLP as Triton kernels, differentiable w.r.t. x, weights and biases.

    Same contract as :func:`pyscorepen.ops.rollout_step.ensemble_mlp_ref`: x [B, in] (shared by all
    members) or [E, B, in]; weights[l] [E, in_l, out_l]; biases[l] [E, out_l]; ``activation``
    (``"relu"`` or ``"silu"``; ``F.relu`` / ``F.silu`` are accepted too) after every layer but the
    last. Returns [E, B, out_L] in x's dtype (computed in fp32).
    """
    act = _ACTIVATIONS.get(activation) if isinstance(activation, str) or callable(activation) else None
    if act is None:
        raise ValueError(f"activation must be 'relu' or 'silu', got {activation!r}")
    _check(x, weights, biases)
    params = (*weights, *biases)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))):
        if x.shape[-2] == 0:
            return x.new_zeros(weights[0].shape[0], 0, weights[-1].shape[-1])
        out, _ = _forward(_as_f32(x), [_as_f32(w) for w in weights], [_as_f32(b) for b in biases], act,
                          save=False)
        return out.to(x.dtype)
    if x.shape[-2] == 0:
        # keep the graph (zero gradients) without launching empty grids
        out = x.new_zeros(weights[0].shape[0], 0, weights[-1].shape[-1])
        return out + 0.0 * sum(p.sum() for p in params) + 0.0 * x.sum()
    return _EnsembleMLPFunction.apply(x, act, *params)
