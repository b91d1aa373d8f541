"""``rollout_step``: every available backend against ``rollout_step_ref``.

Tolerances (fp32): rtol = atol = 1e-4. The C++ kernel differs from the reference only in
summation order and in its polynomial exp/log (~1e-7 relative); observed max abs error is
~1e-5 on outputs of magnitude ~10 (score penalty of a 4x200 net), ~1e-6 elsewhere.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.ops import BackendUnavailableError, RolloutStepOut, rollout_step, rollout_step_ref
from tests.isa_params import backend_isa_params, cpp_isa_params, restored_threads

RTOL, ATOL = 1e-4, 1e-4
CPU_BACKENDS = [name for name in ("ref", "cpp") if name in ops.available_backends("rollout_step", torch.zeros(1))]


def make_inputs(batch, obs_dim, act_dim, members, hidden, score_hidden, seed=0, dtype=torch.float32):
    """Random rollout_step arguments; ``score_hidden=None`` means no score network."""
    gen = torch.Generator().manual_seed(seed)
    in_dim, out_dim = obs_dim + act_dim, 2 * (obs_dim + 1)
    dims = [in_dim, *hidden, out_dim]
    weights = [torch.randn(members, i, o, generator=gen, dtype=dtype) / i**0.5 for i, o in zip(dims, dims[1:])]
    biases = [0.1 * torch.randn(members, o, generator=gen, dtype=dtype) for o in dims[1:]]
    score_weights, score_biases = [], []
    if score_hidden is not None:
        score_dims = [in_dim, *score_hidden, in_dim]
        score_weights = [torch.randn(i, o, generator=gen, dtype=dtype) / i**0.5
                         for i, o in zip(score_dims, score_dims[1:])]
        score_biases = [0.1 * torch.randn(o, generator=gen, dtype=dtype) for o in score_dims[1:]]
    return dict(
        obs=torch.randn(batch, obs_dim, generator=gen, dtype=dtype),                    # [B, S]
        actions=2 * torch.rand(batch, act_dim, generator=gen, dtype=dtype) - 1,         # [B, A]
        input_mean=0.1 * torch.randn(in_dim, generator=gen, dtype=dtype),              # [S+A]
        input_std=0.5 + torch.rand(in_dim, generator=gen, dtype=dtype),                # [S+A]
        weights=weights, biases=biases,
        max_logvar=0.5 + 0.1 * torch.randn(obs_dim + 1, generator=gen, dtype=dtype),   # [S+1]
        min_logvar=-10 + torch.randn(obs_dim + 1, generator=gen, dtype=dtype),         # [S+1]
        member_index=torch.randint(0, members, (batch,), generator=gen),               # [B]
        noise=torch.randn(batch, obs_dim + 1, generator=gen, dtype=dtype),             # [B, S+1]
        score_weights=score_weights, score_biases=score_biases,
    )


# (batch, obs_dim, act_dim, members, hidden, score_hidden)
CASES = {
    "B1-E1-1hidden-noscore": (1, 3, 2, 1, (8,), None),
    "B333-E7-2hidden-odd": (333, 11, 3, 7, (37, 53), (19,)),
    "B50-E3-3hidden-odd": (50, 5, 1, 3, (17, 33, 65), (40, 24)),
    "B333-E7-mopo-4x200": (333, 17, 6, 7, (200, 200, 200, 200), (256, 256)),
    "B2-E7-4x200-noscore": (2, 17, 6, 7, (200, 200, 200, 200), None),
    "B1000-E5-wide-deep": (1000, 3, 1, 5, (130, 70, 16, 201), (15, 33, 17)),
    "B10007-E2-many-chunks": (10007, 4, 2, 2, (9,), (5,)),
}


def assert_matches_reference(out: RolloutStepOut, inputs: dict) -> None:
    expected = rollout_step_ref(**inputs)
    assert isinstance(out, RolloutStepOut)
    for name, got, want in zip(RolloutStepOut._fields, out, expected):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("rollout_step"), indirect=["cpu_isa"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(cpu_isa, backend, case):
    inputs = make_inputs(*CASES[case])
    with torch.no_grad():
        assert_matches_reference(rollout_step(**inputs, backend=backend), inputs)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("rollout_step"), indirect=True)
def test_cpp_code_paths(cpu_isa):
    """Every CPU path of the C++ op: AVX-512 and AVX2 micro-kernels and the chunked ATen fallback."""
    for case in ("B333-E7-2hidden-odd", "B1-E1-1hidden-noscore", "B1000-E5-wide-deep"):
        inputs = make_inputs(*CASES[case], seed=1)
        assert_matches_reference(rollout_step(**inputs, backend="cpp"), inputs)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
def test_cpp_non_contiguous_and_threads():
    inputs = make_inputs(*CASES["B333-E7-2hidden-odd"], seed=2)
    inputs["obs"] = torch.randn(inputs["obs"].shape[1], 333).t()                  # [B, S], strided
    inputs["weights"][0] = inputs["weights"][0].transpose(1, 2).contiguous().transpose(1, 2)
    with restored_threads():
        for n in (1, max(2, torch.get_num_threads())):
            torch.set_num_threads(n)
            assert_matches_reference(rollout_step(**inputs, backend="cpp"), inputs)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("rollout_step"), indirect=True)
def test_cpp_skewed_weight_copies(cpu_isa):
    """From 384 rows per thread the kernels read copies of the 128- and 256-wide layers' weights
    with 16 more columns (csrc/pyscorepen.cpp: skew_weights), ensemble members at the skewed
    stride: 400 rows on 1 thread, 800 on 2."""
    with restored_threads():
        for n_threads, batch in ((1, 400), (2, 800)):
            torch.set_num_threads(n_threads)
            inputs = make_inputs(batch, 11, 3, 3, (256, 128), (128, 256), seed=4)
            with torch.no_grad():
                assert_matches_reference(rollout_step(**inputs, backend="cpp"), inputs)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
def test_cpp_rejects_bad_inputs():
    inputs = make_inputs(*CASES["B50-E3-3hidden-odd"])
    with pytest.raises(RuntimeError, match="member_index out of range"):
        torch.ops.pyscorepen.rollout_step(**{**inputs, "member_index": inputs["member_index"] + 3})
    with pytest.raises(BackendUnavailableError, match="float32"):
        rollout_step(**make_inputs(*CASES["B50-E3-3hidden-odd"], dtype=torch.float64), backend="cpp")


def test_zero_noise_gives_member_mean():
    """noise = 0: next_obs - obs and the reward are the chosen member's mean prediction."""
    inputs = make_inputs(*CASES["B50-E3-3hidden-odd"])
    inputs["noise"] = torch.zeros_like(inputs["noise"])
    out = rollout_step(**inputs)
    x = (torch.cat([inputs["obs"], inputs["actions"]], -1) - inputs["input_mean"]) / inputs["input_std"]
    mean = ops.ensemble_mlp_ref(x, inputs["weights"], inputs["biases"])[..., : inputs["obs"].shape[1] + 1]
    chosen = mean[inputs["member_index"], torch.arange(50)]                        # [B, S+1]
    torch.testing.assert_close(out.next_obs - inputs["obs"], chosen[:, :-1], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out.rewards, chosen[:, -1], rtol=RTOL, atol=ATOL)


def test_opcheck():
    for case in ("B50-E3-3hidden-odd", "B1-E1-1hidden-noscore"):
        inputs = make_inputs(*CASES[case])
        torch.library.opcheck(torch.ops.pyscorepen.rollout_step.default, tuple(inputs.values()))


def test_torch_compile_fullgraph_aot_eager():
    """Dynamo + fake kernel + AOT dispatch see one op (fast: no code generation)."""
    inputs = make_inputs(*CASES["B50-E3-3hidden-odd"])

    def step(*args):
        next_obs, rewards, mopo, score = torch.ops.pyscorepen.rollout_step(*args)
        return next_obs, rewards - 0.5 * mopo - 0.1 * score

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*inputs.values()), step(*inputs.values())):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # inductor compiles C++ on CPU: ~40 s on 2 cores
def test_torch_compile_fullgraph_inductor():
    inputs = make_inputs(*CASES["B50-E3-3hidden-odd"])

    def step(*args):
        next_obs, rewards, mopo, score = torch.ops.pyscorepen.rollout_step(*args)
        return next_obs, rewards - 0.5 * mopo - 0.1 * score

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(*inputs.values()), step(*inputs.values())):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_forced_ref_backend(monkeypatch):
    inputs = make_inputs(*CASES["B50-E3-3hidden-odd"])
    expected = rollout_step_ref(**inputs)
    for got, want in zip(rollout_step(**inputs, backend="ref"), expected):
        assert torch.equal(got, want)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert ops.resolve_backend("rollout_step", inputs["obs"]) == "ref"
    for got, want in zip(rollout_step(**inputs), expected):
        assert torch.equal(got, want)


def test_unavailable_backend_raises():
    inputs = make_inputs(*CASES["B1-E1-1hidden-noscore"])
    with pytest.raises(BackendUnavailableError, match="cuda"):
        rollout_step(**inputs, backend="cuda")
    with pytest.raises(ValueError, match="unknown pyscorepen backend"):
        rollout_step(**inputs, backend="fortran")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


TRITON_CASES = ["B1-E1-1hidden-noscore", "B50-E3-3hidden-odd"]


@pytest.mark.skipif(not _triton_importable(), reason="triton is not importable")
def test_triton_backend_interpreted():
    """``backend="triton"`` on tiny shapes: CUDA tensors with a GPU, else CPU under TRITON_INTERPRET=1."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        _rerun_with_interpreter("test_triton_backend_interpreted")
        return
    for case in TRITON_CASES:
        batch, obs_dim, act_dim, members, hidden, score_hidden = CASES[case]
        inputs = make_inputs(min(batch, 9), obs_dim, act_dim, members, hidden, score_hidden)
        inputs = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in inputs.items()}
        out = rollout_step(**inputs, backend="triton")
        assert_matches_reference(RolloutStepOut(*out), inputs)


def _rerun_with_interpreter(test_name: str) -> None:
    """triton was imported before TRITON_INTERPRET=1 could be set: run the test in a fresh process."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{__file__}::{test_name}"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
