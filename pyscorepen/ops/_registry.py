"""Registration of the ``torch.ops.pyscorepen`` custom ops.

Importing this module (``import pyscorepen.ops`` does) makes ``torch.ops.pyscorepen.rollout_step``,
``torch.ops.pyscorepen.score_penalty`` and ``torch.ops.pyscorepen.soft_value`` exist, with or
without the compiled extension:

* with ``pyscorepen._C`` built, its ``TORCH_LIBRARY(pyscorepen, m)`` declares the schemas
  and ``TORCH_LIBRARY_IMPL(pyscorepen, CPU, m)`` supplies the C++ kernels (csrc/);
* without it, the same schemas are defined here with the ``*_ref`` functions as the CPU
  kernel, and one warning line is logged;
* with a stale build (``pyscorepen._C`` compiled from an older csrc/ that lacks some op), the
  missing schemas are added here as a library fragment with the reference kernels, and one
  warning line names them (rebuild with ``pip install --no-build-isolation -e .``).

In every case the reference also serves CUDA tensors when no compiled CUDA kernel
exists, and a fake (meta) kernel is registered so ``torch.compile`` / ``opcheck`` work.
No autograd kernel is registered: the ops run under ``no_grad`` on frozen networks (model
rollouts, the target penalty of ScorePen Eq. 20, Bellman targets), never in a training graph.

``PYSCOREPEN_DISABLE_EXT=1`` skips loading the extension (tests the fallback).
"""
from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from pyscorepen.ops.rollout_step import rollout_step_ref
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
MISSING_FROM_EXTENSION = tuple(op for op in SCHEMAS if not _has_schema(op))
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


_REF_KERNELS = {"rollout_step": _rollout_step_ref_kernel, "score_penalty": _score_penalty_ref_kernel,
                "soft_value": _soft_value_ref_kernel}

# Ops whose CUDA kernel comes from the compiled extension (before we add reference fallbacks).
EXTENSION_CUDA_OPS = frozenset(op for op in SCHEMAS if EXTENSION_LOADED and _has_kernel(op, "CUDA"))

if MISSING_FROM_EXTENSION:
    # "DEF" owns the namespace (no extension); a "FRAGMENT" adds to the extension's TORCH_LIBRARY
    _DEF_LIBRARY = torch.library.Library(  # noqa: TOR901 - kept alive for the process
        NAMESPACE, "FRAGMENT" if EXTENSION_LOADED else "DEF")
    for _op in MISSING_FROM_EXTENSION:
        _DEF_LIBRARY.define(SCHEMAS[_op])

_IMPL_LIBRARY = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901
for _op, _kernel in _REF_KERNELS.items():
    for _key in ("CPU", "CUDA"):
        if not _has_kernel(_op, _key):
            _IMPL_LIBRARY.impl(_op, _kernel, _key)


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
