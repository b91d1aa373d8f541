"""Fused kernels of pyscorepen, registered as ``torch.ops.pyscorepen.*`` on import.

Each op has a readable reference (``<op>_ref``) next to its dispatching public function
(``<op>(..., backend=None)``); kernels live in ``csrc/`` (C++/CUDA, ``pyscorepen._C``) and
``kernels/`` (Triton, installed as ``pyscorepen.kernels``). Backend choice:
:mod:`pyscorepen.ops.backend`.
"""
from pyscorepen.ops import _registry  # noqa: F401  (loads pyscorepen._C, registers the ops)
from pyscorepen.ops.backend import (
    BACKENDS,
    CPU_ISAS,
    BackendUnavailableError,
    available_backends,
    available_cpu_isas,
    cpu_isa,
    forced_cpu_isa,
    resolve_backend,
    set_cpu_isa,
)
from pyscorepen.ops.ensemble_mlp import ensemble_mlp
from pyscorepen.ops.rollout_step import (
    RolloutStepOut,
    ensemble_mlp_ref,
    mlp_ref,
    rollout_step,
    rollout_step_ref,
    soft_bound_logvar,
)
from pyscorepen.ops.score_penalty import score_penalty, score_penalty_ref
from pyscorepen.ops.soft_value import relu_mlp_ref, soft_value, soft_value_ref

EXTENSION_LOADED = _registry.EXTENSION_LOADED

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "CPU_ISAS",
    "EXTENSION_LOADED",
    "RolloutStepOut",
    "available_backends",
    "available_cpu_isas",
    "cpu_isa",
    "ensemble_mlp",
    "ensemble_mlp_ref",
    "forced_cpu_isa",
    "mlp_ref",
    "relu_mlp_ref",
    "resolve_backend",
    "rollout_step",
    "rollout_step_ref",
    "score_penalty",
    "score_penalty_ref",
    "set_cpu_isa",
    "soft_bound_logvar",
    "soft_value",
    "soft_value_ref",
]
