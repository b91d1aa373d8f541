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
    ensemble_module = importlib.import_module(package.__name__ + ".ensemble_mlp")
    if not score_module.interpreter_consistent():
        # kernels were imported (compiled) before the variable was set: rebuild them interpreted
        score_module = importlib.reload(score_module)
        rollout_module = importlib.reload(rollout_module)
        soft_value_module = importlib.reload(soft_value_module)   # imports from both modules above
        ensemble_module = importlib.reload(ensemble_module)       # imports from score_penalty
    sac_update_module = importlib.import_module(package.__name__ + ".sac_update")
    if sac_update_module._forward is not ensemble_module._forward:   # built against the replaced modules
        sac_update_module = importlib.reload(sac_update_module)
    fit_step_module = importlib.import_module(package.__name__ + ".dynamics_fit_step")
    if fit_step_module._forward is not ensemble_module._forward or fit_step_module._adam is not sac_update_module._adam:
        fit_step_module = importlib.reload(fit_step_module)
    assert score_module.interpreter_consistent()
    if not ON_GPU and not score_module.INTERPRET:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1: Triton kernels cannot run here")
    rtol, atol = TOLERANCES[score_module.DOT_PRECISION]
    return SimpleNamespace(
        rollout_step=rollout_module.rollout_step_triton,
        score_penalty=score_module.score_penalty_triton,
        soft_value=soft_value_module.soft_value_triton,
        ensemble_mlp=ensemble_module.ensemble_mlp_triton,
        ensemble_mlp_module=ensemble_module,
        sac_update=sac_update_module.sac_update_triton,
        dynamics_fit_step=fit_step_module.dynamics_fit_step_triton,
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


# --- ensemble_mlp (training op: forward + backward) ------------------------------------------------
# Observed under the interpreter: max abs error <= 1e-6 on outputs, <= 7e-6 on gradients (the weight
# gradients sum over the batch), against rtol = atol = 1e-4.

ENSEMBLE_MLP_CASES = {
    # id: (B, E, layer widths, activation, x shared [B, in] or per member [E, B, in], what needs a grad,
    #      extra options)
    "shared-B37-E2-relu-3layers-critic": (37, 2, (5, 19, 33, 1), "relu", True, "all", {}),
    "member-B37-E3-silu-3layers": (37, 3, (19, 33, 5, 7), "silu", False, "all", {}),
    "shared-B1-E1-silu-1layer": (1, 1, (5, 7), "silu", True, "all", {}),
    "member-B1-E3-relu-2layers": (1, 3, (5, 19, 7), "relu", False, "all", {}),
    "shared-B37-E3-silu-2layers": (37, 3, (19, 33, 7), "silu", True, "all", {}),
    "member-B37-E2-relu-1layer": (37, 2, (33, 1), "relu", False, "all", {}),
    # SAC actor loss: frozen critics, only the action (x) needs a gradient
    "shared-B37-E2-relu-only-x": (37, 2, (5, 19, 33, 1), "relu", True, "x", {}),
    "member-B37-E3-silu-only-params": (37, 3, (5, 33, 19, 7), "silu", False, "params", {}),
    "shared-B37-E2-silu-only-biases": (37, 2, (5, 19, 7), "silu", True, "biases", {}),
    # non-contiguous weights and the stride-0 gradient of out.sum()
    "shared-B37-E3-silu-strided-sum": (37, 3, (5, 19, 7), "silu", True, "all",
                                       {"transposed_weights": True, "sum_loss": True}),
}


def _ensemble_mlp_inputs(batch, members, dims, shared, needs, device, *, transposed_weights=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights, biases = _mlp_params(dims, members, generator, device)
    if transposed_weights:                                       # non-contiguous [E, in, out] views
        weights = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in weights]
    x = torch.randn(*(() if shared else (members,)), batch, dims[0], generator=generator).to(device)
    grad_out = torch.randn(members, batch, dims[-1], generator=generator).to(device)
    x.requires_grad_(needs in ("all", "x"))
    for w in weights:
        w.requires_grad_(needs in ("all", "params"))
    for b in biases:
        b.requires_grad_(needs in ("all", "params", "biases"))
    return x, weights, biases, grad_out


def _ensemble_mlp_check(kernels, case, seed=0):
    """Output and every gradient of the Triton op against autograd through ensemble_mlp_ref."""
    batch, members, dims, activation, shared, needs, options = case
    x, weights, biases, grad_out = _ensemble_mlp_inputs(
        batch, members, dims, shared, needs, kernels.device,
        transposed_weights=options.get("transposed_weights", False), seed=seed)
    inputs = [t for t in (x, *weights, *biases) if t.requires_grad]
    act_fn = {"relu": torch.nn.functional.relu, "silu": torch.nn.functional.silu}[activation]
    expected = ensemble_mlp_ref(x, weights, biases, act_fn)
    actual = kernels.ensemble_mlp(x, weights, biases, activation)
    assert actual.shape == expected.shape == (members, batch, dims[-1]) and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=kernels.rtol, atol=kernels.atol)
    if options.get("sum_loss"):
        expected_grads = torch.autograd.grad(expected.sum(), inputs)
        actual_grads = torch.autograd.grad(actual.sum(), inputs)
    else:
        expected_grads = torch.autograd.grad(expected, inputs, grad_out)
        actual_grads = torch.autograd.grad(actual, inputs, grad_out)
    names = [name for name, t in [("x", x), *[(f"weights[{i}]", w) for i, w in enumerate(weights)],
                                  *[(f"biases[{i}]", b) for i, b in enumerate(biases)]] if t.requires_grad]
    for name, got, want in zip(names, actual_grads, expected_grads):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=kernels.rtol, atol=kernels.atol, msg=lambda m: f"{name}: {m}")


class _LaunchCounter:
    """Stands in for a ``@triton.autotune`` kernel: counts ``kernel[grid](...)`` launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("case", ENSEMBLE_MLP_CASES.values(), ids=ENSEMBLE_MLP_CASES.keys())
def test_ensemble_mlp_matches_ref(kernels, case):
    _ensemble_mlp_check(kernels, case)


@pytest.mark.parametrize("needs, layers_below", [("x", None), ("last-layer", 0)])
def test_ensemble_mlp_backward_runs_only_what_is_needed(kernels, monkeypatch, needs, layers_below):
    """Frozen critics (only x needs a grad): no weight-gradient launch. Only the last layer's
    parameters: no input-gradient launch (nothing below needs dz)."""
    module = kernels.ensemble_mlp_module
    weight_kernel = _LaunchCounter(module._ensemble_grad_weight_kernel)
    input_kernel = _LaunchCounter(module._ensemble_grad_input_kernel)
    monkeypatch.setattr(module, "_ensemble_grad_weight_kernel", weight_kernel)
    monkeypatch.setattr(module, "_ensemble_grad_input_kernel", input_kernel)
    dims = (5, 19, 33, 1)
    x, weights, biases, grad_out = _ensemble_mlp_inputs(37, 2, dims, True, "x" if needs == "x" else "none",
                                                        kernels.device)
    if needs == "last-layer":
        weights[-1].requires_grad_(True)
        biases[-1].requires_grad_(True)
    inputs = [t for t in (x, *weights, *biases) if t.requires_grad]
    actual = torch.autograd.grad(kernels.ensemble_mlp(x, weights, biases, "relu"), inputs, grad_out)
    expected = torch.autograd.grad(ensemble_mlp_ref(x, weights, biases, torch.nn.functional.relu),
                                   inputs, grad_out)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=kernels.rtol, atol=kernels.atol)
    if needs == "x":
        assert (weight_kernel.launches, input_kernel.launches) == (0, len(dims) - 1)
    else:
        assert (weight_kernel.launches, input_kernel.launches) == (1, layers_below)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_ensemble_mlp_without_grad(kernels, activation):
    """Inference path (nothing needs a gradient / no_grad): plain forward, no autograd node."""
    x, weights, biases, _ = _ensemble_mlp_inputs(37, 3, (5, 19, 7), False, "all", kernels.device)
    act_fn = getattr(torch.nn.functional, activation)
    with torch.no_grad():
        actual = kernels.ensemble_mlp(x, weights, biases, activation)
        expected = ensemble_mlp_ref(x, weights, biases, act_fn)
    assert actual.grad_fn is None
    torch.testing.assert_close(actual, expected, rtol=kernels.rtol, atol=kernels.atol)


def test_ensemble_mlp_empty_batch(kernels):
    x, weights, biases, _ = _ensemble_mlp_inputs(0, 2, (5, 19, 1), True, "all", kernels.device)
    out = kernels.ensemble_mlp(x, weights, biases, "relu")
    assert out.shape == (2, 0, 1)
    grads = torch.autograd.grad(out.sum(), [x, *weights, *biases])
    assert grads[0].shape == (0, 5) and all(torch.count_nonzero(g) == 0 for g in grads)


def test_ensemble_mlp_rejects_bad_arguments(kernels):
    x, weights, biases, _ = _ensemble_mlp_inputs(5, 2, (5, 19, 1), True, "none", kernels.device)
    with pytest.raises(ValueError, match="activation"):
        kernels.ensemble_mlp(x, weights, biases, "tanh")
    with pytest.raises(ValueError, match="layer 1"):
        kernels.ensemble_mlp(x, weights, [biases[0], biases[0]], "relu")
    with pytest.raises(ValueError, match="x must be"):
        kernels.ensemble_mlp(x.expand(3, 5, 5), weights, biases, "relu")


# --- sac_update (one whole SAC step, in place) ------------------------------------------------------
# Against sac_update_ref after one step: parameters within 1 % of one Adam step (0.01 lr; see
# tests/test_ops_sac_update.py for why Adam needs a step-relative tolerance), Adam moments rtol 1e-3.
# Observed under the interpreter: parameters <= 1e-9 apart, statistics equal to ~1e-7.

SAC_UPDATE_CASES = {
    "B40-N2-2hidden-target-penalty": {},
    "B30-N3-S11-A3-no-target-penalty-no-alpha": dict(obs_dim=11, act_dim=3, hidden=(24, 12), critics=3, batch=30,
                                                     target_penalty=False, auto_alpha=False),
    "B7-N1-1hidden": dict(hidden=(9,), critics=1, batch=7),
    "B30-no-hidden": dict(hidden=(), batch=30),
    "B40-deterministic-backup-clamped": dict(deterministic_backup=True, target_min=0.0),
    "B40-cql": dict(cql=(6, 15)),
}


@pytest.mark.parametrize("case", SAC_UPDATE_CASES.values(), ids=SAC_UPDATE_CASES.keys())
def test_sac_update_matches_ref(kernels, case):
    from pyscorepen.ops.sac_update import sac_update_ref
    from tests.test_ops_sac_update import MUTATED, clone_args, op_args

    def to_device(args):
        return {k: ([t.to(kernels.device) for t in v] if isinstance(v, list) else
                    v.to(kernels.device) if isinstance(v, torch.Tensor) and k != "steps" else v)
                for k, v in args.items()}

    args = op_args(**case)
    got_args, want_args = to_device(clone_args(args)), clone_args(args)
    got = kernels.sac_update(**got_args)
    want = sac_update_ref(**want_args)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    atol = 0.01 * max(args["actor_lr"], args["critic_lr"])
    for key in MUTATED:
        got_list = got_args[key] if isinstance(got_args[key], list) else [got_args[key]]
        want_list = want_args[key] if isinstance(want_args[key], list) else [want_args[key]]
        for index, (g, w) in enumerate(zip(got_list, want_list)):
            tol = dict(rtol=1e-3, atol=1e-3 * float(w.abs().max())) if key.startswith("exp_avg") else dict(
                rtol=0, atol=atol)
            torch.testing.assert_close(g.cpu(), w, **tol, msg=lambda m: f"{key}[{index}]: {m}")


@pytest.mark.parametrize("algo", ["sac", "combo"])
def test_sac_agent_runs_the_triton_step_when_requested(kernels, monkeypatch, algo):
    """PYSCOREPEN_BACKEND=triton: SAC.update (and COMBO's, its CQL term fused) runs sac_update_triton
    and still matches update_ref."""
    import copy

    from pyscorepen.algos.combo import COMBO, ComboConfig
    from pyscorepen.algos.sac import SAC, SACConfig
    from pyscorepen.ops import backend as ops_backend
    from tests.test_ops_sac_update import make_batch

    monkeypatch.delitem(ops_backend._triton_cache, "sac_update", raising=False)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "triton")
    torch.manual_seed(0)
    extra = {"combo": ComboConfig(num_sampled_actions=3)} if algo == "combo" else {}
    agent = (COMBO if algo == "combo" else SAC)(5, 2, SACConfig(hidden_dims=(16,)), -torch.ones(2), torch.ones(2),
                                                device=kernels.device, **extra)
    ref = copy.deepcopy(agent)
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(5, 2, 20, gen).to(kernels.device) for _ in range(2)]
    assert agent.fused_update_backend(batches[0]) == "triton"
    torch.manual_seed(3)
    for b in batches:
        agent.update(b)
    torch.manual_seed(3)
    for b in batches:
        ref.update_ref(b)
    for name in ("actor", "critic", "critic_target"):
        for key, value in getattr(ref, name).state_dict().items():
            torch.testing.assert_close(getattr(agent, name).state_dict()[key], value, rtol=0, atol=0.01 * 3e-4 * 2)


# --- dynamics_fit_step (one minibatch step of the dynamics fit, in place) ----------------------------
# Against dynamics_fit_step_ref after 4 steps, with the tolerances of tests/test_ops_dynamics_fit_step.py
# (parameters within 1 % of the distance Adam can move them, moments rtol 1e-3, losses rtol 1e-5).

@pytest.mark.parametrize("shape", ["cheetah-O18-E3", "odd-1hidden-E1", "odd-3hidden-B97"])
@pytest.mark.parametrize("saturated", [False, True], ids=["inside", "saturated-bounds"])
def test_dynamics_fit_step_matches_ref(kernels, shape, saturated):
    from pyscorepen.ops.dynamics_fit_step import dynamics_fit_step_ref
    from tests.test_ops_dynamics_fit_step import assert_steps_close, clone_case, make_case, run_steps

    params, states, batches, decays, coef = make_case(shape, saturated=saturated)
    want_params, want_states = clone_case(params, states)
    want_losses = run_steps(dynamics_fit_step_ref, want_params, want_states, batches, decays, coef)
    got_params = [p.to(kernels.device) for p in params]
    got_states = tuple([t.to(kernels.device) if t.dim() else t for t in ts] for ts in states)
    got_batches = [(x.to(kernels.device), y.to(kernels.device)) for x, y in batches]
    losses = run_steps(kernels.dynamics_fit_step, got_params, got_states, got_batches, decays, coef)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=0)
    assert_steps_close([p.cpu() for p in got_params], tuple([t.cpu() for t in ts] for ts in got_states),
                       want_params, want_states)


def test_dynamics_train_epoch_runs_the_triton_step_when_requested(kernels, monkeypatch):
    """PYSCOREPEN_BACKEND=triton: EnsembleDynamics.train_epoch runs dynamics_fit_step_triton and
    still matches the module path (autograd on the reference ops, torch's Adam)."""
    import copy
    import dataclasses

    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
    from pyscorepen.ops import backend as ops_backend

    monkeypatch.delitem(ops_backend._triton_cache, "dynamics_fit_step", raising=False)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "triton")
    torch.manual_seed(0)
    fused = EnsembleDynamics(4, 2, DynamicsConfig(ensemble_size=2, hidden_dims=(16, 16), batch_size=32)).to(
        kernels.device)
    module = copy.deepcopy(fused)
    module.config = dataclasses.replace(fused.config, fused_step=False)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, 6, generator=gen).to(kernels.device), torch.randn(100, 5, generator=gen).to(kernels.device)
    optims = [m.make_optimizer(1e-3) for m in (fused, module)]
    assert fused.fused_step_backend(optims[0], x) == "triton"
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")    # the module path on the reference ops
    assert module.fused_step_backend(optims[1], x) is None
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "triton")
    idx = torch.arange(100, device=kernels.device)
    fused.train_epoch(x, y, idx, optims[0], torch.Generator().manual_seed(2))
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    module.train_epoch(x, y, idx, optims[1], torch.Generator().manual_seed(2))
    for (key, got), want in zip(fused.state_dict().items(), module.state_dict().values()):
        if got.is_floating_point() and torch.isfinite(want).all():
            torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=0.01 * 1e-3 * 4, msg=lambda m: f"{key}: {m}")
