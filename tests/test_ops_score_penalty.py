"""``score_penalty``: every available backend against ``score_penalty_ref`` (ScorePen Eq. 20).

Tolerances (fp32): rtol = atol = 1e-4 (summation order and polynomial exp only; observed
relative error ~1e-6).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.ops import BackendUnavailableError, score_penalty, score_penalty_ref
from tests.isa_params import backend_isa_params, cpp_isa_params, restored_threads

RTOL, ATOL = 1e-4, 1e-4
CPU_BACKENDS = [name for name in ("ref", "cpp") if name in ops.available_backends("score_penalty", torch.zeros(1))]


def make_inputs(batch, in_dim, hidden, out_dim=None, seed=0, dtype=torch.float32):
    """x [B, D] and a SiLU MLP D -> hidden... -> out_dim (default D, a score field)."""
    gen = torch.Generator().manual_seed(seed)
    dims = [in_dim, *hidden, in_dim if out_dim is None else out_dim]
    weights = [torch.randn(i, o, generator=gen, dtype=dtype) / i**0.5 for i, o in zip(dims, dims[1:])]
    biases = [0.1 * torch.randn(o, generator=gen, dtype=dtype) for o in dims[1:]]
    return dict(x=torch.randn(batch, in_dim, generator=gen, dtype=dtype), weights=weights, biases=biases)


# (batch, in_dim, hidden, out_dim)
CASES = {
    "B1-1hidden": (1, 5, (7,), None),
    "B333-2hidden-odd": (333, 23, (37, 53), None),
    "B97-3hidden-odd": (97, 11, (17, 33, 65), None),
    "B333-3x256": (333, 23, (256, 256, 256), None),
    "B1000-wide": (1000, 3, (201, 130), 1),
    "B40-linear-only": (40, 9, (), None),
    "B1-4x200": (1, 23, (200, 200, 200, 200), 36),
    "B10007-many-chunks": (10007, 6, (10,), None),
}


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("score_penalty"), indirect=["cpu_isa"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(cpu_isa, backend, case):
    inputs = make_inputs(*CASES[case])
    with torch.no_grad():
        got = score_penalty(**inputs, backend=backend)
    want = score_penalty_ref(**inputs)
    assert got.shape == want.shape == (inputs["x"].shape[0],)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("score_penalty"), indirect=True)
def test_cpp_code_paths(cpu_isa):
    """Every CPU path of the C++ op: AVX-512 and AVX2 micro-kernels and the chunked ATen fallback."""
    for case in ("B333-2hidden-odd", "B1-1hidden", "B40-linear-only"):
        inputs = make_inputs(*CASES[case], seed=3)
        torch.testing.assert_close(score_penalty(**inputs, backend="cpp"), score_penalty_ref(**inputs),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("score_penalty"), indirect=True)
def test_cpp_skewed_weight_copies(cpu_isa):
    """From 384 rows per thread the kernels read copies of the 128- and 256-wide layers' weights
    with 16 more columns (csrc/pyscorepen.cpp: skew_weights): 400 rows on 1 thread, 800 on 2."""
    with restored_threads():
        for n_threads, batch in ((1, 400), (2, 800)):
            torch.set_num_threads(n_threads)
            inputs = make_inputs(batch, 23, (256, 128, 256), seed=4)
            torch.testing.assert_close(score_penalty(**inputs, backend="cpp"), score_penalty_ref(**inputs),
                                       rtol=RTOL, atol=ATOL)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("score_penalty"), indirect=True)
def test_cpp_chunk_split_covers_every_row(cpu_isa):
    """The inference ops' row split (csrc/pyscorepen.cpp: for_each_chunk): fixed-size chunks, or
    (12 150 rows on 2 and 3 threads) a chunk count rounded to the threads with the 24-row tiles
    shared out evenly; a tail only in the last chunk. Every row of batches around the tile and
    chunk boundaries is computed once and right, on 1-3 threads."""
    with restored_threads():
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            for batch in (1, 23, 24, 25, 47, 48, 49, 97, 193, 961, 1919, 2881, 12150):
                inputs = make_inputs(batch, 6, (16,), seed=batch)
                torch.testing.assert_close(score_penalty(**inputs, backend="cpp"), score_penalty_ref(**inputs),
                                           rtol=RTOL, atol=ATOL, msg=lambda m: f"{n_threads} threads, B={batch}: {m}")


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="C++ extension not built")
def test_cpp_non_contiguous_and_dtype():
    inputs = make_inputs(*CASES["B97-3hidden-odd"])
    inputs["x"] = torch.randn(11, 97).t()                                          # [B, D], strided
    inputs["weights"][1] = inputs["weights"][1].t().contiguous().t()
    torch.testing.assert_close(score_penalty(**inputs, backend="cpp"), score_penalty_ref(**inputs),
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(BackendUnavailableError, match="float32"):
        score_penalty(**make_inputs(*CASES["B1-1hidden"], dtype=torch.float64), backend="cpp")
    # automatic choice falls back to the reference for float64
    inputs64 = make_inputs(*CASES["B1-1hidden"], dtype=torch.float64)
    assert ops.resolve_backend("score_penalty", inputs64["x"]) == "ref"
    torch.testing.assert_close(score_penalty(**inputs64), score_penalty_ref(**inputs64))


def test_opcheck():
    for case in ("B97-3hidden-odd", "B1-1hidden", "B40-linear-only"):
        inputs = make_inputs(*CASES[case])
        torch.library.opcheck(torch.ops.pyscorepen.score_penalty.default, tuple(inputs.values()))


def test_torch_compile_fullgraph_aot_eager():
    inputs = make_inputs(*CASES["B97-3hidden-odd"])

    def penalized_reward(x, weights, biases, reward):
        return reward - 0.3 * torch.ops.pyscorepen.score_penalty(x, weights, biases)

    reward = torch.randn(97)
    compiled = torch.compile(penalized_reward, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs.values(), reward), penalized_reward(*inputs.values(), reward),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # inductor compiles C++ on CPU: ~40 s on 2 cores
def test_torch_compile_fullgraph_inductor():
    inputs = make_inputs(*CASES["B97-3hidden-odd"])

    def penalized_reward(x, weights, biases, reward):
        return reward - 0.3 * torch.ops.pyscorepen.score_penalty(x, weights, biases)

    reward = torch.randn(97)
    compiled = torch.compile(penalized_reward, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs.values(), reward), penalized_reward(*inputs.values(), reward),
                               rtol=RTOL, atol=ATOL)


def test_forced_ref_backend(monkeypatch):
    inputs = make_inputs(*CASES["B97-3hidden-odd"])
    assert torch.equal(score_penalty(**inputs, backend="ref"), score_penalty_ref(**inputs))
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert ops.resolve_backend("score_penalty", inputs["x"]) == "ref"
    assert torch.equal(score_penalty(**inputs), score_penalty_ref(**inputs))


def test_unavailable_backend_raises(monkeypatch):
    inputs = make_inputs(*CASES["B1-1hidden"])
    with pytest.raises(BackendUnavailableError, match="cuda"):
        score_penalty(**inputs, backend="cuda")
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="PYSCOREPEN_BACKEND"):
        score_penalty(**inputs)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _triton_importable(), reason="triton is not importable")
def test_triton_backend_interpreted():
    """``backend="triton"`` on tiny shapes: CUDA tensors with a GPU, else CPU under TRITON_INTERPRET=1."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 f"{__file__}::test_triton_backend_interpreted"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return
    for case in ("B1-1hidden", "B97-3hidden-odd"):
        batch, in_dim, hidden, out_dim = CASES[case]
        inputs = make_inputs(min(batch, 9), in_dim, hidden, out_dim)
        inputs = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in inputs.items()}
        torch.testing.assert_close(score_penalty(**inputs, backend="triton"), score_penalty_ref(**inputs),
                                   rtol=RTOL, atol=ATOL)
