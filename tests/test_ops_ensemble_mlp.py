"""``ensemble_mlp``: every available CPU backend against ``ensemble_mlp_ref``, outputs and gradients.

Tolerances (fp32): outputs rtol = atol = 1e-4; gradients rtol = atol = 1e-4 on values of order 1
(inputs scaled by 1/sqrt(fan_in)). The C++ AVX-512 / AVX2 kernels differ from MKL in summation order
(the weight gradient sums over up to 10 007 rows) and in their polynomial exp (SiLU); observed
max abs error ~1.5e-6 on outputs and ~1.5e-5 on gradients (largest on the weight gradients of
the 7-member [23, 200, 200, 36] SiLU net at B = 256). The generic (ATen) path matches to ~1e-6.
"""
from __future__ import annotations

import os

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.ops import backend
from pyscorepen.ops import BackendUnavailableError
from pyscorepen.ops.ensemble_mlp import ensemble_mlp, ensemble_mlp_ref, resolve
from tests.isa_params import backend_isa_params, cpp_isa_params

RTOL, ATOL = 1e-4, 1e-4            # outputs
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-4  # gradients
CPU_BACKENDS = [name for name in ("ref", "cpp") if name in ops.available_backends("ensemble_mlp", torch.zeros(1))]
HAS_CPP = "cpp" in CPU_BACKENDS


def make_inputs(batch, dims, members, shared=True, seed=0, dtype=torch.float32, requires_grad=(True, True, True)):
    """x [B, in] (shared) or [E, B, in], weights [E, in_l, out_l] / sqrt(in_l), biases [E, out_l]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*(() if shared else (members,)), batch, dims[0], generator=gen, dtype=dtype)
    weights = [torch.randn(members, i, o, generator=gen, dtype=dtype) / i**0.5 for i, o in zip(dims, dims[1:])]
    biases = [0.1 * torch.randn(members, o, generator=gen, dtype=dtype) for o in dims[1:]]
    x.requires_grad_(requires_grad[0])
    for w in weights:
        w.requires_grad_(requires_grad[1])
    for b in biases:
        b.requires_grad_(requires_grad[2])
    return x, weights, biases


def _relu_masks(x, weights, biases):
    """The kernel's own ReLU decisions [E, B, out_l] (> 0 in its saved h_l)."""
    with torch.no_grad():
        _, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x.detach(), [w.detach() for w in weights],
                                                             [b.detach() for b in biases], "relu")
    return [s[:, :x.shape[-2], :w.shape[-1]] > 0 for s, w in zip(saved, weights)]


def _masked_relu_ref(x, weights, biases, masks):
    """ensemble_mlp_ref with ReLU replaced by fixed 0/1 masks (the same function away from the kinks)."""
    h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if layer < len(masks):
            h = h * masks[layer]
    return h


def check_against_reference(x, weights, biases, activation, backend, seed=0):
    """Output and every requested gradient of ``backend`` vs the reference.

    ReLU gradients are compared with the reference evaluated on the kernel's own ReLU masks: with
    ~10^6 pre-activations per case a few lie within rounding of 0, where the two summation orders
    may take different sides of the kink (a legitimate, O(1) difference in that row's gradient).
    """
    got = ensemble_mlp(x, weights, biases, activation, backend=backend)
    want = ensemble_mlp_ref(x, weights, biases, activation)
    assert got.shape == want.shape == (weights[0].shape[0], x.shape[-2], weights[-1].shape[-1])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    leaves = [t for t in (x, *weights, *biases) if t.requires_grad]
    if not leaves:
        return
    if activation == "relu" and backend not in ("ref", None) and x.dtype == torch.float32:
        want = _masked_relu_ref(x, weights, biases, _relu_masks(x, weights, biases))
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=want.dtype)
    grads_got = torch.autograd.grad(got, leaves, grad_out)
    grads_want = torch.autograd.grad(want, leaves, grad_out)
    for g_got, g_want in zip(grads_got, grads_want):
        assert g_got.shape == g_want.shape
        torch.testing.assert_close(g_got, g_want, rtol=GRAD_RTOL, atol=GRAD_ATOL)


# (batch, dims, members)
CASES = {
    "B1-E1-1layer": (1, (5, 7), 1),
    "B37-E2-critic": (37, (23, 256, 256, 1), 2),
    "B256-E2-critic": (256, (23, 256, 256, 1), 2),
    "B256-E7-dynamics": (256, (23, 200, 200, 200, 200, 36), 7),
    "B333-E7-odd": (333, (37, 37, 36), 7),
    "B333-E2-3layers-odd": (333, (23, 37, 200, 1), 2),
    "B1-E2-critic": (1, (23, 256, 256, 1), 2),
    "B10007-E2-many-chunks": (10_007, (6, 17, 3), 2),
}


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("ensemble_mlp"), indirect=["cpu_isa"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("shared", [True, False], ids=["x-shared", "x-per-member"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(cpu_isa, backend, activation, shared, case):
    batch, dims, members = CASES[case]
    check_against_reference(*make_inputs(batch, dims, members, shared), activation, backend)


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("ensemble_mlp"), indirect=["cpu_isa"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, True)],
                         ids=["only-x", "only-weights", "only-biases", "params", "all"])
def test_partial_gradients(cpu_isa, backend, activation, needs):
    """The output mask: only x needs grad (SAC actor loss through the frozen critic), only parameters."""
    check_against_reference(*make_inputs(61, (23, 64, 64, 1), 2, requires_grad=needs), activation, backend)
    check_against_reference(*make_inputs(50, (11, 40, 36), 3, shared=False, requires_grad=needs), activation, backend)


@pytest.mark.parametrize(("backend", "cpu_isa"), backend_isa_params("ensemble_mlp"), indirect=["cpu_isa"])
def test_no_grad_and_batch_zero(cpu_isa, backend):
    x, weights, biases = make_inputs(29, (9, 33, 4), 3)
    with torch.no_grad():
        torch.testing.assert_close(ensemble_mlp(x, weights, biases, "silu", backend=backend),
                                   ensemble_mlp_ref(x, weights, biases, "silu"), rtol=RTOL, atol=ATOL)
    x0, weights, biases = make_inputs(0, (9, 33, 4), 3)
    out = ensemble_mlp(x0, weights, biases, "relu", backend=backend)
    assert out.shape == (3, 0, 4)
    out.sum().backward()
    assert x0.grad.shape == (0, 9) and all(torch.count_nonzero(w.grad) == 0 for w in weights)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
def test_cpp_code_paths(cpu_isa):
    """Every CPU path of the C++ ops: AVX-512 and AVX2 micro-kernels and the ATen fallback."""
    for case in ("B37-E2-critic", "B333-E7-odd", "B1-E1-1layer"):
        batch, dims, members = CASES[case]
        for activation in ("relu", "silu"):
            for shared in (True, False):
                check_against_reference(*make_inputs(batch, dims, members, shared, seed=1), activation, "cpp")
    # the explicit op too (its autograd is the registered one)
    x, weights, biases = make_inputs(37, (23, 64, 1), 2)
    torch.testing.assert_close(torch.ops.pyscorepen.ensemble_mlp(x, weights, biases, "relu"),
                               ensemble_mlp_ref(x, weights, biases, "relu"), rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
def test_backward_ignores_the_reused_workspace(cpu_isa):
    """The backward's temporaries (W^T, the dz chain) live in a per-thread workspace reused across
    calls: a call after another shape has filled it with other numbers gives the same bits."""
    forward, backward = torch.ops.pyscorepen.ensemble_mlp_forward.default, torch.ops.pyscorepen.ensemble_mlp_backward.default
    gen = torch.Generator().manual_seed(3)

    def grads(members, batch, dims, activation):
        weights = [torch.randn(members, i, o, generator=gen) for i, o in zip(dims, dims[1:])]
        biases = [torch.randn(members, o, generator=gen) for o in dims[1:]]
        x = torch.randn(members, batch, dims[0], generator=gen)
        out, saved = forward(x, weights, biases, activation)
        return backward(torch.randn(out.shape, generator=gen), x, weights, saved, activation, [True, True, True])

    state = gen.get_state()
    first = grads(3, 50, (7, 33, 20, 5), "silu")
    grads(5, 300, (40, 64, 64, 64, 9), "relu")   # a larger call fills the workspace with other values
    gen.set_state(state)
    again = grads(3, 50, (7, 33, 20, 5), "silu")
    for got, want in zip([again[0], *again[1], *again[2]], [first[0], *first[1], *first[2]]):
        assert torch.equal(got, want)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_registered_op_autograd_matches_eager_path():
    """torch.ops.pyscorepen.ensemble_mlp (register_autograd) and the eager autograd.Function agree."""
    for activation, shared in (("relu", True), ("silu", False)):
        x, weights, biases = make_inputs(45, (13, 48, 48, 5), 3, shared)
        leaves = [x, *weights, *biases]
        grad_out = torch.randn(3, 45, 5)
        via_op = torch.autograd.grad(torch.ops.pyscorepen.ensemble_mlp(x, weights, biases, activation), leaves,
                                     grad_out)
        eager = torch.autograd.grad(ensemble_mlp(x, weights, biases, activation, backend="cpp"), leaves, grad_out)
        for a, b in zip(via_op, eager):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_non_contiguous_and_threads():
    x, weights, biases = make_inputs(333, (23, 37, 200, 1), 2)
    x = x.detach().t().contiguous().t().requires_grad_()                         # [B, in], strided
    weights[1] = weights[1].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    biases[0] = biases[0].detach().t().contiguous().t().requires_grad_()
    x3 = torch.randn(333, 2, 23).transpose(0, 1).requires_grad_()                # [E, B, in], strided
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            for activation in ("relu", "silu"):
                check_against_reference(x, weights, biases, activation, "cpp")
                check_against_reference(x3, weights, biases, activation, "cpp")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
def test_cpp_weight_gradient_task_groups(cpu_isa):
    """The weight-gradient phase splits a layer's column blocks into as many groups as the threads need
    (csrc/pyscorepen.cpp): whole layers at 1 thread, one group per block at many. Every split (1-4 threads,
    1 and 2 members, > 256 rows so that the slabs of rows are walked too) gives the reference's gradients."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            for members in (1, 2):
                x, weights, biases = make_inputs(600, (23, 200, 256, 5), members)
                check_against_reference(x, weights, biases, "relu", "cpp")
                x, weights, biases = make_inputs(300, (11, 200, 36), members, shared=False)
                check_against_reference(x, weights, biases, "silu", "cpp")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_dtype_and_bad_inputs(monkeypatch):
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    x64, weights64, biases64 = make_inputs(20, (5, 16, 3), 2, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float32"):
        ensemble_mlp(x64, weights64, biases64, "relu", backend="cpp")
    assert resolve(x64, weights64, "relu") == "ref"                             # automatic: float64 -> ref
    check_against_reference(x64, weights64, biases64, "silu", None)
    x, weights, biases = make_inputs(20, (5, 16, 3), 2)
    with pytest.raises(ValueError, match="activation"):
        ensemble_mlp(x, weights, biases, "tanh")
    with pytest.raises(RuntimeError, match="activation must be"):
        torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, "tanh")
    with pytest.raises(RuntimeError, match=r"x must be \[B, in\] or \[E, B, in\]"):
        torch.ops.pyscorepen.ensemble_mlp_forward(torch.randn(3, 20, 5), weights, biases, "relu")
    with pytest.raises(RuntimeError, match="ensemble weight 1"):
        torch.ops.pyscorepen.ensemble_mlp_forward(x, [weights[0], torch.randn(2, 15, 3)], biases, "relu")
    out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, "relu")
    with pytest.raises(RuntimeError, match="saved activations"):
        torch.ops.pyscorepen.ensemble_mlp_backward(torch.ones_like(out), x, weights, [], "relu", [True, True, True])


def _opcheck_args(batch, dims, members, shared, activation):
    x, weights, biases = make_inputs(batch, dims, members, shared)
    return x, weights, biases, activation


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("shared", [True, False], ids=["x-shared", "x-per-member"])
def test_opcheck(activation, shared):
    """Schema, fake kernel, autograd registration (gradients via ensemble_mlp_backward) and AOT dispatch."""
    for batch, dims, members in ((37, (7, 19, 3), 2), (5, (4, 1), 1), (50, (23, 40, 40, 1), 2)):
        args = _opcheck_args(batch, dims, members, shared, activation)
        torch.library.opcheck(torch.ops.pyscorepen.ensemble_mlp_forward.default, args)
        torch.library.opcheck(torch.ops.pyscorepen.ensemble_mlp.default, args)
        x, weights, biases, _ = (t.detach() if isinstance(t, torch.Tensor) else
                                 [w.detach() for w in t] if isinstance(t, list) else t for t in args)
        out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, activation)
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            torch.library.opcheck(torch.ops.pyscorepen.ensemble_mlp_backward.default,
                                  (torch.randn_like(out), x, weights, saved, activation, mask))


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
def test_opcheck_every_isa_and_padded_saved_buffers(cpu_isa):
    """opcheck of the forward / backward on each ISA, and the layout of ``saved``: hidden activations
    up to the output width and zeros in the padded columns (padded rows: zeros on the generic path; on
    the SIMD paths the activations of zero input rows up to the batch rounded up to 4, zeros below;
    the backward sees zero gradients there either way)."""
    args = _opcheck_args(37, (7, 19, 3), 2, False, "silu")
    torch.library.opcheck(torch.ops.pyscorepen.ensemble_mlp_forward.default, args)
    x, weights, biases, _ = (t.detach() if isinstance(t, torch.Tensor) else
                             [w.detach() for w in t] if isinstance(t, list) else t for t in args)
    out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, "silu")
    torch.library.opcheck(torch.ops.pyscorepen.ensemble_mlp_backward.default,
                          (torch.randn_like(out), x, weights, saved, "silu", [True, True, True]))
    h = saved[0]                                                   # [E, B_pad, 32]
    assert h.shape == (2, 48, 32)
    torch.testing.assert_close(h[:, :37, :19], torch.nn.functional.silu(torch.baddbmm(biases[0].unsqueeze(1), x,
                                                                                          weights[0])))
    assert torch.count_nonzero(h[:, :, 19:]) == 0


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("shared", [True, False], ids=["x-shared", "x-per-member"])
def test_backward_in_row_chunks(cpu_isa, activation, shared):
    """Above cpu::kBackwardChunkRows (384) rows the backward runs its phases chunk by chunk, each
    chunk's weight-gradient slabs added to the chunks' before it: 1 153 rows (three whole chunks and a
    ragged one) give the same bits on 1 and 2 threads and match the reference."""
    from tests.isa_params import restored_threads
    x, weights, biases = make_inputs(1153, (23, 64, 64, 1), 2, shared=shared, seed=3,
                                     requires_grad=(False, False, False))
    grads = []
    with restored_threads():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, activation)
            grad_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
            gx, gw, gb = torch.ops.pyscorepen.ensemble_mlp_backward(grad_out, x, weights, saved, activation,
                                                                    [True, True, True])
            grads.append([gx, *gw, *gb])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    check_against_reference(x.requires_grad_(), [w.requires_grad_() for w in weights],
                            [b.requires_grad_() for b in biases], activation, "cpp")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("batch", [5, 256, 262])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dims", [(9, 40, 40, 3), (9, 40, 1)], ids=["3-outputs", "1-output"])
def test_simd_kernels_skip_the_padded_rows(cpu_isa, activation, batch, threads, dims):
    """The SIMD training kernels compute rows [0, B rounded up to 4) only (EnsembleTrainArgs::
    batch_rows); the rows from there to the 24-row padding are zeros in ``saved`` and are never read:
    NaN written there leaves the backward unchanged, bit for bit, on 1 and 2 threads."""
    from tests.isa_params import restored_threads
    x, weights, biases = make_inputs(batch, dims, 3, shared=False, seed=batch,
                                     requires_grad=(False, False, False))
    computed, padded = (batch + 3) // 4 * 4, (batch + 23) // 24 * 24
    with restored_threads():
        torch.set_num_threads(threads)
        out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x, weights, biases, activation)
        assert all(s.shape[1] == padded for s in saved)
        assert all(torch.count_nonzero(s[:, computed:]) == 0 for s in saved)
        grad_out = torch.randn_like(out)
        clean = torch.ops.pyscorepen.ensemble_mlp_backward(grad_out, x, weights, saved, activation, [True, True, True])
        poisoned = [s.clone() for s in saved]
        for s in poisoned:
            s[:, computed:] = float("nan")
        dirty = torch.ops.pyscorepen.ensemble_mlp_backward(grad_out, x, weights, poisoned, activation,
                                                           [True, True, True])
    flat = lambda grads: [grads[0], *grads[1], *grads[2]]   # noqa: E731
    for a, b in zip(flat(clean), flat(dirty)):
        assert torch.equal(a, b)
    check_against_reference(x.requires_grad_(), [w.requires_grad_() for w in weights],
                            [b.requires_grad_() for b in biases], activation, "cpp")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("batch", [29, 300])
def test_saved_buffers_skewed_leading_dimension(cpu_isa, activation, batch):
    """Widths whose 16-column padding is a multiple of 128 floats get 16 more (saved_width, the C++
    padded_cols): the forward writes zeros there (and in the SiLU derivative buffers), the fake
    kernel agrees on the shape, and the forward and backward through the skewed buffers (and, from
    256 rows, the forward's skewed copy of W and the backward's skewed W^T) match the reference."""
    from pyscorepen.ops.ensemble_mlp import saved_width
    assert [saved_width(w) for w in (1, 19, 120, 128, 200, 256, 384)] == [16, 32, 144, 144, 208, 272, 400]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, batch, 9, generator=gen, requires_grad=True)
    weights = [(torch.randn(2, i, o, generator=gen) / i**0.5).requires_grad_() for i, o in ((9, 128), (128, 256), (256, 3))]
    biases = [torch.randn(2, o, generator=gen, requires_grad=True) for o in (128, 256, 3)]
    out, saved = torch.ops.pyscorepen.ensemble_mlp_forward(x.detach(), [w.detach() for w in weights],
                                                           [b.detach() for b in biases], activation)
    rows = (batch + 23) // 24 * 24
    assert [tuple(t.shape) for t in saved[:2]] == [(2, rows, 144), (2, rows, 272)]
    for t, width in zip(saved, [128, 256] * 2):
        assert torch.count_nonzero(t[:, :, width:]) == 0
    mode = torch._subclasses.FakeTensorMode()
    fake_args = [mode.from_tensor(x.detach()), [mode.from_tensor(w.detach()) for w in weights],
                 [mode.from_tensor(b.detach()) for b in biases]]
    with mode:
        fake = torch.ops.pyscorepen.ensemble_mlp_forward(*fake_args, activation)
    assert [t.shape for t in fake[1]] == [t.shape for t in saved]
    got = ensemble_mlp(x, weights, biases, activation, backend="cpp")
    grads_got = torch.autograd.grad(got.square().sum(), [x, *weights, *biases])
    want = ensemble_mlp_ref(x, weights, biases, activation)
    grads_want = torch.autograd.grad(want.square().sum(), [x, *weights, *biases])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_torch_compile_fullgraph_aot_eager():
    """Dynamo + fake kernels + AOT autograd see the op (forward and backward)."""
    x, weights, biases = make_inputs(37, (7, 19, 3), 2)

    def loss(x, weights, biases):
        return torch.ops.pyscorepen.ensemble_mlp(x, weights, biases, "silu").square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(x, weights, biases)
    grads_got = torch.autograd.grad(got, [x, *weights])
    want = ensemble_mlp_ref(x, weights, biases, "silu").square().mean()
    grads_want = torch.autograd.grad(want, [x, *weights])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_forced_ref_backend(monkeypatch):
    x, weights, biases = make_inputs(37, (23, 64, 1), 2)
    expected = ensemble_mlp_ref(x, weights, biases, "relu")
    assert torch.equal(ensemble_mlp(x, weights, biases, "relu", backend="ref"), expected)
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert resolve(x, weights, "relu") == "ref"
    assert torch.equal(ensemble_mlp(x, weights, biases, "relu"), expected)


def test_unavailable_backend_raises(monkeypatch):
    x, weights, biases = make_inputs(5, (4, 8, 1), 2)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        ensemble_mlp(x, weights, biases, "relu", backend="cuda")
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="PYSCOREPEN_BACKEND"):
        ensemble_mlp(x, weights, biases, "relu")


def test_modules_use_the_op_and_ref_keeps_module_code(monkeypatch):
    """QEnsemble / EnsembleMLP and the SAC actor's trunk (a 1-member ensemble) give the same
    outputs and gradients on every backend."""
    from pyscorepen.models.nets import EnsembleMLP, QEnsemble, TanhGaussianActor

    torch.manual_seed(0)
    critic, model = QEnsemble(2, 17, 6, (64, 64)), EnsembleMLP(7, 23, (40, 40), 36)
    actor = TanhGaussianActor(17, 6, (64, 64), -torch.ones(6), torch.ones(6))
    obs, actions, x = torch.randn(50, 17), torch.randn(50, 6), torch.randn(50, 23)
    results = {}
    for name in CPU_BACKENDS:
        monkeypatch.setenv("PYSCOREPEN_BACKEND", name)
        q, y, head = critic(obs, actions), model(x), actor.trunk(obs)
        params = [*critic.parameters(), *model.parameters(), *actor.parameters()]
        loss = q.square().sum() + y.square().sum() + head.square().sum()
        results[name] = (q, y, head, torch.autograd.grad(loss, params))
    for name in CPU_BACKENDS:
        for got, want in zip(results[name][:3], results["ref"][:3]):
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
        for got, want in zip(results[name][3], results["ref"][3]):
            torch.testing.assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_actor_trunk_takes_the_op_where_the_policy_picks_it(monkeypatch):
    """auto: the actor's trunk runs the fused op exactly where ensemble_mlp's policy picks cpp for
    its rows (the critics' rule), and the Linear layers elsewhere; ref: always the Linear layers."""
    from pyscorepen.models.nets import TanhGaussianActor
    from pyscorepen.ops.ensemble_mlp import resolve

    actor = TanhGaussianActor(5, 2, (16,), -torch.ones(2), torch.ones(2))
    for env in (None, "ref"):
        if env is None:
            monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
        else:
            monkeypatch.setenv("PYSCOREPEN_BACKEND", env)
        for rows in (1, 64, 4096):
            obs = torch.randn(rows, 5, requires_grad=True)
            fused = resolve(obs, [torch.zeros(1, 5, 16)], "relu") != "ref"
            node = actor.trunk(obs).grad_fn
            assert (type(node).__name__ != "AddmmBackward0") == fused, (env, rows, type(node).__name__)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("algo", ["sac", "combo"])
def test_sac_update_cpp_matches_ref_backend(monkeypatch, algo):
    """Three SAC (or COMBO) updates with the fused critic op equal the same updates with
    PYSCOREPEN_BACKEND=ref (every op on its reference)."""
    from pyscorepen.algos import COMBO, ComboConfig
    from pyscorepen.data import Batch
    from pyscorepen.algos.sac import SAC, SACConfig

    S, A, B = 17, 6, 256
    gen = torch.Generator().manual_seed(1)
    batches = [Batch(torch.randn(B, S, generator=gen), torch.rand(B, A, generator=gen), torch.randn(B, generator=gen),
                     torch.randn(B, S, generator=gen), torch.zeros(B), torch.rand(B, generator=gen),
                     torch.arange(B) % 2 == 0) for _ in range(3)]
    agents = {}
    for name in ("cpp", "ref"):
        monkeypatch.setenv("PYSCOREPEN_BACKEND", name)
        torch.manual_seed(0)
        config = SACConfig(hidden_dims=(64, 64))
        agent = (COMBO(S, A, config, -torch.ones(A), torch.ones(A), combo=ComboConfig(num_sampled_actions=3))
                 if algo == "combo" else SAC(S, A, config, -torch.ones(A), torch.ones(A)))
        torch.manual_seed(2)
        for batch in batches:
            agent.update(batch)
        agents[name] = agent
    for name in ("actor", "critic", "critic_target"):
        for p_cpp, p_ref in zip(getattr(agents["cpp"], name).parameters(), getattr(agents["ref"], name).parameters()):
            torch.testing.assert_close(p_cpp, p_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(agents["cpp"].log_alpha, agents["ref"].log_alpha, rtol=1e-4, atol=1e-4)


def test_ref_environment_reaches_no_fused_kernel(monkeypatch):
    """PYSCOREPEN_BACKEND=ref: the modules take their plain code path (no custom op in the graph)."""
    from pyscorepen.models.nets import QEnsemble

    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    critic = QEnsemble(2, 5, 3, (16,))
    q = critic(torch.randn(4, 5), torch.randn(4, 3))
    names = []
    node = q.grad_fn
    while node is not None:
        names.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert not any("Fused" in name or "Generated" in name for name in names), names
    assert os.environ["PYSCOREPEN_BACKEND"] == "ref"


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cpu_isa", cpp_isa_params("ensemble_mlp"), indirect=True)
def test_automatic_choice_follows_the_measured_crossover(monkeypatch, cpu_isa):
    """auto: cpp only from the batch size where it won on this ISA (backend.CPP_MIN_ROWS); explicit runs it."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    relu_weights, silu_weights = [torch.zeros(2, 23, 8)], [torch.zeros(7, 23, 8)]
    for activation, weights in (("relu", relu_weights), ("silu", silu_weights)):
        threshold = backend.cpp_min_rows(f"ensemble_mlp/{activation}")   # this ISA and CPU vendor
        for rows in {1, 63, 64, 255, 256, 1023, 1024, 4096}:
            x = torch.zeros(rows, 23) if activation == "relu" else torch.zeros(7, rows, 23)
            assert resolve(x, weights, activation) == ("cpp" if rows >= threshold else "ref"), (activation, rows)
    assert resolve(torch.zeros(1, 23), relu_weights, "relu", backend="cpp") == "cpp"
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "cpp")
    assert resolve(torch.zeros(1, 23), relu_weights, "relu") == "cpp"
