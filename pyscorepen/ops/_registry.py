"""Registration of the ``torch.ops.pyscorepen`` custom ops.

Importing this module (``import pyscorepen.ops`` does) makes ``torch.ops.pyscorepen.rollout_step``,
``score_penalty``, ``soft_value`` and the ensemble-MLP training ops (``ensemble_mlp_forward``,
``ensemble_mlp_backward`` and their composition ``ensemble_mlp``) and the whole-step
``sac_update`` and the dynamics fit's ``dynamics_fit_step`` (in place on the parameters and Adam
states, no autograd) exist, with or without the
compiled extension:

* with ``pyscorepen._C`` built, its ``TORCH_LIBRARY(pyscorepen, m)`` declares the schemas
  and ``TORCH_LIBRARY_IMPL(pyscorepen, CPU, m)`` supplies the C++ kernels (csrc/);
* without it, the same schemas are defined here with the ``*_ref`` functions as the CPU
  kernel, and one warning line is logged;
* with a stale build (``pyscorepen._C`` compiled from an older csrc/ that lacks some op), the
  missing schemas are added here as a library fragment with the reference kernels, and one
  warning line names them (rebuild with ``pip install --no-build-isolation -e .``).

In every case the reference also serves CUDA tensors when no compiled CUDA kernel
exists, and a fake (meta) kernel is registered so ``torch.compile`` / ``opcheck`` work.
rollout_step / score_penalty / soft_value have no autograd kernel: they run under ``no_grad``
on frozen networks (model rollouts, the target penalty of ScorePen Eq. 20, Bellman targets).
``ensemble_mlp_forward`` gets one here (``torch.library.register_autograd``, its backward is the
``ensemble_mlp_backward`` op), and ``ensemble_mlp`` is CompositeImplicitAutograd (the forward's
first output), so autograd sees the fused forward/backward pair.

``PYSCOREPEN_DISABLE_EXT=1`` skips loading the extension (tests the fallback).
"""
from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from pyscorepen.ops.dynamics_fit_step import dynamics_fit_step_ref
from pyscorepen.ops.ensemble_mlp import ACTIVATIONS, ROW_PAD, saved_width
from pyscorepen.ops.rollout_step import rollout_step_ref
from pyscorepen.ops.sac_update import sac_update_ref
from pyscorepen.ops.score_penalty import score_penalty_ref
from pyscorepen.ops.soft_value import soft_value_ref

log = logging.getLogger("pyscorepen")

NAMESPACE = "pyscorepen"
# Must match the m.def(...) strings in csrc/pyscorepen.cpp (tests/test_backend.py checks it).
SCHEMAS = {
    "rollout_step": (
        "rollout_step(Tensor obs, Tensor actions, Tensor input_mean, Tensor input_std, Tensor[] weights, "
        "Tensor[] biases, Tensor max_logvar, Tensor min_logvar, Tensor member_index, Tensor noise, "
        "Tensor[] score_weights, Tensor[] score_biases) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "score_penalty": "score_penalty(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor",
    "soft_value": (
        "soft_value(Tensor obs, Tensor noise, Tensor[] actor_weights, Tensor[] actor_biases, "
        "Tensor[] critic_weights, Tensor[] critic_biases, Tensor action_scale, Tensor action_offset, "
        "Tensor alpha, float log_std_min, float log_std_max) -> Tensor"
    ),
    "ensemble_mlp_forward": (
        "ensemble_mlp_forward(Tensor x, Tensor[] weights, Tensor[] biases, str activation) -> (Tensor, Tensor[])"
    ),
    "ensemble_mlp_backward": (
        "ensemble_mlp_backward(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] saved, str activation, "
        "bool[3] output_mask) -> (Tensor, Tensor[], Tensor[])"
    ),
    "sac_update": (
        "sac_update(Tensor obs, Tensor actions, Tensor rewards, Tensor next_obs, Tensor terminals, Tensor penalty, "
        "Tensor? target_penalty, Tensor target_noise, Tensor actor_noise, Tensor(a!)[] actor_weights, "
        "Tensor(b!)[] actor_biases, Tensor(c!)[] critic_weights, Tensor(d!)[] critic_biases, "
        "Tensor(e!)[] target_weights, Tensor(f!)[] target_biases, Tensor(g!) log_alpha, Tensor(h!)[] exp_avgs, "
        "Tensor(i!)[] exp_avg_sqs, Tensor(j!)[] steps, Tensor action_scale, Tensor action_offset, float gamma, "
        "float tau, float target_entropy, bool auto_alpha, float actor_lr, float critic_lr, float alpha_lr, "
        "float beta1, float beta2, float adam_eps, float weight_decay, float log_std_min, float log_std_max, "
        "bool deterministic_backup=False, float? target_min=None, Tensor? cql_obs=None, Tensor? cql_actions=None, "
        "Tensor? cql_log_density=None, Tensor? cql_push_up=None, float cql_weight=0., float cql_temperature=1.) "
        "-> Tensor"
    ),
    "dynamics_fit_step": (
        "dynamics_fit_step(Tensor x, Tensor target, Tensor(a!)[] weights, Tensor(b!)[] biases, Tensor(c!) max_logvar, "
        "Tensor(d!) min_logvar, Tensor(e!)[] exp_avgs, Tensor(f!)[] exp_avg_sqs, Tensor(g!)[] steps, "
        "float[] weight_decays, float lr, float beta1, float beta2, float eps, float logvar_bound_coef) -> Tensor"
    ),
}
# CompositeImplicitAutograd ops (no CPU/Meta kernel of their own): name -> (schema, the ops it is made of).
COMPOSITE_SCHEMAS = {
    "ensemble_mlp": ("ensemble_mlp(Tensor x, Tensor[] weights, Tensor[] biases, str activation) -> Tensor",
                     ("ensemble_mlp_forward", "ensemble_mlp_backward")),
}


def _load_extension() -> tuple[bool, str]:
    if os.environ.get("PYSCOREPEN_DISABLE_EXT") == "1":
        return False, "disabled by PYSCOREPEN_DISABLE_EXT=1"
    try:
        import pyscorepen._C  # noqa: F401  (runs TORCH_LIBRARY registration)
    except (ImportError, OSError) as error:  # not built / ABI mismatch with the installed torch
        return False, str(error).splitlines()[0] if str(error) else type(error).__name__
    return True, ""


EXTENSION_LOADED, EXTENSION_ERROR = _load_extension()
if not EXTENSION_LOADED:
    log.warning("pyscorepen: C++ extension not loaded (%s); using the reference ops", EXTENSION_ERROR)


def _has_schema(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"{NAMESPACE}::{op}", "")
    except RuntimeError:  # "Could not find schema for pyscorepen::<op>"
        return False
    return True


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return _has_schema(op) and torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


# Ops the loaded extension does not declare (all of them without it; some with a stale build).
MISSING_FROM_EXTENSION = tuple(op for op in SCHEMAS if not _has_schema(op)) + tuple(
    op for op, (_, parts) in COMPOSITE_SCHEMAS.items()
    if not _has_schema(op) or any(not _has_schema(part) for part in parts))
if EXTENSION_LOADED and MISSING_FROM_EXTENSION:
    log.warning("pyscorepen: the C++ extension was built from an older csrc/ without %s; using the reference "
                "kernel there (rebuild: pip install --no-build-isolation -e .)", ", ".join(MISSING_FROM_EXTENSION))


# --------------------------------------------------------------- reference kernels
def _rollout_step_ref_kernel(
    obs: Tensor, actions: Tensor, input_mean: Tensor, input_std: Tensor, weights: list[Tensor],
    biases: list[Tensor], max_logvar: Tensor, min_logvar: Tensor, member_index: Tensor, noise: Tensor,
    score_weights: list[Tensor], score_biases: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out = rollout_step_ref(obs, actions, input_mean, input_std, weights, biases, max_logvar, min_logvar,
                           member_index, noise, score_weights, score_biases)
    # fresh, contiguous outputs (rewards is a strided view of the sample in the reference)
    return tuple(t.clone(memory_format=torch.contiguous_format) for t in out)


def _score_penalty_ref_kernel(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    return score_penalty_ref(x, weights, biases).clone(memory_format=torch.contiguous_format)


def _soft_value_ref_kernel(
    obs: Tensor, noise: Tensor, actor_weights: list[Tensor], actor_biases: list[Tensor],
    critic_weights: list[Tensor], critic_biases: list[Tensor], action_scale: Tensor, action_offset: Tensor,
    alpha: Tensor, log_std_min: float, log_std_max: float,
) -> Tensor:
    out = soft_value_ref(obs, noise, actor_weights, actor_biases, critic_weights, critic_biases, action_scale,
                         action_offset, alpha, log_std_min, log_std_max)
    return out.clone(memory_format=torch.contiguous_format)


def _padded_rows(batch):
    """Rows of the saved activations: ``batch`` rounded up to ROW_PAD (at least one row)."""
    return (torch.sym_max(batch, 1) + ROW_PAD - 1) // ROW_PAD * ROW_PAD


def _saved_buffer(t: Tensor) -> Tensor:
    """[E, B, n] -> zero-padded [E, B_pad, ld] in the layout of the ensemble_mlp_forward ``saved`` outputs."""
    members, batch, width = t.shape
    out = t.new_zeros(members, _padded_rows(batch), saved_width(width))
    out[:, :batch, :width] = t
    return out


def _ensemble_mlp_forward_ref_kernel(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str
                                     ) -> tuple[Tensor, list[Tensor]]:
    act = ACTIVATIONS[activation]
    h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x   # [E, B, in]
    saved_h, saved_z = [], []
    for w, b in zip(weights[:-1], biases[:-1]):
        z = torch.baddbmm(b.unsqueeze(1), h, w)                            # [E, B, out_l]
        h = act(z)
        saved_h.append(_saved_buffer(h))
        if activation == "silu":  # silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
            s = torch.sigmoid(z)
            saved_z.append(_saved_buffer(s * (1 + z * (1 - s))))
    out = torch.baddbmm(biases[-1].unsqueeze(1), h, weights[-1])          # [E, B, out_L]
    return out.contiguous(), saved_h + saved_z


def _ensemble_mlp_backward_ref_kernel(grad_out: Tensor, x: Tensor, weights: list[Tensor], saved: list[Tensor],
                                      activation: str, output_mask: list[bool]
                                      ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    members, batch = grad_out.shape[0], grad_out.shape[1]
    hidden = len(weights) - 1
    hs = [s[:, :batch, :w.shape[2]] for s, w in zip(saved[:hidden], weights)]       # h_l [E, B, out_l]
    zs = [s[:, :batch, :w.shape[2]] for s, w in zip(saved[hidden:], weights)]       # silu'(z_l) (SiLU only)
    x_members = x.expand(members, *x.shape) if x.dim() == 2 else x                    # [E, B, in]
    grad_x, grad_weights, grad_biases = x.new_empty(0), [], []
    dz = grad_out                                                                     # [E, B, out_L]
    for layer in reversed(range(len(weights))):
        h_prev = hs[layer - 1] if layer > 0 else x_members
        if output_mask[1]:
            grad_weights.insert(0, torch.bmm(h_prev.transpose(1, 2), dz))             # [E, in_l, out_l]
        if output_mask[2]:
            grad_biases.insert(0, dz.sum(1))                                          # [E, out_l]
        if layer > 0:
            dh = torch.bmm(dz, weights[layer].transpose(1, 2))                        # [E, B, in_l]
            if activation == "relu":
                dz = dh * (hs[layer - 1] > 0)
            else:
                dz = dh * zs[layer - 1]
        elif output_mask[0]:
            grad_x = torch.bmm(dz, weights[0].transpose(1, 2))                        # [E, B, in]
            grad_x = grad_x.sum(0) if x.dim() == 2 else grad_x
    return grad_x.contiguous(), [g.contiguous() for g in grad_weights], [g.contiguous() for g in grad_biases]


def _ensemble_mlp_composite(x: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    return torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, activation)[0]


def _sac_update_ref_kernel(*args) -> Tensor:
    return sac_update_ref(*args)   # updates the parameters / Adam states in place; [4] statistics


def _dynamics_fit_step_ref_kernel(*args) -> Tensor:
    return dynamics_fit_step_ref(*args)   # updates the parameters / Adam states in place; the loss


_REF_KERNELS = {"rollout_step": _rollout_step_ref_kernel, "score_penalty": _score_penalty_ref_kernel,
                "soft_value": _soft_value_ref_kernel, "ensemble_mlp_forward": _ensemble_mlp_forward_ref_kernel,
                "ensemble_mlp_backward": _ensemble_mlp_backward_ref_kernel, "sac_update": _sac_update_ref_kernel,
                "dynamics_fit_step": _dynamics_fit_step_ref_kernel}
_COMPOSITE_KERNELS = {"ensemble_mlp": _ensemble_mlp_composite}

# Ops whose CUDA kernel comes from the compiled extension (before we add reference fallbacks).
EXTENSION_CUDA_OPS = frozenset(op for op in SCHEMAS if EXTENSION_LOADED and _has_kernel(op, "CUDA"))

if MISSING_FROM_EXTENSION:
    # "DEF" owns the namespace (no extension); a "FRAGMENT" adds to the extension's TORCH_LIBRARY
    _DEF_LIBRARY = torch.library.Library(  # noqa: TOR901 - kept alive for the process
        NAMESPACE, "FRAGMENT" if EXTENSION_LOADED else "DEF")
    for _op in MISSING_FROM_EXTENSION:
        if not _has_schema(_op):
            _DEF_LIBRARY.define(SCHEMAS[_op] if _op in SCHEMAS else COMPOSITE_SCHEMAS[_op][0])

_IMPL_LIBRARY = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901
for _op, _kernel in _REF_KERNELS.items():
    for _key in ("CPU", "CUDA"):
        if not _has_kernel(_op, _key):
            _IMPL_LIBRARY.impl(_op, _kernel, _key)
for _op, _kernel in _COMPOSITE_KERNELS.items():
    if not _has_kernel(_op, "CompositeImplicitAutograd"):
        _IMPL_LIBRARY.impl(_op, _kernel, "CompositeImplicitAutograd")


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake(f"{NAMESPACE}::rollout_step")
def _rollout_step_fake(obs, actions, input_mean, input_std, weights, biases, max_logvar, min_logvar,
                       member_index, noise, score_weights, score_biases):
    torch._check(obs.dim() == 2 and actions.dim() == 2)
    batch, obs_dim = obs.shape
    return (obs.new_empty(batch, obs_dim), obs.new_empty(batch), obs.new_empty(batch), obs.new_empty(batch))


@torch.library.register_fake(f"{NAMESPACE}::score_penalty")
def _score_penalty_fake(x, weights, biases):
    torch._check(x.dim() == 2)
    return x.new_empty(x.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::soft_value")
def _soft_value_fake(obs, noise, actor_weights, actor_biases, critic_weights, critic_biases, action_scale,
                     action_offset, alpha, log_std_min, log_std_max):
    torch._check(obs.dim() == 2 and noise.dim() == 2)
    return obs.new_empty(obs.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::ensemble_mlp_forward")
def _ensemble_mlp_forward_fake(x, weights, biases, activation):
    torch._check(x.dim() in (2, 3) and len(weights) >= 1)
    members, batch = weights[0].shape[0], x.shape[-2]
    batch_pad = _padded_rows(batch)
    saved = [x.new_empty(members, batch_pad, saved_width(w.shape[2])) for w in weights[:-1]]
    if activation == "silu":
        saved = saved + [s.new_empty(s.shape) for s in saved]
    return x.new_empty(members, batch, weights[-1].shape[2]), saved


@torch.library.register_fake(f"{NAMESPACE}::ensemble_mlp_backward")
def _ensemble_mlp_backward_fake(grad_out, x, weights, saved, activation, output_mask):
    grad_x = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    grad_weights = [w.new_empty(w.shape) for w in weights] if output_mask[1] else []
    grad_biases = [w.new_empty(w.shape[0], w.shape[2]) for w in weights] if output_mask[2] else []
    return grad_x, grad_weights, grad_biases


@torch.library.register_fake(f"{NAMESPACE}::sac_update")
def _sac_update_fake(obs, *args):
    torch._check(obs.dim() == 2)
    return obs.new_empty(4)   # (critic loss, actor loss, mean Q, CQL gap); the parameters are updated in place


@torch.library.register_fake(f"{NAMESPACE}::dynamics_fit_step")
def _dynamics_fit_step_fake(x, *args):
    torch._check(x.dim() == 3)
    return x.new_empty(())   # the loss; the parameters are updated in place


# ------------------------------------------------------------------ autograd
def _ensemble_mlp_setup_context(ctx, inputs, output):
    x, weights, biases, activation = inputs
    _, saved = output
    ctx.mark_non_differentiable(*saved)
    ctx.save_for_backward(x, *weights, *saved)
    ctx.n_layers, ctx.activation = len(weights), activation


def _ensemble_mlp_backward_autograd(ctx, grad_out, grad_saved):
    x, *rest = ctx.saved_tensors
    weights, saved = rest[:ctx.n_layers], rest[ctx.n_layers:]
    need_x, need_weights, need_biases, _ = ctx.needs_input_grad
    mask = [bool(need_x), any(need_weights), any(need_biases)]
    none = [None] * ctx.n_layers
    if grad_out is None or not any(mask):
        return None, none, none, None
    grad_x, grad_weights, grad_biases = torch.ops.pyscorepen.ensemble_mlp_backward(
        grad_out, x, weights, saved, ctx.activation, mask)
    return (grad_x if mask[0] else None, list(grad_weights) if mask[1] else none,
            list(grad_biases) if mask[2] else none, None)


torch.library.register_autograd(f"{NAMESPACE}::ensemble_mlp_forward", _ensemble_mlp_backward_autograd,
                                setup_context=_ensemble_mlp_setup_context)
