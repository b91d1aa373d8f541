"""``sac_update`` (the fused SAC step): every backend against ``sac_update_ref``, and the agent's
fused :meth:`SAC.update` against :meth:`SAC.update_ref` (the specification) after several updates.

Tolerance (fp32), after N updates, for every parameter (actor, critics, target critics, log alpha):
``atol = 0.01 * lr * N`` (1 % of the largest distance Adam can move a parameter in N steps, about
lr per step), ``rtol = 0``; for the Adam moments ``rtol = 1e-3``, ``atol = 1e-3 * max|moment|``.
Why not tighter: the fused path sums in another order (its GEMM micro-kernels, the soft value's
polynomial exp/tanh, analytic instead of autograd's head gradients), so gradients differ in the
last bits (~1e-6 relative); Adam divides by sqrt(v), so a parameter whose gradient is itself
near zero moves by up to lr per step on rounding alone. Observed at N = 5 (AVX-512, AVX2, generic):
parameters <= 3.7e-6 apart at Hopper sizes (25 % of the tolerance), <= 5.5e-7 on the small odd
shapes, log alpha identical, Adam steps identical.
"""
from __future__ import annotations

import copy

import pytest
import torch

import pyscorepen.ops as ops
from pyscorepen.algos import COMBO
from pyscorepen.algos.sac import SAC, SACConfig
from pyscorepen.data import Batch
from pyscorepen.ops import _registry
from pyscorepen.ops import backend
from pyscorepen.ops.sac_update import sac_update, sac_update_ref
from tests.isa_params import cpp_isa_params

HAS_CPP = "cpp" in ops.available_backends("sac_update", torch.zeros(1))
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
ISAS = cpp_isa_params("sac_update")   # every ISA of this CPU and build (fixture cpu_isa, conftest.py)
UPDATES = 5

# (obs_dim, act_dim, hidden, num_critics, batch)
SHAPES = {
    "hopper-256x2": (11, 3, (256, 256), 2, 256),
    "odd-2hidden-N3": (5, 2, (37, 19), 3, 50),
    "odd-1hidden-A1": (7, 1, (33,), 2, 25),
    "odd-3hidden-B97": (13, 4, (24, 40, 17), 2, 97),
}


@pytest.fixture
def no_batch_limit():
    """The automatic policy runs the fused op at any batch (its limit pinned to none)."""
    with backend.pinned_cpu_policy({}, {"sac_update": backend.NEVER}):
        yield


def make_batch(obs_dim, act_dim, batch, gen, penalty=True) -> Batch:
    """Random transitions with ~20 % terminals and a stored penalty on the model rows (the second half)."""
    from_model = torch.arange(batch) >= batch // 2
    return Batch(torch.randn(batch, obs_dim, generator=gen), torch.rand(batch, act_dim, generator=gen) * 2 - 1,
                 torch.randn(batch, generator=gen), torch.randn(batch, obs_dim, generator=gen),
                 (torch.rand(batch, generator=gen) < 0.2).float(),
                 torch.rand(batch, generator=gen) * from_model * (1.0 if penalty else 0.0), from_model)


def make_agent(obs_dim, act_dim, hidden, num_critics, cls=SAC, **config):
    torch.manual_seed(0)
    low = -torch.linspace(0.5, 2.0, act_dim)
    return cls(obs_dim, act_dim, SACConfig(hidden_dims=hidden, num_critics=num_critics, **config), low, -2 * low)


def assert_agents_close(fused: SAC, ref: SAC, updates: int) -> None:
    lr = max(ref.config.actor_lr, ref.config.critic_lr, ref.config.alpha_lr)
    atol = 0.01 * lr * updates
    for name in ("actor", "critic", "critic_target"):
        got, want = getattr(fused, name).state_dict(), getattr(ref, name).state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, msg=lambda m: f"{name}.{key}: {m}")
    torch.testing.assert_close(fused.log_alpha, ref.log_alpha, rtol=0, atol=atol)
    for optim in ("actor_optim", "critic_optim", "alpha_optim"):
        got, want = getattr(fused, optim).state_dict()["state"], getattr(ref, optim).state_dict()["state"]
        assert got.keys() == want.keys(), optim
        for index in want:
            assert float(got[index]["step"]) == float(want[index]["step"]) == updates
            for moment in ("exp_avg", "exp_avg_sq"):
                scale = float(want[index][moment].abs().max())
                torch.testing.assert_close(got[index][moment], want[index][moment], rtol=1e-3, atol=1e-3 * scale,
                                           msg=lambda m: f"{optim}[{index}].{moment}: {m}")
    assert fused.num_updates == ref.num_updates == updates


def run_both(agent: SAC, batches: list[Batch]) -> tuple[SAC, SAC, list[dict], list[dict]]:
    """The same agent updated by update (fused) and update_ref from the same RNG state."""
    ref = copy.deepcopy(agent)
    torch.manual_seed(123)
    got = [agent.update(b) for b in batches]
    torch.manual_seed(123)
    want = [ref.update_ref(b) for b in batches]
    return agent, ref, got, want


@needs_cpp
@pytest.mark.parametrize("cpu_isa", ISAS, indirect=True)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_agent_fused_update_matches_update_ref(monkeypatch, cpu_isa, shape):
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    obs_dim, act_dim, hidden, critics, batch = SHAPES[shape]
    agent = make_agent(obs_dim, act_dim, hidden, critics)
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(obs_dim, act_dim, batch, gen) for _ in range(UPDATES)]
    assert agent.fused_update_backend(batches[0]) == "cpp"
    fused, ref, got, want = run_both(agent, batches)
    assert_agents_close(fused, ref, UPDATES)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            assert abs(g[key] - w[key]) <= 1e-4 * (1 + abs(w[key])), (key, g[key], w[key])


@needs_cpp
@pytest.mark.parametrize("variant", ["no-auto-alpha", "no-penalty-all-terminal", "fused-optim-off"])
def test_agent_fused_update_variants(monkeypatch, variant):
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    config = {"no-auto-alpha": {"auto_alpha": False}, "fused-optim-off": {"fused_optim": False}}.get(variant, {})
    agent = make_agent(11, 3, (32, 32), 2, **config)
    gen = torch.Generator().manual_seed(2)
    batches = [make_batch(11, 3, 64, gen, penalty=variant != "no-penalty-all-terminal") for _ in range(UPDATES)]
    if variant == "no-penalty-all-terminal":
        for b in batches:
            b.terminals.fill_(1.0)
    fused, ref, _, _ = run_both(agent, batches)
    assert_agents_close(fused, ref, UPDATES)
    if variant == "no-auto-alpha":
        assert fused.alpha_optim.state_dict()["state"] == {} and float(fused.alpha) == pytest.approx(0.2)


class ConstantTargetPenalty:
    """A target-time plug-in like MOBILE's (draws random numbers, reads the agent before the step)."""

    name = "const"

    def __call__(self, agent, batch):
        return batch.from_model * (0.5 + torch.rand(len(batch)) + agent.alpha)


@needs_cpp
def test_agent_fused_update_with_target_penalty(monkeypatch):
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    agent = make_agent(11, 3, (32, 32), 2)
    agent.target_penalties = [ConstantTargetPenalty()]
    gen = torch.Generator().manual_seed(3)
    batches = [make_batch(11, 3, 64, gen) for _ in range(UPDATES)]
    assert agent.fused_update_backend(batches[0]) == "cpp"
    fused, ref, got, want = run_both(agent, batches)
    assert_agents_close(fused, ref, UPDATES)
    assert got[-1]["penalty/const"] == pytest.approx(want[-1]["penalty/const"], rel=1e-6)


class ClampedTargetPenalty(ConstantTargetPenalty):
    """MOBILE-like: a target-time penalty that also clamps the Bellman target at >= 0."""

    name, target_min = "clamped", 0.0


@needs_cpp
def test_agent_fused_update_mobile_hooks(monkeypatch):
    """MOBILE's target clamp and COMBO's entropy-free backup (without COMBO's regulariser) run fused
    and match update_ref."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    agent = make_agent(11, 3, (32, 32), 2, deterministic_backup=True)
    agent.target_penalties = [ClampedTargetPenalty()]
    gen = torch.Generator().manual_seed(3)
    batches = [make_batch(11, 3, 64, gen) for _ in range(UPDATES)]
    assert agent.target_min() == 0.0
    assert agent.fused_update_backend(batches[0]) == "cpp"
    fused, ref, got, want = run_both(agent, batches)
    assert_agents_close(fused, ref, UPDATES)
    assert got[-1]["penalty/clamped"] == pytest.approx(want[-1]["penalty/clamped"], rel=1e-6)


@needs_cpp
@pytest.mark.parametrize("cpu_isa", ISAS, indirect=True)
@pytest.mark.parametrize("rho", ["mix", "model"])
def test_agent_fused_combo_update_matches_update_ref(monkeypatch, cpu_isa, rho, no_batch_limit):
    """COMBO's CQL term fused (the op's cql_* arguments) against the module path's autograd, same
    samples, after several updates; the q_gap statistic too."""
    from pyscorepen.algos.combo import ComboConfig
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    agent = make_agent(11, 3, (64, 64), 2, cls=COMBO, deterministic_backup=True)
    agent.combo = ComboConfig(cql_weight=5.0, rho=rho, num_sampled_actions=4)
    gen = torch.Generator().manual_seed(11)
    batches = [make_batch(11, 3, 64, gen) for _ in range(UPDATES)]
    assert agent.fused_update_backend(batches[0]) == "cpp"
    fused, ref, got, want = run_both(agent, batches)
    assert_agents_close(fused, ref, UPDATES)
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and "combo/q_gap" in g
        for key in w:
            assert abs(g[key] - w[key]) <= 1e-4 * (1 + abs(w[key])), (key, g[key], w[key])


def _isa_key() -> str:
    from pyscorepen.ops import backend
    return backend.cpu_isa() or "generic"


def test_fused_update_backend_decision(monkeypatch, no_batch_limit):
    """The single place: cpp + plain SAC or COMBO (its regulariser has a fused form) -> fused; a
    regulariser without a fused form or the ref backend -> module path."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(4)
    batch = make_batch(5, 2, 30, gen)
    sac, combo = make_agent(5, 2, (16,), 2), make_agent(5, 2, (16,), 2, cls=COMBO)
    assert sac.fused_update_backend(batch) == ("cpp" if HAS_CPP else None)
    assert combo.fused_update_backend(batch) == ("cpp" if HAS_CPP else None)

    class Regularized(SAC):
        def critic_regularizer(self, batch, q_pred):
            return q_pred.square().mean(), {}
    assert make_agent(5, 2, (16,), 2, cls=Regularized).fused_update_backend(batch) is None
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    assert sac.fused_update_backend(batch) is None
    sac.update(batch)   # the module path runs
    monkeypatch.delenv("PYSCOREPEN_BACKEND")
    amsgrad = make_agent(5, 2, (16,), 2)
    amsgrad.critic_optim.param_groups[0]["amsgrad"] = True
    assert amsgrad.fused_update_backend(batch) is None


@needs_cpp
def test_resume_is_byte_identical(monkeypatch, tmp_path):
    """Killed after 3 updates and resumed from a checkpoint = 6 uninterrupted updates, bit for bit."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(5)
    batches = [make_batch(11, 3, 64, gen) for _ in range(6)]
    straight = make_agent(11, 3, (32, 32), 2)
    torch.manual_seed(9)
    for b in batches:
        straight.update(b)
    first = make_agent(11, 3, (32, 32), 2)
    torch.manual_seed(9)
    for b in batches[:3]:
        first.update(b)
    torch.save({"agent": first.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "ckpt.pt")
    del first
    checkpoint = torch.load(tmp_path / "ckpt.pt")
    resumed = make_agent(11, 3, (32, 32), 2)
    resumed.load_state_dict(checkpoint["agent"])
    torch.set_rng_state(checkpoint["rng"])
    for b in batches[3:]:
        resumed.update(b)
    for run, agent in (("straight", straight), ("resumed", resumed)):
        (tmp_path / run).mkdir()
        torch.save(agent.actor.state_dict(), tmp_path / run / "policy.pt")
    assert (tmp_path / "straight" / "policy.pt").read_bytes() == (tmp_path / "resumed" / "policy.pt").read_bytes()
    for key, value in straight.state_dict().items():
        if isinstance(value, dict) and "state" not in value:
            for name, tensor in value.items():
                assert torch.equal(tensor, resumed.state_dict()[key][name]), (key, name)


@needs_cpp
@pytest.mark.parametrize("hidden", [(64, 64), (256, 256)])
def test_independent_of_thread_count(monkeypatch, hidden):
    """1 and 2 threads give bit-identical updates; at 256 wide the actor's weight transposes are
    large enough to be split across the threads (transpose_jobs in csrc/transpose.h)."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(6)
    batches = [make_batch(11, 3, 256, gen) for _ in range(2)]
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            agent = make_agent(11, 3, hidden, 2)
            torch.manual_seed(7)
            for b in batches:
                agent.update(b)
            results.append(agent.state_dict())
    finally:
        torch.set_num_threads(before)
    for key in ("actor", "critic", "critic_target"):
        for name, tensor in results[0][key].items():
            assert torch.equal(tensor, results[1][key][name]), (key, name)


# ------------------------------------------------------------------ the op itself
def op_args(obs_dim=6, act_dim=2, hidden=(20, 12), critics=2, batch=40, seed=0, target_penalty=True,
            auto_alpha=True, deterministic_backup=False, target_min=None, cql=None):
    """sac_update arguments on fresh tensors (Adam states after a few fake steps, not zero).
    ``cql=(K, C)``: COMBO's regulariser with K sampled actions for each of C states, the first half
    of the batch pushed up, weight 2 and temperature 0.7 (not the defaults, so both are tested)."""
    gen = torch.Generator().manual_seed(seed)
    actor_dims, critic_dims = [obs_dim, *hidden, 2 * act_dim], [obs_dim + act_dim, *hidden, 1]
    actor_w = [torch.randn(o, i, generator=gen) / i ** 0.5 for i, o in zip(actor_dims, actor_dims[1:])]
    actor_b = [0.1 * torch.randn(o, generator=gen) for o in actor_dims[1:]]
    critic_w = [torch.randn(critics, i, o, generator=gen) / i ** 0.5 for i, o in zip(critic_dims, critic_dims[1:])]
    critic_b = [0.1 * torch.randn(critics, o, generator=gen) for o in critic_dims[1:]]
    params = [p for pair in zip(actor_w, actor_b) for p in pair] + [p for pair in zip(critic_w, critic_b) for p in pair]
    log_alpha = torch.tensor(-1.5)
    params += [log_alpha] if auto_alpha else []
    b = make_batch(obs_dim, act_dim, batch, gen)
    return dict(
        obs=b.obs, actions=b.actions, rewards=b.rewards, next_obs=b.next_obs, terminals=b.terminals,
        penalty=b.penalty, target_penalty=torch.rand(batch, generator=gen) if target_penalty else None,
        target_noise=torch.randn(batch, act_dim, generator=gen), actor_noise=torch.randn(batch, act_dim, generator=gen),
        actor_weights=actor_w, actor_biases=actor_b, critic_weights=critic_w, critic_biases=critic_b,
        target_weights=[w + 0.01 * torch.randn(w.shape, generator=gen) for w in critic_w],
        target_biases=[b_ + 0.01 * torch.randn(b_.shape, generator=gen) for b_ in critic_b], log_alpha=log_alpha,
        exp_avgs=[1e-3 * torch.randn(p.shape, generator=gen) for p in params],
        exp_avg_sqs=[1e-5 * torch.rand(p.shape, generator=gen) for p in params],
        steps=[torch.tensor(3.0) for _ in params],
        action_scale=0.5 + torch.rand(act_dim, generator=gen), action_offset=0.1 * torch.randn(act_dim, generator=gen),
        gamma=0.99, tau=0.005, target_entropy=-float(act_dim), auto_alpha=auto_alpha, actor_lr=1e-4, critic_lr=3e-4,
        alpha_lr=1e-4, beta1=0.9, beta2=0.999, adam_eps=1e-8, weight_decay=0.0, log_std_min=-5.0, log_std_max=2.0,
        deterministic_backup=deterministic_backup, target_min=target_min, **(cql_args(cql, obs_dim, act_dim, batch,
                                                                                gen) if cql else {}))


def cql_args(cql: tuple[int, int], obs_dim: int, act_dim: int, batch: int, gen: torch.Generator) -> dict:
    K, C = cql
    return dict(cql_obs=torch.randn(C, obs_dim, generator=gen), cql_actions=torch.rand(K, C, act_dim, generator=gen) * 2 - 1,
                cql_log_density=torch.randn(K, C, generator=gen), cql_push_up=(torch.arange(batch) < batch // 2).float(),
                cql_weight=2.0, cql_temperature=0.7)


def clone_args(args: dict) -> dict:
    return {k: ([t.clone() for t in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v)
            for k, v in args.items()}


MUTATED = ("actor_weights", "actor_biases", "critic_weights", "critic_biases", "target_weights", "target_biases",
           "log_alpha", "exp_avgs", "exp_avg_sqs", "steps")


@needs_cpp
@pytest.mark.parametrize("cpu_isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", [dict(), dict(target_penalty=False, auto_alpha=False),
                                  dict(obs_dim=11, act_dim=3, hidden=(256, 256), batch=256),
                                  dict(hidden=(9,), critics=1, batch=7), dict(hidden=(), batch=30),
                                  dict(deterministic_backup=True, target_min=0.0), dict(cql=(6, 15)),
                                  dict(obs_dim=11, act_dim=3, hidden=(256, 256), batch=256, cql=(30, 256),
                                       deterministic_backup=True),
                                  # the critic passes stream over chunks of whole units (<= 1 024 rows):
                                  # a batch of more than one chunk, and one state of more than a chunk
                                  dict(hidden=(16,), batch=1500, cql=(7, 300)), dict(hidden=(16,), batch=9, cql=(1100, 2))],
                         ids=["default", "no-target-penalty-no-alpha", "hopper", "N1-B7", "no-hidden",
                              "deterministic-backup-clamped", "cql", "hopper-combo", "cql-batch-over-chunk",
                              "cql-state-over-chunk"])
def test_op_matches_reference(cpu_isa, case):
    args = op_args(**case)
    got_args, want_args = clone_args(args), clone_args(args)
    got = sac_update(**got_args, backend="cpp")
    want = sac_update_ref(**want_args)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    atol = 0.01 * max(args["actor_lr"], args["critic_lr"])   # one Adam step (see the module docstring)
    for key in MUTATED:
        got_list = got_args[key] if isinstance(got_args[key], list) else [got_args[key]]
        want_list = want_args[key] if isinstance(want_args[key], list) else [want_args[key]]
        before = args[key] if isinstance(args[key], list) else [args[key]]
        for index, (g, w, b) in enumerate(zip(got_list, want_list, before)):
            tol = dict(rtol=1e-3, atol=1e-3 * float(w.abs().max())) if key.startswith("exp_avg") else dict(
                rtol=0, atol=atol)
            torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{key}[{index}]: {m}")
            if not (key == "log_alpha" and not case.get("auto_alpha", True)):
                assert not torch.equal(g, b), f"{key}[{index}] was not updated"


@pytest.mark.parametrize("hook", ["deterministic_backup", "target_min", "cql"])
def test_target_hooks_change_the_step(hook):
    """The reference's entropy-free backup, target clamp and CQL term really act on these inputs (so
    the backend comparisons above test them): the critics move differently with the hook on. With a
    random batch, r - penalty + gamma V' is negative on many rows, so a clamp at 0 binds."""
    value = {"deterministic_backup": True, "target_min": 0.0, "cql": (6, 15)}[hook]
    plain, hooked = op_args(), op_args(**{hook: value})
    sac_update_ref(**plain)
    sac_update_ref(**hooked)
    assert not torch.allclose(plain["critic_weights"][-1], hooked["critic_weights"][-1], rtol=0, atol=1e-7)


@needs_cpp
def test_opcheck():
    args = op_args(batch=12, hidden=(8,))
    torch.library.opcheck(torch.ops.pyscorepen.sac_update.default, tuple(args.values()))
    args = op_args(batch=12, hidden=(8,), target_penalty=False, auto_alpha=False)
    torch.library.opcheck(torch.ops.pyscorepen.sac_update.default, tuple(args.values()))
    args = op_args(batch=12, hidden=(8,), deterministic_backup=True, target_min=0.0)
    torch.library.opcheck(torch.ops.pyscorepen.sac_update.default, tuple(args.values()))
    args = op_args(batch=12, hidden=(8,), cql=(3, 5))
    torch.library.opcheck(torch.ops.pyscorepen.sac_update.default, tuple(args.values()))


def test_schema_declared():
    assert "sac_update" in _registry.SCHEMAS
    assert str(torch.ops.pyscorepen.sac_update.default._schema) == "pyscorepen::" + _registry.SCHEMAS["sac_update"]


@needs_cpp
def test_bad_arguments_are_clear_errors():
    args = op_args()
    args["actor_noise"] = args["actor_noise"][:, :1]
    with pytest.raises(RuntimeError, match="actor_noise must be"):
        sac_update(**args, backend="cpp")
    args = op_args()
    args["exp_avgs"] = args["exp_avgs"][:-1]
    with pytest.raises(RuntimeError, match="Adam states"):
        sac_update(**args, backend="cpp")
    args = op_args(cql=(3, 5))
    args["cql_log_density"] = args["cql_log_density"][:, :4]
    with pytest.raises(RuntimeError, match=r"cql_log_density must be \[K, C\]"):
        sac_update(**args, backend="cpp")
    args = op_args(cql=(3, 5))
    del args["cql_push_up"]
    with pytest.raises(RuntimeError, match="come together"):
        sac_update(**args, backend="cpp")
    args = op_args(cql=(3, 5))
    args["cql_push_up"].zero_()
    with pytest.raises(RuntimeError, match="selects no row"):
        sac_update(**args, backend="cpp")


@needs_cpp
def test_load_state_dict_into_a_used_agent(monkeypatch):
    """The op's cached parameter / Adam-state lists follow load_state_dict (which replaces the optimizer states)."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(8)
    batches = [make_batch(11, 3, 64, gen) for _ in range(4)]
    used, source = make_agent(11, 3, (32, 32), 2), make_agent(11, 3, (32, 32), 2)
    torch.manual_seed(1)
    used.update(batches[0])                    # builds the cache on the used agent's own states
    torch.manual_seed(2)
    for b in batches[:2]:
        source.update(b)
    used.load_state_dict(copy.deepcopy(source.state_dict()))
    for agent in (used, source):
        torch.manual_seed(3)
        for b in batches[2:]:
            agent.update(b)
    for key in ("actor", "critic", "critic_target"):
        for name, tensor in source.state_dict()[key].items():
            assert torch.equal(tensor, used.state_dict()[key][name]), (key, name)
    for index, state in source.critic_optim.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], used.critic_optim.state_dict()["state"][index]["exp_avg"])


@needs_cpp
@pytest.mark.parametrize("cpu_isa", ISAS, indirect=True)
def test_batch_size_policy(monkeypatch, cpu_isa):
    """Auto runs the fused op only up to the batch size where it beat the module path on this ISA."""
    monkeypatch.delenv("PYSCOREPEN_BACKEND", raising=False)
    agent = make_agent(5, 2, (16,), 2)
    gen = torch.Generator().manual_seed(9)
    limit = backend.cpp_max_rows("sac_update")   # this ISA and CPU vendor
    assert agent.fused_update_backend(make_batch(5, 2, 256, gen)) == "cpp"
    big = make_batch(5, 2, 1024, gen)
    assert agent.fused_update_backend(big) == ("cpp" if limit >= 1024 else None)
    assert sac_update(**op_args(batch=300), backend="cpp").shape == (4,)   # an explicit request ignores the policy
    # COMBO: the policy counts the regulariser's sampled rows (3R per push-down state)
    combo = make_agent(5, 2, (16,), 2, cls=COMBO)
    small = make_batch(5, 2, 8, gen)                         # 8 + 3 * 10 * 8 = 248 critic rows
    assert combo.regularizer_rows(small) == 240
    assert combo.fused_update_backend(small) == "cpp"
    batch = make_batch(5, 2, 256, gen)                       # 256 + 7 680 rows
    assert combo.fused_update_backend(batch) == ("cpp" if limit >= 256 + 7680 else None)


def test_batch_limit_per_vendor(monkeypatch):
    """AMD CPUs take CPP_MAX_ROWS_BY_VENDOR (no limit on avx2 / avx512: MKL's AMD path is slow, the
    fused op measured 1.12-1.34x the module path at 1 024 - 4 096 rows on a Zen 3); other vendors
    CPP_MAX_ROWS, and an unmeasured ISA its "generic" entry."""
    table = backend.CPP_MAX_ROWS["sac_update"]
    monkeypatch.setattr(backend, "cpu_vendor", lambda: "amd")
    assert backend.builtin_max_rows("sac_update", "avx2") == backend.builtin_max_rows("sac_update", "avx512") \
        == backend.NEVER
    assert backend.builtin_max_rows("sac_update", "generic") == table["generic"]
    monkeypatch.setattr(backend, "cpu_vendor", lambda: "intel")
    assert backend.builtin_max_rows("sac_update", "avx2") == table["avx2"] == 256
    assert backend.builtin_max_rows("sac_update", "neon") == table["generic"]


def test_fused_path_takes_the_backup_and_clamp_hooks():
    """The entropy-free backup and MOBILE's clamped target have fused forms (the op's
    ``deterministic_backup`` / ``target_min``): the fused path runs for them where cpp is available."""
    from pyscorepen.algos.sac import SAC, SACConfig
    from pyscorepen.data import Batch
    torch.manual_seed(0)
    batch = Batch(torch.randn(256, 5), torch.rand(256, 2) * 2 - 1, torch.randn(256), torch.randn(256, 5),
                  torch.zeros(256), torch.zeros(256), torch.zeros(256, dtype=torch.bool))
    plain = SAC(5, 2, SACConfig(hidden_dims=(32, 32)), -torch.ones(2), torch.ones(2))
    backup = SAC(5, 2, SACConfig(hidden_dims=(32, 32), deterministic_backup=True), -torch.ones(2), torch.ones(2))
    expected = plain.fused_update_backend(batch)   # "cpp" with the extension, None without
    assert backup.fused_update_backend(batch) == expected
    clamp = type("Clamp", (), {"target_min": 0.0, "name": "clamp", "coef": 1.0,
                               "__call__": lambda self, agent, b: torch.zeros_like(b.rewards)})()
    plain.target_penalties = [clamp]
    assert plain.fused_update_backend(batch) == expected and plain.target_min() == 0.0


def test_fused_update_follows_the_actor_lr_cosine_schedule():
    from pyscorepen.algos.sac import SAC, SACConfig
    from pyscorepen.data import Batch
    torch.manual_seed(0)
    batch = Batch(torch.randn(256, 5), torch.rand(256, 2) * 2 - 1, torch.randn(256), torch.randn(256, 5),
                  torch.zeros(256), torch.zeros(256), torch.zeros(256, dtype=torch.bool))
    agent = SAC(5, 2, SACConfig(hidden_dims=(32, 32), actor_lr_cosine=True), -torch.ones(2), torch.ones(2),
                total_steps=4)
    from pyscorepen.ops import available_backends
    if "cpp" in available_backends("sac_update", batch.obs):
        assert agent.fused_update_backend(batch) == "cpp"      # the schedule is checked on the fused path
    for _ in range(2):
        agent.update(batch)
    # after 2 of 4 updates the schedule is at its middle: lr_1 = actor_lr * (1 + cos(pi / 4)) / 2
    import math
    assert agent.actor_optim.param_groups[0]["lr"] == pytest.approx(
        agent.config.actor_lr * (1 + math.cos(math.pi / 4)) / 2)
