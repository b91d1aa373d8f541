"""Registration of the ``torch.ops.pyscorepen`` custom ops.

Importing this module (``import pyscorepen.ops`` does) makes
``torch.ops.pyscorepen.rollout_step`` and ``torch.ops.pyscorepen.score_penalty``
exist, with or without the compiled extension:

* with ``pyscorepen._C`` built, its ``TORCH_LIBRARY(pyscorepen, m)`` declares the schemas
  and ``TORCH_LIBRARY_IMPL(pyscorepen, CPU, m)`` supplies the C++ kernels (csrc/);
* without it, the same schemas are defined here with the ``*_ref`` functions as the CPU
  kernel, and one warning line is logged.

In both cases the reference also serves CUDA tensors when no compiled CUDA kernel
exists, and a fake (meta) kernel is registered so ``torch.compile`` / ``opcheck`` work.
No autograd kernel is registered: both ops run under ``no_grad`` on frozen networks
(model rollouts and the target penalty of ScorePen Eq. 20), never in a training graph.

``PYSCOREPEN_DISABLE_EXT=1`` skips loading the extension (tests the fallback).
"""
from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from pyscorepen.ops.rollout_step import rollout_step_ref
from pyscorepen.ops.score_penalty import score_penalty_ref

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


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


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


_REF_KERNELS = {"rollout_step": _rollout_step_ref_kernel, "score_penalty": _score_penalty_ref_kernel}

# Ops whose CUDA kernel comes from the compiled extension (before we add reference fallbacks).
EXTENSION_CUDA_OPS = frozenset(op for op in SCHEMAS if EXTENSION_LOADED and _has_kernel(op, "CUDA"))

if not EXTENSION_LOADED:
    _DEF_LIBRARY = torch.library.Library(NAMESPACE, "DEF")  # noqa: TOR901 - kept alive for the process
    for _op, _schema in SCHEMAS.items():
        _DEF_LIBRARY.define(_schema)

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
