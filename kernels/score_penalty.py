"""Triton score penalty ||h_xi(x)||^2 (ScorePen-MORL Eq. 20), plus the fused dense layer shared with
:mod:`.rollout_step`. Specification: :func:`pyscorepen.ops.score_penalty.score_penalty_ref`.

Kernels in this module:

* ``_fused_linear_kernel``: ``y[e] = act(norm(x[e]) @ W[e] + b[e])`` for every ensemble member e.
  Program grid ``(row-block, col-block, member)``; fp32 ``tl.dot`` accumulation with masks for sizes
  that are not block multiples; bias + activation in the epilogue (``ACTIVATION``: ``"silu"`` for the
  dynamics / score MLPs, ``"relu"`` for the actor / critics of :mod:`.soft_value`, ``"none"``). For
  the first layer the input normalization ``(x - mean) / std`` and the concatenation
  ``x = [obs | actions]`` are fused into the load, so the normalized input is never written to memory.
  A plain MLP is the E = 1 case.
* ``_linear_square_sum_kernel``: the last score-MLP layer. Each program owns a block of rows, walks
  over all output-column blocks and reduces ``sum_n y[m, n]^2`` in registers, so only ``[B]`` is
  written (no ``[B, D]`` score tensor, no atomics, deterministic).

Precision: inputs are cast to fp32 and ``tl.dot`` runs with ``input_precision="ieee"`` (no TF32), so
results match the fp32 PyTorch reference up to summation order: rtol = atol = 1e-4 is what the tests
ask for (observed error is ~1e-6 under the interpreter). ``PYSCOREPEN_TRITON_TF32=1`` opts into TF32
on GPU (faster, ~1e-3 relative error).

Block sizes are ``triton.autotune`` configs keyed on the layer dims. Under ``TRITON_INTERPRET=1``
(CPU correctness runs) a single small config is used so nothing is benchmarked; it is small on
purpose so that tiny test shapes still span several row / column / K blocks and exercise the masks.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


def _interpret_mode() -> bool:
    """Triton's own decision (read when a ``@triton.jit`` decorator runs) on whether to interpret."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRET: bool = _interpret_mode()
"""True when this module's kernels were built as interpreted (CPU) functions at import time."""


def interpreter_consistent() -> bool:
    """Whether Triton's own ``tl`` library was built in the same mode as these kernels.

    Triton reads ``TRITON_INTERPRET`` when each ``@triton.jit`` decorator runs, its standard library
    (``tl.sum``, ``tl.sigmoid``, ...) included. If the variable was set after ``triton`` was imported,
    interpreted kernels would call compiled library functions and fail; only a fresh process helps.
    """
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.sum, InterpretedFunction) == INTERPRET

DOT_PRECISION: str = "tf32" if os.environ.get("PYSCOREPEN_TRITON_TF32", "0") == "1" else "ieee"


def linear_configs() -> list[triton.Config]:
    """Autotune search space for the dense layers (one small config under the interpreter)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in [
            (32, 32, 32, 4, 3),
            (64, 32, 32, 4, 3),
            (64, 64, 32, 4, 3),
            (128, 64, 32, 4, 3),
            (128, 64, 32, 8, 4),
            (64, 128, 32, 4, 3),
            (128, 128, 32, 8, 3),
            (64, 64, 64, 4, 3),
        ]
    ]


@triton.jit
def _linear_tile(
    x_ptr, x2_ptr, mean_ptr, std_ptr, w_ptr, b_ptr,   # already offset to the program's member
    M, N, K, K_SPLIT,
    stride_xm, stride_xk, stride_x2m, stride_x2k,
    stride_wk, stride_wn, stride_bn,
    row_start, col_start,
    NORMALIZE: tl.constexpr, CONCAT: tl.constexpr, ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of act(norm(x) @ W + b), fp32. Padded columns come out as 0.

    ``ACTIVATION`` (constexpr, so each choice compiles to its own specialization): ``"silu"``,
    ``"relu"`` or ``"none"``.
    """
    offs_m = row_start + tl.arange(0, BLOCK_M)                     # [BM]
    offs_n = col_start + tl.arange(0, BLOCK_N)                     # [BN]
    row_mask = offs_m < M
    col_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)           # [BM, BN]
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)                   # [BK]
        k_mask = offs_k < K
        if CONCAT:
            # x = [x1 | x2]: columns k < K_SPLIT come from x1, the rest from x2 (torch.cat fused away)
            from_x1 = offs_k < K_SPLIT
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                        mask=row_mask[:, None] & (k_mask & from_x1)[None, :], other=0.0)
            x += tl.load(x2_ptr + offs_m[:, None] * stride_x2m + (offs_k - K_SPLIT)[None, :] * stride_x2k,
                         mask=row_mask[:, None] & (k_mask & ~from_x1)[None, :], other=0.0)
        else:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)   # [BM, BK]
        if NORMALIZE:
            mean = tl.load(mean_ptr + offs_k, mask=k_mask, other=0.0)          # [BK]
            std = tl.load(std_ptr + offs_k, mask=k_mask, other=1.0)            # [BK]
            x = (x - mean[None, :]) / std[None, :]
        w = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)       # [BK, BN]
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)                 # padded k: w = 0
    bias = tl.load(b_ptr + offs_n * stride_bn, mask=col_mask, other=0.0)       # [BN]
    acc += bias[None, :]
    if ACTIVATION == "silu":
        acc = acc * tl.sigmoid(acc)                                            # SiLU / Swish
    elif ACTIVATION == "relu":
        acc = tl.maximum(acc, 0.0)
    return tl.where(col_mask[None, :], acc, 0.0)


@triton.autotune(configs=linear_configs(), key=["M", "N", "K", "CONCAT", "NORMALIZE"])
@triton.jit
def _fused_linear_kernel(
    x_ptr, x2_ptr, mean_ptr, std_ptr, w_ptr, b_ptr, y_ptr,
    M, N, K, K_SPLIT,
    stride_xe, stride_xm, stride_xk, stride_x2m, stride_x2k,
    stride_we, stride_wk, stride_wn, stride_be, stride_bn,
    stride_ye, stride_ym, stride_yn,
    NORMALIZE: tl.constexpr, CONCAT: tl.constexpr, ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[e] = act(norm(x[e]) @ W[e] + b[e]); grid (cdiv(M, BM), cdiv(N, BN), E).

    x: [E, M, K] (stride_xe = 0 when all members share the input); W: [E, K, N]; b: [E, N];
    y: [E, M, N]. Row blocks sit on grid axis 0 because axes 1/2 are capped at 65535 on CUDA.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    member = tl.program_id(2).to(tl.int64)
    tile = _linear_tile(
        x_ptr + member * stride_xe, x2_ptr + member * stride_xe, mean_ptr, std_ptr,
        w_ptr + member * stride_we, b_ptr + member * stride_be,
        M, N, K, K_SPLIT,
        stride_xm, stride_xk, stride_x2m, stride_x2k,
        stride_wk, stride_wn, stride_bn,
        pid_m * BLOCK_M, pid_n * BLOCK_N,
        NORMALIZE, CONCAT, ACTIVATION, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )                                                                          # [BM, BN]
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + member * stride_ye + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             tile, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.autotune(configs=linear_configs(), key=["M", "N", "K", "CONCAT", "NORMALIZE"])
@triton.jit
def _linear_square_sum_kernel(
    x_ptr, x2_ptr, mean_ptr, std_ptr, w_ptr, b_ptr, out_ptr,
    M, N, K, K_SPLIT,
    stride_xm, stride_xk, stride_x2m, stride_x2k,
    stride_wk, stride_wn, stride_bn,
    NORMALIZE: tl.constexpr, CONCAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[m] = sum_n (x @ W + b)[m, n]^2 for a linear last layer; grid (cdiv(M, BM),).

    x: [M, K]; W: [K, N]; b: [N]; out: [M]. Loops over all column blocks of the row block, so the
    [M, N] layer output stays in registers (ScorePen-MORL Eq. 20: ||h_xi(x)||^2).
    """
    pid_m = tl.program_id(0)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)                             # [BM]
    for col_start in range(0, N, BLOCK_N):
        tile = _linear_tile(
            x_ptr, x2_ptr, mean_ptr, std_ptr, w_ptr, b_ptr,
            M, N, K, K_SPLIT,
            stride_xm, stride_xk, stride_x2m, stride_x2k,
            stride_wk, stride_wn, stride_bn,
            pid_m * BLOCK_M, col_start,
            NORMALIZE, CONCAT, "none", DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )                                                                      # [BM, BN]
        total += tl.sum(tile * tile, axis=1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(out_ptr + offs_m, total, mask=offs_m < M)


def _as_f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def mlp_forward(
    x: Tensor,                  # [B, K1] (or [B, K] when x2 is None)
    x2: Tensor | None,          # [B, K2] concatenated after x (first layer only), or None
    input_mean: Tensor | None,  # [K1 + K2] fused normalization (first layer only), or None
    input_std: Tensor | None,   # [K1 + K2]
    weights: list[Tensor],      # [E, in_l, out_l]
    biases: list[Tensor],       # [E, out_l]
    *,
    square_sum: bool = False,
    activation: str = "silu",
    activate_last: bool = False,
) -> Tensor:
    """Ensemble MLP with ``activation`` (``"silu"``/``"relu"``) hidden layers on ``norm([x | x2])``,
    shared by all E members.

    Returns ``[E, B, out]`` (the last layer is linear unless ``activate_last``: then every layer is
    activated, for callers that fuse the layers after these into a kernel of their own), or with
    ``square_sum=True`` (E must be 1) the row sums of squares of the output, ``[B]``.
    """
    if not weights or len(weights) != len(biases):
        raise ValueError(f"need matching non-empty weights/biases, got {len(weights)} and {len(biases)}")
    if (input_mean is None) != (input_std is None):
        raise ValueError("input_mean and input_std must be given together")
    batch = x.shape[0]
    members = weights[0].shape[0]
    if square_sum and members != 1:
        raise ValueError("square_sum is for a plain (E = 1) MLP")
    if activation not in ("silu", "relu"):
        raise ValueError(f"activation must be 'silu' or 'relu', got {activation!r}")
    if square_sum and activate_last:
        raise ValueError("square_sum reduces a linear last layer; activate_last does not apply")
    x = _as_f32(x)
    k_split = x.shape[1]
    if x2 is not None:
        x2 = _as_f32(x2)
        if x2.shape[0] != batch:
            raise ValueError(f"x2 has {x2.shape[0]} rows, x has {batch}")
    normalize = input_mean is not None
    mean = _as_f32(input_mean).contiguous() if normalize else x    # dummy pointer when unused
    std = _as_f32(input_std).contiguous() if normalize else x
    in_width = k_split + (x2.shape[1] if x2 is not None else 0)

    # layer input: (pointer tensor, stride over members, stride over rows, stride over features)
    h, h_stride_e, h_stride_m, h_stride_k = x, 0, x.stride(0), x.stride(1)
    h2 = x2 if x2 is not None else x
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        w, b = _as_f32(w), _as_f32(b)                                        # [E, K, N], [E, N]
        _, k_dim, n_dim = w.shape
        if w.shape[0] != members or k_dim != in_width or b.shape != (members, n_dim):
            raise ValueError(f"layer {layer}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not "
                             f"fit input width {in_width} and {members} members")
        first = layer == 0
        common = dict(
            M=batch, N=n_dim, K=k_dim, K_SPLIT=k_split if first else k_dim,
            NORMALIZE=normalize and first, CONCAT=first and x2 is not None,
            DOT_PRECISION=DOT_PRECISION,
        )
        if square_sum and layer == last:
            out = torch.empty(batch, device=x.device, dtype=torch.float32)   # [B]
            grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]),)       # noqa: E731
            _linear_square_sum_kernel[grid](
                h, h2, mean, std, w[0], b[0], out,
                stride_xm=h_stride_m, stride_xk=h_stride_k,
                stride_x2m=h2.stride(0) if first else 0, stride_x2k=h2.stride(1) if first else 0,
                stride_wk=w.stride(1), stride_wn=w.stride(2), stride_bn=b.stride(1),
                **common,
            )
            return out
        y = torch.empty(members, batch, n_dim, device=x.device, dtype=torch.float32)  # [E, B, N]
        grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]), triton.cdiv(n_dim, meta["BLOCK_N"]),  # noqa: E731
                             members)
        _fused_linear_kernel[grid](
            h, h2, mean, std, w, b, y,
            stride_xe=h_stride_e, stride_xm=h_stride_m, stride_xk=h_stride_k,
            stride_x2m=h2.stride(0) if first else 0, stride_x2k=h2.stride(1) if first else 0,
            stride_we=w.stride(0), stride_wk=w.stride(1), stride_wn=w.stride(2),
            stride_be=b.stride(0), stride_bn=b.stride(1),
            stride_ye=y.stride(0), stride_ym=y.stride(1), stride_yn=y.stride(2),
            ACTIVATION=activation if layer != last or activate_last else "none",
            **common,
        )
        h, h_stride_e, h_stride_m, h_stride_k = y, y.stride(0), y.stride(1), y.stride(2)
        h2 = y
        in_width = n_dim
    return h


def score_mlp_penalty(
    x: Tensor,                  # [B, K1]
    x2: Tensor | None,          # [B, K2] or None
    input_mean: Tensor | None,  # [K1 + K2] or None
    input_std: Tensor | None,   # [K1 + K2] or None
    weights: list[Tensor],      # [in_l, out_l]
    biases: list[Tensor],       # [out_l]
) -> Tensor:
    """||h_xi(norm([x | x2]))||^2 per row, [B] fp32; the score output is never materialized."""
    return mlp_forward(
        x, x2, input_mean, input_std,
        [w.unsqueeze(0) for w in weights], [b.unsqueeze(0) for b in biases],   # [1, in, out], [1, out]
        square_sum=True,
    )


def score_penalty_triton(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """Score penalty ||h_xi(x)||^2 of a frozen denoising score MLP (ScorePen-MORL Eq. 20).

    Same contract as :func:`pyscorepen.ops.score_penalty.score_penalty_ref`: x: [B, D] (already
    normalized); weights[l]: [in_l, out_l]; biases[l]: [out_l]; SiLU between layers, linear last
    layer. Returns [B] in x's dtype (computed in fp32). With no layers the MLP is the identity, as in
    the reference, and the result is ||x||^2 (computed by PyTorch).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [B, D], got {tuple(x.shape)}")
    if not weights:
        return _as_f32(x).square().sum(-1).to(x.dtype)                       # [B]
    if x.shape[0] == 0:
        return x.new_zeros(0)
    return score_mlp_penalty(x, None, None, None, weights, biases).to(x.dtype)
