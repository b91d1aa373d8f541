"""One minibatch step of the dynamics ensemble's fit in one op: forward, Gaussian NLL with learned
log-variance bounds, its gradient, and Adam with per-layer L2, applied in place to the caller's
parameters and optimizer states.

Public API: :func:`dynamics_fit_step` (dispatching) and :func:`dynamics_fit_step_ref` (the readable
pure-PyTorch specification, autograd on the same tensors). The user is
:meth:`pyscorepen.models.dynamics.EnsembleDynamics.train_batches`, which calls it when
:meth:`~pyscorepen.models.dynamics.EnsembleDynamics.fused_step_backend` allows; its module path
(:meth:`~pyscorepen.models.dynamics.EnsembleDynamics.loss`, ``backward``, torch's fused Adam) is the
same step.

The math (MOPO, Yu et al. 2020, §4.3 and App. C: the PETS / MBPO probabilistic ensemble of
Chua et al. 2018, Eq. 2 and App. A.1), E members, a minibatch of B rows per member, O = S + 1
outputs (delta_s, r), the last layer giving (mean | raw log-variance)::

    lv      = min_lv + softplus(max_lv - softplus(max_lv - raw) - min_lv)       (soft bounds)
    L       = sum_e mean_{b, o} [(mean - y)^2 exp(-lv) + lv]                     (Gaussian NLL, no constant)
              + c (sum_o max_lv - sum_o min_lv)                                  (c = ``logvar_bound_coef``)
    grad_W_l += decay_l W_l                                                      (L2, the gradient of
                                                                                  sum_l decay_l / 2 ||W_l||^2)
    Adam(lr) on W_l, b_l, max_lv, min_lv                                         (torch.optim.Adam's update)

Returns L (0-dim, before the step, without the L2 term: what ``fit`` logs).

Arguments (every tensor float32, parameters and Adam states contiguous):

* ``x`` [E, B, S+A]: each member's normalized inputs; ``target`` [E, B, O];
* ``weights[l]`` [E, in_l, out_l], ``biases[l]`` [E, out_l]: :class:`~pyscorepen.models.nets.EnsembleMLP`'s
  layers (SiLU hidden activations), the last with out = 2O;
* ``max_logvar``, ``min_logvar`` [O]: the learned bounds;
* ``exp_avgs`` / ``exp_avg_sqs`` / ``steps``: the Adam states in the order w0, ..., w_{L-1}, b0, ...,
  b_{L-1}, max_logvar, min_logvar (the optimizer's own state tensors, updated in place);
* ``weight_decays`` [L]: decay_l of each weight (biases and bounds have none);
* ``lr``, ``beta1``, ``beta2``, ``eps``: Adam's.

The cpp kernel (csrc/dynamics_fit_step.cpp) runs the ISA-dispatching ``ensemble_mlp_forward`` /
``ensemble_mlp_backward`` kernels, the NLL gradient in one vectorised pass (fixed chunks summed in
order: independent of the thread count) and ATen's fused Adam, grouped as
:meth:`~pyscorepen.models.dynamics.EnsembleDynamics.make_optimizer` groups the parameters, with no
autograd graph and no Python between the passes.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from pyscorepen import allocator
from pyscorepen.ops import backend as _backend
from pyscorepen.ops.rollout_step import ensemble_mlp_ref, soft_bound_logvar
from pyscorepen.ops.sac_update import adam_ref_


def gaussian_nll_ref(out: Tensor, target: Tensor, max_logvar: Tensor, min_logvar: Tensor,
                     logvar_bound_coef: float) -> Tensor:
    """L of the module docstring from the last layer's output ``out`` [E, B, 2O] and ``target`` [E, B, O]."""
    mean, raw = out.chunk(2, dim=-1)                                               # [E, B, O] each
    logvar = soft_bound_logvar(raw, max_logvar, min_logvar)
    nll = ((mean - target).square() * (-logvar).exp() + logvar).mean(dim=(1, 2)).sum()
    return nll + logvar_bound_coef * (max_logvar.sum() - min_logvar.sum())


def dynamics_fit_step_ref(
    x: Tensor, target: Tensor,                                   # [E, B, S+A], [E, B, O]
    weights: list[Tensor], biases: list[Tensor],                 # [E, in, out], [E, out]
    max_logvar: Tensor, min_logvar: Tensor,                      # [O] each
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor],
    weight_decays: list[float], lr: float, beta1: float, beta2: float, eps: float, logvar_bound_coef: float,
) -> Tensor:
    """The step of the module docstring with autograd and :func:`~pyscorepen.ops.sac_update.adam_ref_`;
    updates the parameters and states in place and returns L (0-dim, before the step)."""
    L = len(weights)
    params = [*weights, *biases, max_logvar, min_logvar]
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in params]
        out = ensemble_mlp_ref(x, leaves[:L], leaves[L:2 * L], F.silu)             # [E, B, 2O]
        loss = gaussian_nll_ref(out, target, leaves[-2], leaves[-1], logvar_bound_coef)
        grads = torch.autograd.grad(loss, leaves)
    adam = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    with torch.no_grad():
        for i, decay in enumerate(weight_decays):                                 # the weights, each its L2
            adam_ref_([params[i]], [grads[i]], exp_avgs[i:i + 1], exp_avg_sqs[i:i + 1], steps[i:i + 1],
                      weight_decay=decay, **adam)
        adam_ref_(params[L:], list(grads[L:]), exp_avgs[L:], exp_avg_sqs[L:], steps[L:], weight_decay=0.0, **adam)
    return loss.detach()


_backend.register_reference("dynamics_fit_step", dynamics_fit_step_ref)
log = logging.getLogger("pyscorepen")

# Automatic choice on CPU (backend= / $PYSCOREPEN_BACKEND run whatever they name): cpp from the
# rows per member of the ``dynamics_fit_step`` class of pyscorepen.ops.backend.CPP_MIN_ROWS(_BY_VENDOR)
# on this ISA and vendor, or of this machine's calibration (python -m pyscorepen.calibrate times this
# whole step against the module path it replaces: EnsembleDynamics.loss + backward + make_optimizer's
# fused Adam). The built-in entries are the SiLU ensemble kernels' thresholds, on the ISAs where the
# whole step was measured against the module path: 2026-12-03, AMD EPYC Zen 5, idle, paired
# same-process A/B, Hopper sizes (E = 7, 4 x 200, 256 rows per member), module / op:
#   avx512  1 thread 1.18x, 2 threads 1.33x      (S = 17, A = 6: 1.15x, 1.28x)
#   avx2    1 thread 1.10x, 2 threads 1.20x      (PYSCOREPEN_CPU_ISA=avx2 on the same CPU)
# The generic ISA (ATen's ops around the kernels) was not measured: the module path (NEVER). On an
# Intel CPU the threshold is 1 024 rows (MKL's batched GEMM wins below it), so the fit's 256-row
# steps keep the module path there unless a calibration of that machine finds the op faster.
# The allocator: the op frees its ~16 MB of saved activations and gradients at once at the end of
# each step, and glibc's default thresholds give that memory back to the OS and fault it in again on
# the next step. Fresh processes, 1 thread, the same fit step (S = 17, A = 6; CPU time and minor
# faults per step): default allocator op 20.5-21.8 ms / 3 100-3 800 faults, module path 16.2-17.4 ms /
# 130-460; with pyscorepen.allocator.tune_malloc() (what the train / profile / collect CLIs call) op
# 11.4 ms / 9 faults, module path 14.4 ms / 6. So auto picks the op only in a process whose
# allocator keeps its buffers (pyscorepen.allocator.buffers_kept()); a library user calls
# tune_malloc() to get it.


def resolve(x: Tensor, backend: str | None = None, rows: int | None = None) -> str:
    """Backend of :func:`dynamics_fit_step` for inputs like ``x`` [E, B, S+A] (``rows``: the rows per
    member, default B): :func:`pyscorepen.ops.backend.resolve_backend` with the policy above, and
    without ``triton`` in the automatic order (run under the interpreter only, not yet on a GPU;
    ``backend="triton"`` still selects it)."""
    skip: tuple[str, ...] = ("triton",)
    rows = x.shape[-2] if rows is None else rows
    if not x.is_cuda and rows < _backend.cpp_min_rows("dynamics_fit_step"):
        skip = (*skip, "cpp")
    elif not x.is_cuda and not allocator.buffers_kept():
        skip = (*skip, "cpp")
        automatic = (backend or os.environ.get(_backend.ENV_VAR) or "auto") == "auto"
        if automatic and not _told_about_allocator:   # an explicit backend is not the policy's doing
            _tell_about_allocator()
    return _backend.resolve_backend("dynamics_fit_step", x, backend, auto_skip=skip)


_told_about_allocator = False


def _tell_about_allocator() -> None:
    """One INFO line per process: why the fit is not on the op, and how to get it."""
    global _told_about_allocator
    _told_about_allocator = True
    log.info("pyscorepen.dynamics_fit_step: the dynamics fit takes the module path. The op frees ~16 MB per "
             "step, which glibc's default thresholds fault in again on every step, and "
             "pyscorepen.allocator.tune_malloc() has not raised them in this process (the train / profile / "
             "collect CLIs call it; it declines under PYSCOREPEN_MALLOC=default, MALLOC_* or another allocator)")


def dynamics_fit_step(*args, backend: str | None = None, **kwargs) -> Tensor:
    """:func:`dynamics_fit_step_ref`'s step on the chosen backend (default: ``$PYSCOREPEN_BACKEND``
    or automatic, see :mod:`pyscorepen.ops.backend`). Same arguments."""
    x = args[0] if args else kwargs["x"]
    return run(resolve(x, backend), *args, **kwargs)


def run(name: str, *args, **kwargs) -> Tensor:
    """:func:`dynamics_fit_step` on the backend ``name`` (callers that resolved it themselves)."""
    return _backend.run_in_place_op("dynamics_fit_step", name, *args, **kwargs)
