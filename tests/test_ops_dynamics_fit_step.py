"""``dynamics_fit_step`` (one minibatch step of the dynamics fit): every backend and ISA against
``dynamics_fit_step_ref``, and :meth:`EnsembleDynamics.train_batches` on the op against its module
path (the loss, ``backward`` and torch's fused Adam of ``make_optimizer``).

Tolerance (fp32), after N steps, for every parameter: ``atol = 0.01 * lr * N`` (1 % of the
largest distance Adam can move a parameter in N steps), ``rtol = 0``; Adam moments ``rtol = 1e-3``,
``atol = 1e-3 * max|moment|``; the losses ``rtol = 1e-5``. Why not tighter: the op's GEMM
micro-kernels sum in another order and its loss gradient uses polynomial exp / log, so gradients
differ in the last bits, and Adam divides by sqrt(v). Observed at N = 4 (AVX-512, AVX2, generic):
parameters <= 1.9e-6 apart at Hopper sizes (4.6 % of the tolerance), Adam steps identical.
"""
from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
from pyscorepen.ops import dynamics_fit_step as fit_step_module
from pyscorepen.ops.dynamics_fit_step import dynamics_fit_step, dynamics_fit_step_ref
from tests.isa_params import backend_isa_params

HAS_CPP = "cpp" in ops.available_backends("dynamics_fit_step", torch.zeros(1))
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
REAL_CPP_MIN_ROWS = fit_step_module._backend.cpp_min_rows   # before any test patches it
STEPS, LR = 4, 1e-3

# (obs_dim, act_dim, hidden, members, batch); O = obs_dim + 1 outputs (mean | log-variance each)
SHAPES = {
    "hopper-4x200-E7": (11, 3, (200, 200, 200, 200), 7, 256),
    "cheetah-O18-E3": (17, 6, (64, 48), 3, 40),      # O = 18: one full and one 2-lane AVX-512 vector
    "odd-1hidden-E1": (4, 1, (33,), 1, 25),
    "odd-3hidden-B97": (6, 2, (24, 40, 17), 2, 97),
}


def make_case(shape: str, saturated: bool = False):
    """Initial parameters, zero Adam states and STEPS steps on one random minibatch (so its loss must fall). ``saturated`` pushes half of
    the raw log-variances far above max_logvar and half far below min_logvar (the soft bounds' flat
    ends, where softplus switches to its linear branch)."""
    obs_dim, act_dim, hidden, members, batch = SHAPES[shape]
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(obs_dim, act_dim, DynamicsConfig(ensemble_size=members, hidden_dims=hidden))
    out = obs_dim + 1
    with torch.no_grad():
        dynamics.max_logvar.copy_(torch.linspace(0.2, 1.0, out))
        dynamics.min_logvar.copy_(torch.linspace(-9.0, -6.0, out))
        if saturated:
            dynamics.net.layers[-1].bias[:, out:] = torch.where(torch.arange(out) % 2 == 0, 30.0, -30.0)
    weights = [w.detach().clone() for w in dynamics.net.weights()]
    biases = [b.detach().clone() for b in dynamics.net.biases()]
    params = [*weights, *biases, dynamics.max_logvar.detach().clone(), dynamics.min_logvar.detach().clone()]
    states = ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
              [torch.zeros((), dtype=torch.float32) for _ in params])
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(members, batch, obs_dim + act_dim, generator=gen),
                torch.randn(members, batch, out, generator=gen))] * STEPS
    return params, states, batches, dynamics.layer_decays(), dynamics.config.logvar_bound_coef


def run_steps(step_fn, params, states, batches, decays, coef):
    L = (len(params) - 2) // 2
    losses = []
    for x, y in batches:
        losses.append(float(step_fn(x, y, params[:L], params[L:2 * L], params[-2], params[-1], *states, decays,
                                    LR, 0.9, 0.999, 1e-8, coef)))
    return losses


def clone_case(params, states):
    return [p.clone() for p in params], tuple([t.clone() for t in ts] for ts in states)


def assert_steps_close(got_params, got_states, want_params, want_states, steps=STEPS):
    for i, (got, want) in enumerate(zip(got_params, want_params)):
        torch.testing.assert_close(got, want, rtol=0, atol=0.01 * LR * steps, msg=lambda m: f"param {i}: {m}")
    for name, got_list, want_list in zip(("exp_avg", "exp_avg_sq"), got_states[:2], want_states[:2]):
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            scale = float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * scale, msg=lambda m: f"{name} {i}: {m}")
    assert all(float(s) == steps for s in got_states[2]) and all(float(s) == steps for s in want_states[2])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend, cpu_isa", backend_isa_params("dynamics_fit_step"), indirect=["cpu_isa"])
def test_matches_ref(backend, cpu_isa, shape):
    params, states, batches, decays, coef = make_case(shape)
    want_params, want_states = clone_case(params, states)
    want_losses = run_steps(dynamics_fit_step_ref, want_params, want_states, batches, decays, coef)
    losses = run_steps(lambda *a: dynamics_fit_step(*a, backend=backend), params, states, batches, decays, coef)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=0)
    assert_steps_close(params, states, want_params, want_states)
    assert want_losses[-1] < want_losses[0]   # the steps train (a wrong sign would not)


@pytest.mark.parametrize("backend, cpu_isa", backend_isa_params("dynamics_fit_step"), indirect=["cpu_isa"])
def test_saturated_logvar_bounds(backend, cpu_isa):
    """Raw log-variances 30 above max / below min: softplus' linear branch and its gradient's
    0 / 1 ends, where a wrong bound gradient would show in max_logvar / min_logvar."""
    params, states, batches, decays, coef = make_case("cheetah-O18-E3", saturated=True)
    want_params, want_states = clone_case(params, states)
    want_losses = run_steps(dynamics_fit_step_ref, want_params, want_states, batches, decays, coef)
    losses = run_steps(lambda *a: dynamics_fit_step(*a, backend=backend), params, states, batches, decays, coef)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=0)
    assert_steps_close(params, states, want_params, want_states)


def test_ref_is_the_module_loss_and_optimizer():
    """The reference is EnsembleDynamics.loss (with L2) + backward + make_optimizer's Adam, step by step."""
    obs_dim, act_dim, hidden, members, batch = SHAPES["odd-3hidden-B97"]
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(obs_dim, act_dim, DynamicsConfig(ensemble_size=members, hidden_dims=hidden))
    optim = dynamics.make_optimizer(LR)
    params, states, batches, decays, coef = make_case("odd-3hidden-B97")
    with torch.no_grad():
        for p, q in zip([*dynamics.net.weights(), *dynamics.net.biases(), dynamics.max_logvar, dynamics.min_logvar],
                        params):
            p.copy_(q)
    want = run_steps(dynamics_fit_step_ref, params, states, batches, decays, coef)
    got = []
    for x, y in batches:
        loss = dynamics.loss(x, y, l2=False)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        got.append(float(loss.detach()))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    module_params = [*dynamics.net.weights(), *dynamics.net.biases(), dynamics.max_logvar, dynamics.min_logvar]
    for i, (p, q) in enumerate(zip(module_params, params)):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0.01 * LR * STEPS, msg=lambda m: f"param {i}: {m}")


def _fit_models(members=3, hidden=(32, 32)):
    torch.manual_seed(0)
    fused = EnsembleDynamics(5, 2, DynamicsConfig(ensemble_size=members, hidden_dims=hidden, batch_size=64))
    module = copy.deepcopy(fused)
    module.config = dataclasses.replace(fused.config, fused_step=False)
    return fused, module


@pytest.fixture
def cpp_policy(monkeypatch):
    """The automatic choice with the op's ISA policy, but no batch-size threshold (the SiLU ensemble
    kernels' threshold is 1 024 rows on Intel CPUs, which would send these small fits to the module
    path) and an allocator that keeps its buffers (what tune_malloc gives the CLIs; the test process
    itself is left alone)."""
    isa = fit_step_module._backend.cpu_isa()
    if fit_step_module._backend.builtin_min_rows("dynamics_fit_step", isa) >= fit_step_module._backend.NEVER:
        pytest.skip(f"the op is not chosen automatically on the {isa} ISA")
    monkeypatch.setattr(fit_step_module._backend, "cpp_min_rows", lambda shape_class: 0)
    monkeypatch.setattr(fit_step_module.allocator, "buffers_kept", lambda: True)


@needs_cpp
def test_train_epoch_on_the_op_matches_the_module_path(cpp_policy):
    fused, module = _fit_models()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(700, 7, generator=gen), torch.randn(700, 6, generator=gen)
    optims = [m.make_optimizer(LR) for m in (fused, module)]
    assert fused.fused_step_backend(optims[0], x) == "cpp" and module.fused_step_backend(optims[1], x) is None
    train_idx = torch.arange(700)
    for epoch in range(2):
        losses = [m.train_epoch(x, y, train_idx, o, torch.Generator().manual_seed(epoch))
                  for m, o in zip((fused, module), optims)]
        torch.testing.assert_close(float(losses[0][0]), float(losses[1][0]), rtol=1e-5, atol=0)
    steps = 2 * -(-700 // 64)
    for (key, got), want in zip(fused.state_dict().items(), module.state_dict().values()):
        if got.is_floating_point() and torch.isfinite(want).all():
            torch.testing.assert_close(got, want, rtol=0, atol=0.01 * LR * steps, msg=lambda m: f"{key}: {m}")
    # the op stepped the optimizer's own states: they save and load like the module path's
    got_state, want_state = optims[0].state_dict()["state"], optims[1].state_dict()["state"]
    assert got_state.keys() == want_state.keys()
    assert all(float(got_state[i]["step"]) == float(want_state[i]["step"]) == steps for i in want_state)


@needs_cpp
def test_fused_step_backend_decision(monkeypatch, caplog, cpp_policy):
    fused, _ = _fit_models()
    x = torch.zeros(4, 7)
    optim = fused.make_optimizer(LR)
    assert fused.fused_step_backend(optim, x) == "cpp"
    # an optimizer the op does not reproduce: the module path
    assert fused.fused_step_backend(torch.optim.Adam(fused.parameters(), lr=LR), x) is None
    assert fused.fused_step_backend(torch.optim.SGD(fused.parameters(), lr=LR), x) is None
    amsgrad = fused.make_optimizer(LR)
    amsgrad.param_groups[0]["amsgrad"] = True
    assert fused.fused_step_backend(amsgrad, x) is None
    other_lr = fused.make_optimizer(LR)
    other_lr.param_groups[-1]["lr"] = 2 * LR
    assert fused.fused_step_backend(other_lr, x) is None
    # the config switch, an explicit backend, the ISA policy
    monkeypatch.setattr(fused.config, "fused_step", False)
    assert fused.fused_step_backend(optim, x) is None
    monkeypatch.setattr(fused.config, "fused_step", True)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert fused.fused_step_backend(optim, x) is None
    monkeypatch.delenv("PYSCOREPEN_BACKEND")
    monkeypatch.setattr(fit_step_module._backend, "cpp_min_rows", lambda shape_class: fused.config.batch_size + 1)
    assert fused.fused_step_backend(optim, x) is None   # the policy's threshold is above the batch
    monkeypatch.setattr(fit_step_module._backend, "cpp_min_rows", lambda shape_class: fused.config.batch_size)
    assert fused.fused_step_backend(optim, x) == "cpp"
    monkeypatch.setattr(fit_step_module.allocator, "buffers_kept", lambda: False)
    monkeypatch.setattr(fit_step_module, "_told_about_allocator", False)
    with caplog.at_level(logging.INFO, logger="pyscorepen"):
        assert fused.fused_step_backend(optim, x) is None   # glibc would fault the op's buffers in every step
        assert fused.fused_step_backend(optim, x) is None
    said = [r.getMessage() for r in caplog.records if "tune_malloc()" in r.getMessage()]
    assert len(said) == 1 and "module path" in said[0], caplog.text   # once per process, with the remedy
    monkeypatch.setattr(fit_step_module, "_told_about_allocator", False)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")   # an explicit choice: nothing to explain
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyscorepen"):
        assert fused.fused_step_backend(optim, x) is None
    assert "tune_malloc()" not in caplog.text
    monkeypatch.delenv("PYSCOREPEN_BACKEND")
    monkeypatch.setattr(fit_step_module.allocator, "buffers_kept", lambda: True)
    assert fused.fused_step_backend(optim, x) == "cpp"
    monkeypatch.setattr(fit_step_module._backend, "cpp_min_rows", REAL_CPP_MIN_ROWS)
    with fit_step_module._backend.forced_cpu_isa("generic"):   # unmeasured there: the module path
        assert fused.fused_step_backend(optim, x) is None


@needs_cpp
def test_independent_of_thread_count():
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            params, states, batches, decays, coef = make_case("hopper-4x200-E7")
            losses = run_steps(lambda *a: dynamics_fit_step(*a, backend="cpp"), params, states, batches[:2], decays,
                               coef)
            results.append((losses, params))
    finally:
        torch.set_num_threads(before)
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@needs_cpp
def test_opcheck():
    params, states, batches, decays, coef = make_case("odd-1hidden-E1")
    x, y = batches[0]
    L = (len(params) - 2) // 2
    torch.library.opcheck(torch.ops.pyscorepen.dynamics_fit_step.default,
                          (x, y, params[:L], params[L:2 * L], params[-2], params[-1], *states, decays, LR, 0.9, 0.999,
                           1e-8, coef))


@needs_cpp
@pytest.mark.parametrize("bad, match", [
    ("target", "target must be"),
    ("decays", "one weight decay per layer"),
    ("states", "expected Adam states"),
    ("dtype", "float32"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    params, states, batches, decays, coef = make_case("odd-1hidden-E1")
    x, y = batches[0]
    L = (len(params) - 2) // 2
    if bad == "target":
        y = y[..., :-1]
    elif bad == "decays":
        decays = decays[:-1]
    elif bad == "states":
        states = tuple(s[:-1] for s in states)
    elif bad == "dtype":
        x = x.double()
    with pytest.raises(RuntimeError, match=match):
        torch.ops.pyscorepen.dynamics_fit_step(x, y, params[:L], params[L:2 * L], params[-2], params[-1], *states,
                                               decays, LR, 0.9, 0.999, 1e-8, coef)
