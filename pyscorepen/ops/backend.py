"""The one place that chooses which kernel runs an op.

Backends:

* ``ref``    the pure-PyTorch ``<op>_ref`` (any device, any dtype);
* ``cpp``    the C++ CPU kernel of the compiled extension (float32 CPU tensors);
* ``triton`` ``pyscorepen.kernels.<op>.<op>_triton`` (CUDA tensors; CPU tensors only when
             ``TRITON_INTERPRET=1`` is set, which is how it is tested without a GPU);
* ``cuda``   a CUDA kernel of the compiled extension (CUDA builds only).

Choice, per call: the ``backend=`` argument, else the ``PYSCOREPEN_BACKEND`` environment
variable, else ``auto``. An explicit request for an unavailable backend raises
:class:`BackendUnavailableError`; ``auto`` falls back along ``triton -> cuda -> ref`` for CUDA
tensors and ``cpp -> ref`` for CPU tensors, and logs (INFO, once per op/device) what it picked.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Callable

import torch
from torch import Tensor

log = logging.getLogger("pyscorepen")

BACKENDS = ("ref", "cpp", "triton", "cuda")
ENV_VAR = "PYSCOREPEN_BACKEND"
_AUTO_ORDER = {"cuda": ("triton", "cuda", "ref"), "cpu": ("cpp", "ref")}

_REFERENCES: dict[str, Callable] = {}
_triton_cache: dict[str, Callable | None] = {}
_triton_errors: dict[str, str] = {}
_announced: set[tuple[str, str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on these tensors."""


def register_reference(op: str, reference: Callable) -> None:
    """Called by each op module for its ``<op>_ref``."""
    _REFERENCES[op] = reference


def _triton_kernel(op: str) -> Callable | None:
    """``pyscorepen.kernels.<op>_triton`` or None (reason in ``_triton_errors``); imports triton."""
    if op not in _triton_cache:
        try:
            package = importlib.import_module("pyscorepen.kernels")
            kernel = getattr(package, f"{op}_triton")
            usable, why = package.triton_usable()
            if not usable:
                raise RuntimeError(why)
            _triton_cache[op] = kernel
        except Exception as error:  # noqa: BLE001 - triton missing / broken install / no GPU driver
            _triton_cache[op] = None
            _triton_errors[op] = f"{type(error).__name__}: {error}"
    return _triton_cache[op]


def _reason_unavailable(op: str, backend: str, tensor: Tensor) -> str | None:
    """None when ``backend`` can run ``op`` on ``tensor``'s device/dtype, else why not."""
    from pyscorepen.ops import _registry

    if backend == "ref":
        return None
    if backend == "cpp":
        if not _registry.EXTENSION_LOADED:
            return f"the C++ extension pyscorepen._C is not loaded ({_registry.EXTENSION_ERROR})"
        if op in _registry.MISSING_FROM_EXTENSION:
            return ("the loaded pyscorepen._C was built from an older csrc/ without this op "
                    "(rebuild: pip install --no-build-isolation -e .)")
        if tensor.device.type != "cpu":
            return f"it runs on CPU tensors only, got {tensor.device}"
        if tensor.dtype != torch.float32:
            return f"it supports float32 only, got {tensor.dtype}"
        return None
    if backend == "cuda":
        if op not in _registry.EXTENSION_CUDA_OPS:
            return "the extension was built without a CUDA kernel for this op"
        if not tensor.is_cuda:
            return f"it runs on CUDA tensors only, got {tensor.device}"
        return None
    if backend == "triton":
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return f"it needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {tensor.device}"
        if _triton_kernel(op) is None:
            return f"pyscorepen.kernels.{op}_triton cannot run here ({_triton_errors[op]})"
        return None
    raise ValueError(f"unknown pyscorepen backend {backend!r}; choose one of {BACKENDS} or 'auto'")


def available_backends(op: str, tensor: Tensor) -> list[str]:
    """Backends able to run ``op`` on tensors like ``tensor`` (device and dtype), in BACKENDS order."""
    return [name for name in BACKENDS if _reason_unavailable(op, name, tensor) is None]


def resolve_backend(op: str, tensor: Tensor, backend: str | None = None, *, auto_skip: tuple[str, ...] = ()) -> str:
    """Backend name that will run ``op`` for inputs like ``tensor``.

    ``backend`` (per call) beats ``$PYSCOREPEN_BACKEND`` beats ``auto``. ``auto_skip``: backends
    the automatic choice passes over for this call (an op's measured speed policy, e.g. a fused
    kernel that loses below some batch size); explicit requests ignore it.
    """
    requested = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"unknown pyscorepen backend {requested!r}; choose one of {BACKENDS} or 'auto'")
        reason = _reason_unavailable(op, requested, tensor)
        if reason is not None:
            source = "backend=" if backend is not None else f"{ENV_VAR}="
            raise BackendUnavailableError(f"pyscorepen.{op}: {source}{requested!r} is unavailable: {reason}")
        return requested
    device = "cuda" if tensor.is_cuda else "cpu"
    for name in _AUTO_ORDER[device]:
        if name not in auto_skip and _reason_unavailable(op, name, tensor) is None:
            key = (op, device, name)
            if key not in _announced:
                _announced.add(key)
                log.info("pyscorepen.%s: using the %r backend for %s tensors", op, name, device)
            return name
    raise AssertionError("unreachable: the ref backend is always available")


def get_kernel(op: str, backend: str) -> Callable:
    """The callable implementing ``op`` on ``backend`` (same signature as ``<op>_ref``)."""
    if backend == "ref":
        return _REFERENCES[op]
    if backend in ("cpp", "cuda"):
        return getattr(torch.ops.pyscorepen, op)
    if backend == "triton":
        kernel = _triton_kernel(op)
        if kernel is None:
            raise BackendUnavailableError(f"pyscorepen.{op}: triton kernel unavailable ({_triton_errors[op]})")
        return kernel
    raise ValueError(f"unknown pyscorepen backend {backend!r}; choose one of {BACKENDS}")
