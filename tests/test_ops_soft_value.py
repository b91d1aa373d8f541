"""``soft_value``: every available backend against ``soft_value_ref`` (SAC Eq. 3 target value).

Tolerances (fp32): rtol = atol = 1e-4. The C++ AVX-512 / AVX2 kernel differs from the reference in
summation order and in its polynomial exp/log/tanh (~1e-7 relative); observed max abs error
~2e-5 on values of magnitude ~70 (3 hidden layers, log_std at the upper clamp), ~1e-6 elsewhere.
The generic (ATen) path runs the reference's ops and matches it exactly.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.models.nets import QEnsemble, TanhGaussianActor, mlp_weights
from pyscorepen.ops import BackendUnavailableError, relu_mlp_ref, soft_value, soft_value_ref
from tests.isa_params import backend_isa_params, cpp_isa_params, restored_threads

RTOL, ATOL = 1e-4, 1e-4
CPU_BACKENDS = [name for name in ("ref", "cpp") if name in ops.available_backends("soft_value", torch.zeros(1))]
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def make_inputs(batch, obs_dim, act_dim, critics, hidden, alpha=0.3, log_std_shift=0.0, seed=0,
                dtype=torch.float32):
    """Random soft_value arguments: ReLU actor S -> hidden... -> 2A and N critics S+A -> hidden... -> 1.

    ``log_std_shift`` is added to the log_std half of the actor's last bias (+-8 drives most
    rows into the upper / lower clamp).
    """
    gen = torch.Generator().manual_seed(seed)
    actor_dims = [obs_dim, *hidden, 2 * act_dim]
    critic_dims = [obs_dim + act_dim, *hidden, 1]
    actor_weights = [torch.randn(i, o, generator=gen, dtype=dtype) / i**0.5 for i, o in zip(actor_dims, actor_dims[1:])]
    actor_biases = [0.1 * torch.randn(o, generator=gen, dtype=dtype) for o in actor_dims[1:]]
    actor_biases[-1][act_dim:] += log_std_shift
    critic_weights = [torch.randn(critics, i, o, generator=gen, dtype=dtype) / i**0.5
                      for i, o in zip(critic_dims, critic_dims[1:])]
    critic_biases = [0.1 * torch.randn(critics, o, generator=gen, dtype=dtype) for o in critic_dims[1:]]
    return dict(
        obs=torch.randn(batch, obs_dim, generator=gen, dtype=dtype),                     # [B, S]
        noise=torch.randn(batch, act_dim, generator=gen, dtype=dtype),                   # [B, A]
        actor_weights=actor_weights, actor_biases=actor_biases,
        critic_weights=critic_weights, critic_biases=critic_biases,
        action_scale=0.5 + torch.rand(act_dim, generator=gen, dtype=dtype),              # [A]
        action_offset=0.1 * torch.randn(act_dim, generator=gen, dtype=dtype),            # [A]
        alpha=torch.tensor(alpha, dtype=dtype),                                          # []
        log_std_min=LOG_STD_MIN, log_std_max=LOG_STD_MAX,
    )


# (batch, obs_dim, act_dim, critics, hidden, alpha, log_std_shift)
CASES = {
    "B1-N2-sac-sizes": (1, 17, 6, 2, (256, 256), 0.3, 0.0),
    "B333-N2-2hidden-odd": (333, 17, 6, 2, (37, 53), 0.3, 0.0),
    "B333-N5-A1-alpha0": (333, 11, 1, 5, (37, 53), 0.0, 0.0),
    "B97-N1-3hidden-odd": (97, 5, 3, 1, (17, 33, 65), 0.3, 0.0),
    "B50-N2-log-std-upper-clamp": (50, 17, 6, 2, (40, 24), 0.3, 8.0),
    "B50-N2-log-std-lower-clamp": (50, 17, 6, 2, (40, 24), 0.3, -8.0),
    "B40-N3-1hidden-A17": (40, 3, 17, 3, (20,), 0.3, 0.0),
    "B256-N2-sac-sizes": (256, 17, 6, 2, (256, 256), 0.2, 0.0),
    "B10007-N2-many-chunks": (10007, 6, 2, 2, (10,), 0.3, 0.0),
}


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("soft_value"), indirect=["cpu_isa"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(cpu_isa, backend, case):
    inputs = make_inputs(*CASES[case])
    with torch.no_grad():
        got = soft_value(**inputs, backend=backend)
    want = soft_value_ref(**inputs)
    assert got.shape == want.shape == (inputs["obs"].shape[0],) and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_clamp_cases_hit_both_bounds():
    """The clamp cases really drive log_std into the bounds (so the kernel's clamp is exercised)."""
    for case, bound in (("B50-N2-log-std-upper-clamp", LOG_STD_MAX), ("B50-N2-log-std-lower-clamp", LOG_STD_MIN)):
        inputs = make_inputs(*CASES[case])
        act_dim = inputs["noise"].shape[1]
        log_std = relu_mlp_ref(inputs["obs"], inputs["actor_weights"], inputs["actor_biases"])[:, act_dim:]
        clamped = (log_std >= bound) if bound == LOG_STD_MAX else (log_std <= bound)
        assert clamped.float().mean() > 0.9, case


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("soft_value"), indirect=True)
def test_cpp_code_paths(cpu_isa):
    """Every CPU path of the C++ op: AVX-512 and AVX2 micro-kernels and the chunked ATen fallback."""
    for case in ("B333-N2-2hidden-odd", "B1-N2-sac-sizes", "B333-N5-A1-alpha0", "B50-N2-log-std-upper-clamp",
                 "B50-N2-log-std-lower-clamp", "B40-N3-1hidden-A17"):
        inputs = make_inputs(*CASES[case], seed=1)
        torch.testing.assert_close(soft_value(**inputs, backend="cpp"), soft_value_ref(**inputs),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
def test_cpp_non_contiguous_and_threads():
    inputs = make_inputs(*CASES["B333-N2-2hidden-odd"], seed=2)
    inputs["obs"] = torch.randn(inputs["obs"].shape[1], 333).t()                    # [B, S], strided
    inputs["noise"] = torch.randn(333, 2 * inputs["noise"].shape[1])[:, ::2]         # [B, A], strided
    inputs["actor_weights"][1] = inputs["actor_weights"][1].t().contiguous().t()
    inputs["critic_weights"][0] = inputs["critic_weights"][0].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["critic_biases"][-1] = torch.randn(1, 2).t()                             # [N, 1], strided
    with restored_threads():
        for n in (1, max(2, torch.get_num_threads())):
            torch.set_num_threads(n)
            torch.testing.assert_close(soft_value(**inputs, backend="cpp"), soft_value_ref(**inputs),
                                       rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("soft_value"), indirect=True)
def test_cpp_skewed_weight_copies(cpu_isa):
    """From 384 rows per thread the kernels read copies of the 128- and 256-wide layers' weights
    with 16 more columns (csrc/pyscorepen.cpp: skew_weights): 400 rows on 1 thread and 800 on 2,
    critic members at the skewed stride, one weight non-contiguous; 300 rows stays unskewed."""
    with restored_threads():
        for n_threads, batch in ((1, 400), (2, 800), (1, 300)):
            torch.set_num_threads(n_threads)
            inputs = make_inputs(batch, 17, 6, 2, (256, 128), seed=4)
            inputs["critic_weights"][1] = inputs["critic_weights"][1].transpose(1, 2).contiguous().transpose(1, 2)
            torch.testing.assert_close(soft_value(**inputs, backend="cpp"), soft_value_ref(**inputs),
                                       rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
def test_cpp_dtype_and_bad_inputs():
    inputs64 = make_inputs(*CASES["B97-N1-3hidden-odd"], dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float32"):
        soft_value(**inputs64, backend="cpp")
    # automatic choice falls back to the reference for float64
    assert ops.resolve_backend("soft_value", inputs64["obs"]) == "ref"
    torch.testing.assert_close(soft_value(**inputs64), soft_value_ref(**inputs64))
    inputs = make_inputs(*CASES["B97-N1-3hidden-odd"])
    bad_head = dict(actor_weights=[*inputs["actor_weights"][:-1], torch.randn(65, 5)],    # 5 != 2A = 6
                    actor_biases=[*inputs["actor_biases"][:-1], torch.randn(5)])
    with pytest.raises(RuntimeError, match="out = 2A"):
        torch.ops.pyscorepen.soft_value(**{**inputs, **bad_head})
    with pytest.raises(RuntimeError, match="noise \\[B, A\\]"):
        torch.ops.pyscorepen.soft_value(**{**inputs, "noise": torch.randn(96, 3)})
    with pytest.raises(RuntimeError, match="last layer must output 1"):
        torch.ops.pyscorepen.soft_value(**{**inputs, "critic_weights": inputs["critic_weights"][:-1],
                                           "critic_biases": inputs["critic_biases"][:-1]})
    with pytest.raises(RuntimeError, match="alpha must have one element"):
        torch.ops.pyscorepen.soft_value(**{**inputs, "alpha": torch.ones(2)})


def test_batch_zero():
    inputs = make_inputs(0, 5, 3, 2, (8,))
    for backend in CPU_BACKENDS:
        assert soft_value(**inputs, backend=backend).shape == (0,)


def test_matches_actor_and_q_ensemble_modules():
    """The op is the target value the modules compute: min_k Q_k(s, a) - alpha log pi(a|s)."""
    obs_dim, act_dim, batch, alpha = 17, 6, 64, 0.25
    torch.manual_seed(0)
    low, high = -torch.ones(act_dim), 2 * torch.ones(act_dim)
    actor = TanhGaussianActor(obs_dim, act_dim, (64, 48), low, high)
    critic = QEnsemble(2, obs_dim, act_dim, (64, 48))
    obs = torch.randn(batch, obs_dim)
    with torch.no_grad():
        torch.manual_seed(1)
        action, log_prob = actor(obs)                                   # draws eps with torch.randn_like
        want = critic(obs, action).min(0).values - alpha * log_prob     # [B]
        torch.manual_seed(1)
        noise = torch.randn(batch, act_dim)                             # the same eps
        actor_weights, actor_biases = mlp_weights(actor.net)
        for backend in CPU_BACKENDS:
            got = soft_value(obs, noise, actor_weights, actor_biases, [layer.weight for layer in critic.layers],
                             [layer.bias for layer in critic.layers], actor.action_scale, actor.action_offset,
                             torch.tensor(alpha), actor.LOG_STD_MIN, actor.LOG_STD_MAX, backend=backend)
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_alpha_zero_is_min_q():
    """alpha = 0 (MOBILE's target critics): the value is min_k Q_k(s, a) alone."""
    inputs = make_inputs(*CASES["B333-N5-A1-alpha0"])
    mu, log_std = relu_mlp_ref(inputs["obs"], inputs["actor_weights"], inputs["actor_biases"]).chunk(2, -1)
    u = mu + log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp() * inputs["noise"]
    action = torch.tanh(u) * inputs["action_scale"] + inputs["action_offset"]
    x = torch.cat([inputs["obs"], action], -1)
    q = torch.stack([relu_mlp_ref(x, [w[k] for w in inputs["critic_weights"]], [b[k] for b in inputs["critic_biases"]])
                     for k in range(5)]).squeeze(-1)                                 # [N, B]
    for backend in CPU_BACKENDS:
        torch.testing.assert_close(soft_value(**inputs, backend=backend), q.amin(0), rtol=RTOL, atol=ATOL)
    assert math.isfinite(soft_value_ref(**inputs).sum().item())


def test_opcheck():
    for case in ("B97-N1-3hidden-odd", "B1-N2-sac-sizes", "B40-N3-1hidden-A17"):
        inputs = make_inputs(*CASES[case])
        torch.library.opcheck(torch.ops.pyscorepen.soft_value.default, tuple(inputs.values()))


def test_torch_compile_fullgraph_aot_eager():
    """Dynamo + fake kernel + AOT dispatch see one op (fast: no code generation)."""
    inputs = make_inputs(*CASES["B97-N1-3hidden-odd"])

    def bellman_target(*args, rewards, dones):
        return rewards + 0.99 * (1 - dones) * torch.ops.pyscorepen.soft_value(*args)

    rewards, dones = torch.randn(97), (torch.rand(97) < 0.1).float()
    compiled = torch.compile(bellman_target, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs.values(), rewards=rewards, dones=dones),
                               bellman_target(*inputs.values(), rewards=rewards, dones=dones), rtol=RTOL, atol=ATOL)


def test_forced_ref_backend(monkeypatch):
    inputs = make_inputs(*CASES["B97-N1-3hidden-odd"])
    expected = soft_value_ref(**inputs)
    assert torch.equal(soft_value(**inputs, backend="ref"), expected)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert ops.resolve_backend("soft_value", inputs["obs"]) == "ref"
    assert torch.equal(soft_value(**inputs), expected)


def test_unavailable_backend_raises(monkeypatch):
    inputs = make_inputs(*CASES["B1-N2-sac-sizes"])
    with pytest.raises(BackendUnavailableError, match="cuda"):
        soft_value(**inputs, backend="cuda")
    with pytest.raises(ValueError, match="unknown pyscorepen backend"):
        soft_value(**inputs, backend="fortran")
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="PYSCOREPEN_BACKEND"):
        soft_value(**inputs)


STALE_BUILD_SCRIPT = textwrap.dedent("""
    import sys, types
    import torch
    # A stale pyscorepen._C: built from an older csrc/ that declares score_penalty only.
    stale = torch.library.Library("pyscorepen", "DEF")
    stale.define("score_penalty(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor")
    sys.modules["pyscorepen._C"] = types.ModuleType("pyscorepen._C")
    import pyscorepen.ops as ops
    from pyscorepen.ops import _registry
    assert ops.EXTENSION_LOADED and set(_registry.MISSING_FROM_EXTENSION) == {
        "rollout_step", "soft_value", "ensemble_mlp_forward", "ensemble_mlp_backward", "sac_update",
        "dynamics_fit_step", "ensemble_mlp"}
    for op, schema in _registry.SCHEMAS.items():
        assert str(getattr(torch.ops.pyscorepen, op).default._schema) == "pyscorepen::" + schema
        assert torch._C._dispatch_has_kernel_for_dispatch_key("pyscorepen::" + op, "CPU")
    obs, noise = torch.randn(5, 3), torch.randn(5, 2)
    args = (obs, noise, [torch.randn(3, 8), torch.randn(8, 4)], [torch.randn(8), torch.randn(4)],
            [torch.randn(2, 5, 8), torch.randn(2, 8, 1)], [torch.randn(2, 8), torch.randn(2, 1)],
            torch.ones(2), torch.zeros(2), torch.tensor(0.2), -5.0, 2.0)
    torch.testing.assert_close(torch.ops.pyscorepen.soft_value(*args), ops.soft_value_ref(*args))
    torch.library.opcheck(torch.ops.pyscorepen.soft_value.default, args)
    # an explicit cpp request for an op the stale build lacks fails loudly; auto falls back to ref
    assert "cpp" not in ops.available_backends("soft_value", obs)
    assert ops.resolve_backend("soft_value", obs) == "ref"
    try:
        ops.soft_value(*args, backend="cpp")
    except ops.BackendUnavailableError as error:
        assert "older csrc" in str(error)
    else:
        raise AssertionError("backend='cpp' must fail for an op missing from the extension")
    print("STALE-OK")
""")


def test_stale_extension_gets_missing_ops_from_python():
    """An extension built from an older csrc/ (some schemas missing): the missing ops are defined
    from Python with the reference kernels, and one warning line names them."""
    env = {**os.environ}
    env.pop("PYSCOREPEN_BACKEND", None)
    env.pop("PYSCOREPEN_DISABLE_EXT", None)
    result = subprocess.run([sys.executable, "-c", STALE_BUILD_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "STALE-OK" in result.stdout
    warning_lines = [line for line in result.stderr.splitlines() if "pyscorepen" in line]
    assert len(warning_lines) == 1 and "rollout_step, soft_value" in warning_lines[0], result.stderr


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _triton_importable(), reason="triton is not importable")
def test_triton_backend_interpreted():
    """``backend="triton"`` on tiny shapes: CUDA tensors with a GPU, else CPU under TRITON_INTERPRET=1.

    Skipped while ``pyscorepen.kernels`` has no ``soft_value_triton``.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 f"{__file__}::test_triton_backend_interpreted"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return
    probe = torch.zeros(1, device=device)
    if "triton" not in ops.available_backends("soft_value", probe):
        pytest.skip("pyscorepen.kernels has no usable soft_value_triton")
    for case in ("B97-N1-3hidden-odd", "B50-N2-log-std-lower-clamp", "B40-N3-1hidden-A17"):
        batch, *rest = CASES[case]
        inputs = make_inputs(min(batch, 9), *rest)
        inputs = {k: ([t.to(device) for t in v] if isinstance(v, list) else
                      v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        torch.testing.assert_close(soft_value(**inputs, backend="triton"), soft_value_ref(**inputs),
                                   rtol=RTOL, atol=ATOL)
