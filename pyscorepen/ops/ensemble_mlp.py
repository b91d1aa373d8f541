"""Vectorized ensemble MLP for training: forward and backward of E independent MLPs.

Public API: :func:`ensemble_mlp` (dispatching, differentiable w.r.t. x, weights and biases) and
:func:`ensemble_mlp_ref` (the readable pure-PyTorch specification, from
:mod:`pyscorepen.ops.rollout_step`). Users: SAC's twin critics (:class:`pyscorepen.models.nets.QEnsemble`,
ReLU) and the dynamics ensemble (:class:`pyscorepen.models.nets.EnsembleMLP`, SiLU) in their training
graphs: critic loss, actor loss through a frozen critic (only grad_x), COMBO's CQL term, model fits.

The math, member e, layers l = 1..L (act = ReLU or SiLU on every layer but the last)::

    z_l = h_{l-1} W_l[e] + b_l[e],   h_l = act(z_l),   h_0 = x (or x[e]),   y[e] = z_L
    backward:  dz_L = dy;  dW_l = h_{l-1}^T dz_l;  db_l = sum_rows dz_l;  dh_{l-1} = dz_l W_l^T
               dz_{l-1} = dh_{l-1} * act'(z_{l-1})     (ReLU: [h > 0]; SiLU: s (1 + z (1 - s)), s = sigmoid(z))
               dx = dz_1 W_1^T  (summed over members when x is shared)

Kernels (``torch.ops.pyscorepen``, see :mod:`pyscorepen.ops._registry` and csrc/):

* ``ensemble_mlp_forward(x, weights, biases, activation) -> (y, saved)``: y [E, B, out_L] and the
  hidden activations the backward needs (``saved``: ReLU: h_l; SiLU: h_l then silu'(z_l); each
  [E, B_pad, ld_l] with B_pad = B rounded up to 24 rows and ld_l = out_l rounded up to 16; the
  C++ kernels compute rows up to B rounded up to 4 and leave zeros below);
* ``ensemble_mlp_backward(dy, x, weights, saved, activation, output_mask) -> (dx, dW, db)``; the
  mask (dx, dW, db) skips unneeded gradients (SAC's actor loss: critic frozen -> dx only);
* ``ensemble_mlp(x, weights, biases, activation) -> y``: forward + autograd (registered with
  ``torch.library.register_autograd``), the ``cpp`` backend's kernel.

In eager mode :func:`ensemble_mlp` runs the cpp backend through :class:`_FusedEnsembleMlp`, a lean
``torch.autograd.Function`` around the same two kernels: the generic ``register_autograd`` wrapper
(pytree flattening of the tensor lists, Python redispatch) costs ~100-160 us per forward+backward,
as much as a whole 64-row critic pass. Under ``torch.compile`` the registered op is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyscorepen.ops import backend as _backend
from pyscorepen.ops.rollout_step import ensemble_mlp_ref as _ensemble_mlp_ref

ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
ROW_PAD, COL_PAD = 24, 16  # saved activations: rows padded to ROW_PAD, leading dimension to COL_PAD


def saved_width(width: int) -> int:
    """Leading dimension of a saved activation buffer of a layer with ``width`` outputs (the C++
    ``padded_cols``): ``width`` rounded up to COL_PAD, plus COL_PAD more where that is a multiple of
    128 floats. Rows 512 B / 1 KB apart would put a column block's lines into 8 / 4 of the 64 L1
    sets in the kernels' k loops (csrc/pyscorepen.cpp ``skewed_ld``: the backward of the 256-wide
    critics ran 1.09-1.10x faster with it on a Zen 3; benches/README.md, session 12)."""
    rounded = (width + COL_PAD - 1) // COL_PAD * COL_PAD
    return rounded + COL_PAD if rounded % 128 == 0 else rounded


def ensemble_mlp_ref(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    """Plain autograd through :func:`pyscorepen.ops.rollout_step.ensemble_mlp_ref`.

    x: [B, in] (shared by all members) or [E, B, in]; weights[l]: [E, in_l, out_l];
    biases[l]: [E, out_l]; ``activation``: "relu" or "silu". Returns [E, B, out_L].
    """
    return _ensemble_mlp_ref(x, weights, biases, activation=ACTIVATIONS[activation])


_backend.register_reference("ensemble_mlp", ensemble_mlp_ref)

def resolve(x: Tensor, weights: list[Tensor], activation: str, backend: str | None = None) -> str:
    """Backend that :func:`ensemble_mlp` runs for these arguments: :func:`pyscorepen.ops.backend.
    resolve_backend` with the measured per-ISA speed policy of ``ensemble_mlp/<activation>``
    (:data:`pyscorepen.ops.backend.CPP_MIN_ROWS`: auto skips cpp below the batch size where it won)."""
    return _backend.resolve_backend("ensemble_mlp", x, backend, rows=x.shape[-2],
                                    shape_class=f"ensemble_mlp/{activation}")


class _FusedEnsembleMlp(torch.autograd.Function):
    """Eager autograd of the cpp kernels (same math and kernels as ``torch.ops.pyscorepen.ensemble_mlp``)."""

    @staticmethod
    def forward(ctx, x, activation, n_layers, *params):
        weights, biases = list(params[:n_layers]), list(params[n_layers:])
        with torch._C._AutoDispatchBelowAutograd():
            out, saved = torch.ops.pyscorepen.ensemble_mlp_forward.default(x, weights, biases, activation)
        ctx.save_for_backward(x, *weights, *saved)
        ctx.activation, ctx.n_layers = activation, n_layers
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *rest = ctx.saved_tensors
        n_layers = ctx.n_layers
        weights, saved = rest[:n_layers], rest[n_layers:]
        needs = ctx.needs_input_grad
        mask = [needs[0], any(needs[3:3 + n_layers]), any(needs[3 + n_layers:])]
        with torch._C._AutoDispatchBelowAutograd():
            grad_x, grad_weights, grad_biases = torch.ops.pyscorepen.ensemble_mlp_backward.default(
                grad_out, x, weights, saved, ctx.activation, mask)
        none = (None,) * n_layers
        return (grad_x if mask[0] else None, None, None, *(grad_weights if mask[1] else none),
                *(grad_biases if mask[2] else none))


def ensemble_mlp(
    x: Tensor,                # [B, in] shared, or [E, B, in]
    weights: list[Tensor],    # [E, in_l, out_l]
    biases: list[Tensor],     # [E, out_l]
    activation: str,          # "relu" | "silu" (hidden layers; the last layer is linear)
    *,
    backend: str | None = None,
) -> Tensor:
    """E MLPs in one call, differentiable w.r.t. x, weights and biases. Returns [E, B, out_L].

    Same arguments and result as :func:`ensemble_mlp_ref`; ``backend`` picks the kernel
    (``ref``/``cpp``/``triton``, default: ``$PYSCOREPEN_BACKEND`` or automatic, see
    :mod:`pyscorepen.ops.backend` and :func:`resolve`).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"pyscorepen.ensemble_mlp: activation must be 'relu' or 'silu', got {activation!r}")
    return run(resolve(x, weights, activation, backend), x, weights, biases, activation)


def run(name: str, x: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    """:func:`ensemble_mlp` on the backend ``name`` that :func:`resolve` returned (callers that
    resolve once to choose their own code path, like :class:`pyscorepen.models.nets.QEnsemble`)."""
    if name == "cpp" and not torch.compiler.is_compiling():
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in (*weights, *biases))):
            return _FusedEnsembleMlp.apply(x, activation, len(weights), *weights, *biases)
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.pyscorepen.ensemble_mlp_forward.default(x, list(weights), list(biases), activation)[0]
    return _backend.get_kernel("ensemble_mlp", name)(x, list(weights), list(biases), activation)
