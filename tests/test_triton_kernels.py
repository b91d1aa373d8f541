"""Triton kernels (``pyscorepen.kernels``) against the pure-PyTorch references in ``pyscorepen.ops``.

Without a GPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors, slow:
hence the tiny shapes). Triton decides "interpreted or compiled" when each ``@triton.jit`` decorator
runs, its own ``tl`` library included, so the variable must be set before ``triton`` is first imported.
This module sets it at import; when the suite imported triton earlier without it, the in-process tests
skip and ``test_kernels_in_fresh_interpreter_process`` re-runs this file in a child process with the
variable set, so collection order never turns the checks off. With a CUDA device the same checks run
compiled on the GPU.

Tolerances (fp32, ``tl.dot`` with ``input_precision="ieee"``): rtol = atol = 1e-4; observed errors
are ~1e-6 (summation order only).

Run: ``python -m pytest tests/test_triton_kernels.py -q``
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported (older Triton reads it then)

from pyscorepen.ops.rollout_step import RolloutStepOut, ensemble_mlp_ref, rollout_step_ref  # noqa: E402
from pyscorepen.ops.score_penalty import score_penalty_ref  # noqa: E402
from pyscorepen.ops.soft_value import relu_mlp_ref, soft_value_ref  # noqa: E402

# (dot precision) -> (rtol, atol). fp32 everywhere; "ieee" differs from PyTorch only in summation order.
TOLERANCES = {"ieee": (1e-4, 1e-4), "tf32": (2e-2, 2e-2)}


def _import_kernel_package():
    try:
        return importlib.import_module("pyscorepen.kernels")
    except ModuleNotFoundError:
        if str(REPO_ROOT) not in sys.path:          # source checkout that is not installed
            sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module("kernels")


def _triton_stdlib_interpreted() -> bool:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.sum, InterpretedFunction)


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules, built for the interpreter when there is no GPU, plus device and tolerances."""
    pytest.importorskip("triton", reason="Triton is not installed; the Triton backend is optional")
    if not ON_GPU and not _triton_stdlib_interpreted():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; "
                    "test_kernels_in_fresh_interpreter_process runs these checks in a child process")
    package = _import_kernel_package()
    score_module = importlib.import_module(package.__name__ + ".score_penalty")
    rollout_module = importlib.import_module(package.__name__ + ".rollout_step")
    soft_value_module = importlib.import_module(package.__name__ + ".soft_value")
    if not score_module.interpreter_consistent():
        # kernels were imported (compiled) before the variable was set: rebuild them interpreted
        score_module = importlib.reload(score_module)
        rollout_module = importlib.reload(rollout_module)
        soft_value_module = importlib.reload(soft_value_module)   # imports from both modules above
    assert score_module.interpreter_consistent()
    if not ON_GPU and not score_module.INTERPRET:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1: Triton kernels cannot run here")
    rtol, atol = TOLERANCES[score_module.DOT_PRECISION]
    return SimpleNamespace(
        rollout_step=rollout_module.rollout_step_triton,
        score_penalty=score_module.score_penalty_triton,
        soft_value=soft_value_module.soft_value_triton,
        device=torch.device("cpu" if score_module.INTERPRET else "cuda"),
        rtol=rtol, atol=atol,
    )


def _child_env() -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path}


def test_kernels_in_fresh_interpreter_process():
    """Fallback when this process cannot interpret: run the rest of this file in a clean child."""
    pytest.importorskip("triton", reason="Triton is not installed; the Triton backend is optional")
    if ON_GPU or _triton_stdlib_interpreted():
        pytest.skip("not needed: the kernel checks run in this process")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-k", "not fresh_interpreter_process"],
        cwd=REPO_ROOT, env={**_child_env(), "TRITON_INTERPRET": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def _mlp_params(dims, members, generator, device):
    """weights [E, in, out] (or [in, out] when members is None) scaled ~1/sqrt(in); biases [E, out]."""
    lead = () if members is None else (members,)
    weights = [torch.randn(*lead, d_in, d_out, generator=generator) / d_in ** 0.5
               for d_in, d_out in zip(dims[:-1], dims[1:])]
    biases = [0.3 * torch.randn(*lead, d_out, generator=generator) for d_out in dims[1:]]
    return [w.to(device) for w in weights], [b.to(device) for b in biases]


def _rollout_inputs(batch, members, state_dim, action_dim, hidden, score_hidden, device, *,
                    logvar_scale=1.0, zero_noise=False, transposed_weights=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    in_dim = state_dim + action_dim
    dims = [in_dim, *hidden, 2 * (state_dim + 1)]
    weights, biases = _mlp_params(dims, members, generator, device)
    weights[-1] = weights[-1] * logvar_scale                     # push logvar past both soft bounds
    if transposed_weights:                                       # non-contiguous [E, in, out] views
        weights = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in weights]
    if score_hidden is None:
        score_weights, score_biases = [], []
    else:
        score_weights, score_biases = _mlp_params([in_dim, *score_hidden, in_dim], None, generator, device)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    noise = torch.zeros(batch, state_dim + 1, device=device) if zero_noise else randn(batch, state_dim + 1)
    return dict(
        obs=3.0 * randn(batch, state_dim) + 1.0,                                    # [B, S]
        actions=randn(batch, action_dim).clamp(-1, 1),                              # [B, A]
        input_mean=randn(in_dim),                                                   # [S + A]
        input_std=(torch.rand(in_dim, generator=generator) * 2 + 0.5).to(device),   # [S + A]
        weights=weights, biases=biases,
        max_logvar=(0.5 + 0.1 * randn(state_dim + 1)),                              # [S + 1]
        min_logvar=(-3.0 + 0.1 * randn(state_dim + 1)),                            # [S + 1]
        member_index=(torch.arange(batch) % members).to(device),                    # [B] all members used
        noise=noise,                                                                # [B, S + 1]
        score_weights=score_weights, score_biases=score_biases,
    )


ROLLOUT_CASES = {
    # id: (B, E, S, A, ensemble hidden widths, score hidden widths or None, extra options)
    "B1-E1-2layers-noscore": (1, 1, 5, 3, (13,), None, {}),
    "B5-E3-3layers-score2": (5, 3, 5, 3, (13, 29), (13,), {}),
    "B37-E3-3layers-score3": (37, 3, 5, 3, (13, 29), (19, 11), {}),
    "B37-E1-2layers-score1": (37, 1, 5, 3, (45,), (), {}),
    "B5-E3-mujoco-dims": (5, 3, 17, 6, (33, 33, 33), (37,), {}),
    "B37-E3-logvar-saturated": (37, 3, 4, 2, (21,), (13,), {"logvar_scale": 12.0}),
    "B37-E3-strided-meanpred": (37, 3, 5, 3, (13, 17), (17,), {"transposed_weights": True, "zero_noise": True}),
}


@pytest.mark.parametrize("case", ROLLOUT_CASES.values(), ids=ROLLOUT_CASES.keys())
def test_rollout_step_matches_ref(kernels, case):
    batch, members, state_dim, action_dim, hidden, score_hidden, options = case
    inputs = _rollout_inputs(batch, members, state_dim, action_dim, hidden, score_hidden,
                             kernels.device, **options)
    expected = rollout_step_ref(**inputs)
    actual = kernels.rollout_step(**inputs)
    assert isinstance(actual, RolloutStepOut)
    for name in RolloutStepOut._fields:
        got, want = getattr(actual, name), getattr(expected, name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=kernels.rtol, atol=kernels.atol, msg=lambda m: f"{name}: {m}")
    if score_hidden is None:
        assert torch.count_nonzero(actual.score_penalty) == 0


def test_saturated_case_drives_logvar_past_both_bounds():
    """Guard for the "logvar-saturated" case above: its raw logvar really crosses both soft bounds."""
    inputs = _rollout_inputs(37, 3, 4, 2, (21,), None, torch.device("cpu"), logvar_scale=12.0)
    x = (torch.cat([inputs["obs"], inputs["actions"]], -1) - inputs["input_mean"]) / inputs["input_std"]
    raw_logvar = ensemble_mlp_ref(x, inputs["weights"], inputs["biases"])[..., 5:]   # [E, B, S + 1]
    assert (raw_logvar > inputs["max_logvar"]).any() and (raw_logvar < inputs["min_logvar"]).any()


def test_rollout_step_empty_batch(kernels):
    inputs = _rollout_inputs(0, 3, 5, 3, (13,), (13,), kernels.device)
    out = kernels.rollout_step(**inputs)
    assert out.next_obs.shape == (0, 5) and out.rewards.shape == out.mopo_penalty.shape == (0,)


SCORE_CASES = {
    "B1-3layers": (1, 23, (13, 29)),
    "B5-1layer": (5, 7, ()),
    "B37-2layers": (37, 11, (37,)),
    "B37-4layers-wide": (37, 23, (45, 13, 33)),
}


@pytest.mark.parametrize("case", SCORE_CASES.values(), ids=SCORE_CASES.keys())
def test_score_penalty_matches_ref(kernels, case):
    batch, dim, hidden = case
    generator = torch.Generator().manual_seed(batch + dim)
    weights, biases = _mlp_params([dim, *hidden, dim], None, generator, kernels.device)
    x = torch.randn(batch, dim, generator=generator).to(kernels.device)     # [B, D]
    torch.testing.assert_close(kernels.score_penalty(x, weights, biases), score_penalty_ref(x, weights, biases),
                               rtol=kernels.rtol, atol=kernels.atol)


@pytest.mark.parametrize("batch", [0, 5])
def test_score_penalty_without_layers_is_squared_norm(kernels, batch):
    x = torch.randn(batch, 7).to(kernels.device)
    torch.testing.assert_close(kernels.score_penalty(x, [], []), score_penalty_ref(x, [], []))


def test_package_imports_without_triton():
    """``kernels/__init__`` must import (and report unusable) where Triton is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "try:\n    import pyscorepen.kernels as k\n"
        "except ModuleNotFoundError:\n    import kernels as k\n"
        "assert not k.HAS_TRITON\n"
        "usable, reason = k.triton_usable(); assert not usable and 'not installed' in reason, reason\n"
        "try:\n    k.rollout_step_triton\nexcept ImportError:\n    pass\n"
        "else:\n    raise AssertionError('expected ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _soft_value_inputs(batch, state_dim, action_dim, actor_hidden, critic_hidden, critics, alpha, device, *,
                       log_std_scale=1.0, transposed_weights=False, scalar_scale=False, seed=0):
    """Arguments of soft_value_ref: a tanh-Gaussian actor [S -> ... -> 2A] and N critics [S+A -> ... -> 1]."""
    generator = torch.Generator().manual_seed(seed)
    actor_weights, actor_biases = _mlp_params([state_dim, *actor_hidden, 2 * action_dim], None, generator, device)
    critic_weights, critic_biases = _mlp_params([state_dim + action_dim, *critic_hidden, 1], critics,
                                                generator, device)
    scale_log_std = torch.cat([torch.ones(action_dim), torch.full((action_dim,), log_std_scale)]).to(device)
    actor_weights[-1] = actor_weights[-1] * scale_log_std        # push log_std past both clamps
    actor_biases[-1] = actor_biases[-1] * scale_log_std
    if transposed_weights:                                       # non-contiguous [in, out] views
        actor_weights = [w.t().contiguous().t() for w in actor_weights]
        critic_weights = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in critic_weights]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    return dict(
        obs=2.0 * randn(batch, state_dim),                                          # [B, S]
        noise=randn(batch, action_dim),                                             # [B, A]
        actor_weights=actor_weights, actor_biases=actor_biases,
        critic_weights=critic_weights, critic_biases=critic_biases,
        action_scale=torch.tensor(1.5, device=device) if scalar_scale else (1.0 + torch.rand(
            action_dim, generator=generator)).to(device),                           # [A] or []
        action_offset=0.2 * randn(action_dim),                                      # [A]
        alpha=torch.tensor(alpha, device=device),                                   # []
        log_std_min=-5.0, log_std_max=2.0,
    )


SOFT_VALUE_CASES = {
    # id: (B, S, A, actor hidden widths, critic hidden widths, N critics, alpha, extra options)
    "B1-A1-N1-1layer": (1, 5, 1, (19,), (19,), 1, 0.3, {}),
    "B37-A3-N2-2layers": (37, 5, 3, (19, 33), (33, 19), 2, 0.3, {}),
    "B37-A3-N3-alpha0": (37, 7, 3, (33,), (19, 33), 3, 0.0, {}),
    "B37-A3-N2-log-std-clamped": (37, 5, 3, (19,), (33,), 2, 0.3, {"log_std_scale": 12.0}),
    "B5-A6-N2-mujoco-dims": (5, 17, 6, (33, 33), (33, 33), 2, 0.2, {}),
    # A = 20 spans two action blocks; no hidden layers: linear actor head and linear critics
    "B37-A20-N2-linear-strided": (37, 5, 20, (), (), 2, 0.3, {"transposed_weights": True, "scalar_scale": True}),
}


@pytest.mark.parametrize("case", SOFT_VALUE_CASES.values(), ids=SOFT_VALUE_CASES.keys())
def test_soft_value_matches_ref(kernels, case):
    batch, state_dim, action_dim, actor_hidden, critic_hidden, critics, alpha, options = case
    inputs = _soft_value_inputs(batch, state_dim, action_dim, actor_hidden, critic_hidden, critics, alpha,
                                kernels.device, **options)
    expected = soft_value_ref(**inputs)
    actual = kernels.soft_value(**inputs)
    assert actual.shape == (batch,) and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=kernels.rtol, atol=kernels.atol)


def test_clamped_case_drives_log_std_past_both_clamps():
    """Guard for the "log-std-clamped" case above: its raw log_std really crosses both clamps."""
    inputs = _soft_value_inputs(37, 5, 3, (19,), (33,), 2, 0.3, torch.device("cpu"), log_std_scale=12.0)
    raw_log_std = relu_mlp_ref(inputs["obs"], inputs["actor_weights"], inputs["actor_biases"])[:, 3:]
    assert (raw_log_std > inputs["log_std_max"]).any() and (raw_log_std < inputs["log_std_min"]).any()


def test_soft_value_empty_batch(kernels):
    inputs = _soft_value_inputs(0, 5, 3, (19,), (19,), 2, 0.3, kernels.device)
    assert kernels.soft_value(**inputs).shape == (0,)


def test_soft_value_through_dispatcher(kernels, monkeypatch):
    """``pyscorepen.ops.soft_value.soft_value(..., backend="triton")`` finds and runs the kernel."""
    from pyscorepen.ops import backend as ops_backend
    from pyscorepen.ops.soft_value import soft_value

    monkeypatch.delitem(ops_backend._triton_cache, "soft_value", raising=False)   # resolve it afresh
    inputs = _soft_value_inputs(37, 5, 3, (19,), (19, 33), 2, 0.3, kernels.device, seed=1)
    actual = soft_value(**inputs, backend="triton")
    torch.testing.assert_close(actual, soft_value_ref(**inputs), rtol=kernels.rtol, atol=kernels.atol)
