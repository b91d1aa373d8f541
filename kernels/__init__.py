"""Triton kernels for pyscorepen's hot paths (installed as ``pyscorepen.kernels``).

Importing this package never imports Triton, so it is safe where Triton is missing or broken. The
kernels are loaded on first attribute access::

    from pyscorepen.kernels import rollout_step_triton, score_penalty_triton   # imports triton here
    from pyscorepen.kernels import soft_value_triton, ensemble_mlp_triton   # ensemble_mlp: autograd
    from pyscorepen.kernels import sac_update_triton   # one whole SAC step, in place
    from pyscorepen.kernels import dynamics_fit_step_triton   # one dynamics-fit minibatch step, in place

Use :func:`triton_usable` to ask whether they can run in this process (a CUDA device, or
``TRITON_INTERPRET=1`` for slow CPU correctness runs). Triton decides interpreted vs compiled when the
kernel modules are first imported, so set ``TRITON_INTERPRET`` before that.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

__all__ = ["HAS_TRITON", "triton_usable", "ensemble_mlp_triton", "rollout_step_triton", "score_penalty_triton",
           "soft_value_triton", "sac_update_triton", "dynamics_fit_step_triton"]

HAS_TRITON: bool = importlib.util.find_spec("triton") is not None
"""Triton is installed (it may still fail to import; see :func:`triton_usable`)."""

_LAZY = {
    "ensemble_mlp_triton": ".ensemble_mlp",
    "rollout_step_triton": ".rollout_step",
    "score_penalty_triton": ".score_penalty",
    "soft_value_triton": ".soft_value",
    "sac_update_triton": ".sac_update",
    "dynamics_fit_step_triton": ".dynamics_fit_step",
}


def triton_usable() -> tuple[bool, str]:
    """(usable, reason): can the Triton kernels run here, and why (not)."""
    if not HAS_TRITON:
        return False, "triton is not installed"
    try:
        importlib.import_module(".score_penalty", __name__)
    except Exception as error:  # noqa: BLE001  (a broken triton install must not break callers)
        return False, f"importing the triton kernels failed: {error!r}"
    from .score_penalty import INTERPRET, interpreter_consistent
    if not interpreter_consistent():
        return False, ("TRITON_INTERPRET changed between importing triton and importing the kernels; "
                       "set it before the first triton import")
    if INTERPRET:
        return True, "triton interpreter (TRITON_INTERPRET=1), CPU tensors"
    import torch
    if torch.cuda.is_available():
        return True, "triton on CUDA"
    hint = "" if os.environ.get("TRITON_INTERPRET") != "1" else (
        " (TRITON_INTERPRET=1 was set after the kernels were imported)")
    return False, "no CUDA device and the kernels were not built for the triton interpreter" + hint


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
