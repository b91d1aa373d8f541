"""``python -m pyscorepen.gpu_check graph|kernels``: the Python parts of ``scripts/gpu_check.sh``.

``kernels`` (:func:`kernel_check`): the whole-step Triton kernels (``sac_update``,
``dynamics_fit_step``) timed on the GPU against the module path, and checked against their references
at full size.

``graph`` (:func:`graph_check`):

Builds two identical SAC agents at Hopper sizes (obs 11, action 3, (256, 256) nets, batch 256) on
the GPU, trains one with the eager ``SAC.update`` and one with :class:`pyscorepen.algos.cuda_graph.
GraphedUpdate` on the same sequence of batches, and reports both update rates and whether the
graphed agent learns like the eager one (finite losses, every network changed, mean critic loss
and Q within a loose band of the eager run's: the random draws differ, so the runs are compared
as statistics, not bit for bit). Prints one JSON object; exit 0 when every check passed, 1 when
one failed, 2 when there is no CUDA device (a clear one-line message, no traceback).
"""
from __future__ import annotations

import copy
import functools
import json
import sys
import time

import torch

from pyscorepen.errors import PyScorePenError
from pyscorepen.ops.backend import requested_backend

OBS, ACT, BATCH = 11, 3, 256


def _batches(n: int, device, seed: int = 0):
    from pyscorepen.data import Batch
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        obs = torch.randn(BATCH, OBS, generator=gen)
        out.append(Batch(obs, torch.rand(BATCH, ACT, generator=gen) * 2 - 1, torch.randn(BATCH, generator=gen),
                         obs + 0.1 * torch.randn(BATCH, OBS, generator=gen), torch.zeros(BATCH),
                         0.1 * torch.rand(BATCH, generator=gen), torch.rand(BATCH, generator=gen) < 0.95).to(device))
    return out


def graph_check(steps: int = 500) -> dict:
    from pyscorepen.algos.cuda_graph import GraphedUpdate, check_capturable
    from pyscorepen.algos.sac import SAC, SACConfig
    if not torch.cuda.is_available():
        raise PyScorePenError("no CUDA: torch.cuda.is_available() is False, nothing to capture on this machine.")
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = SAC(OBS, ACT, SACConfig(), -torch.ones(ACT), torch.ones(ACT), device)
    graphed_agent = copy.deepcopy(eager)
    check_capturable(graphed_agent)
    initial = {k: v.detach().clone() for k, v in graphed_agent.actor.named_parameters()}
    initial_critic = {k: v.detach().clone() for k, v in graphed_agent.critic.named_parameters()}
    batches = _batches(16, device)

    def timed(fn) -> tuple[float, list]:
        torch.cuda.synchronize()
        t0, stats = time.perf_counter(), []
        for i in range(steps):
            stats.append(fn(batches[i % len(batches)]))
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0), stats

    # the eager run gets the same 3 extra steps on the first batch as the capture's warm-up (the
    # captured step itself is recorded, not executed)
    for _ in range(3):
        eager.update(batches[0])
    eager_rate, eager_stats = timed(eager.update)
    t0 = time.perf_counter()
    graphed = GraphedUpdate(graphed_agent, batches[0])
    capture_s = time.perf_counter() - t0
    graph_rate, graph_stats = timed(graphed)
    graph_stats = [GraphedUpdate.to_floats(s) for s in graph_stats[-50:]]
    eager_tail = eager_stats[-50:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    result = {"steps": steps, "batch": BATCH, "device": torch.cuda.get_device_name(),
              "eager_updates_per_s": eager_rate, "graphed_updates_per_s": graph_rate,
              "speedup": graph_rate / eager_rate, "capture_s": capture_s,
              "eager_critic_loss": mean(eager_tail, "loss/critic"), "graphed_critic_loss": mean(graph_stats, "loss/critic"),
              "eager_q_mean": mean(eager_tail, "q_mean"), "graphed_q_mean": mean(graph_stats, "q_mean"),
              "num_updates": graphed_agent.num_updates}
    finite = all(all(v == v and abs(v) != float("inf") for v in s.values()) for s in graph_stats)
    actor_changed = all(not torch.equal(v, initial[k]) for k, v in graphed_agent.actor.named_parameters())
    critic_changed = all(not torch.equal(v, initial_critic[k]) for k, v in graphed_agent.critic.named_parameters())
    q_close = abs(result["graphed_q_mean"] - result["eager_q_mean"]) <= 0.25 * abs(result["eager_q_mean"]) + 0.5
    loss_close = result["graphed_critic_loss"] <= 3 * result["eager_critic_loss"] + 0.1
    result["checks"] = {"finite": finite, "actor_changed": actor_changed, "critic_changed": critic_changed,
                        "q_mean_close_to_eager": q_close, "critic_loss_close_to_eager": loss_close,
                        "num_updates_counts_replays": graphed_agent.num_updates == steps}
    result["ok"] = all(result["checks"].values())
    return result


def _timed_rate(fn, steps: int, sync) -> float:
    """Calls per second of ``fn`` over ``steps`` calls, after 3 warm-up calls (compilation, handles)."""
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return steps / (time.perf_counter() - t0)


def _with_backend(name: str | None, fn):
    """``fn`` made to run under ``PYSCOREPEN_BACKEND=name`` (None: auto), the variable restored after."""
    def run():
        with requested_backend(name):
            return fn()
    return run


def kernel_check(steps: int = 200, batches: tuple[int, ...] = (256, 4096), device: str = "cuda",
                 agent_hidden: tuple[int, ...] = (256, 256), dynamics_hidden: tuple[int, ...] = (200,) * 4,
                 members: int = 7) -> dict:
    """The whole-step Triton kernels on the GPU at Hopper sizes, against the module path.

    * SAC update (obs 11, action 3, ``agent_hidden`` actor and twin critics, 95 % model rows with a
      stored penalty) per batch in ``batches``: updates/s of the module path on the reference ops
      (``PYSCOREPEN_BACKEND=ref``: cuBLAS GEMMs under autograd), of the module path under auto (its
      per-op Triton kernels), and of the fused ``sac_update`` Triton step; and the Triton step's
      largest parameter difference from ``SAC.update_ref`` after 20 updates from the same weights and
      noise, in units of the distance Adam can move a parameter in 20 steps (20 x lr): <= 0.01 passes.
    * Dynamics fit step (``members`` x ``dynamics_hidden`` SiLU, 256 rows per member, 100k rows):
      minibatch steps/s of the module path (reference ops, torch's Adam) and of the fused
      ``dynamics_fit_step`` Triton step, and the Triton step's parameter difference from the module
      path after 20 steps, in units of 20 x lr (<= 0.01 passes).
    Every measurement is guarded: one that raises is reported as its error, and fails the check.
    """
    from pyscorepen.algos.sac import SAC, SACConfig
    from pyscorepen.data import Batch
    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    result: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "steps": steps,
                    "sac": {}, "dynamics_fit": {}}
    ok = True

    def guarded(table: dict, key: str, measure) -> None:
        nonlocal ok
        try:
            table[key] = measure()
        except Exception as err:   # noqa: BLE001  (reported, and the check fails)
            table[key] = f"error: {type(err).__name__}: {err}"[:500]
            ok = False

    def ratio(table: dict, key: str, fast: str, slow: str) -> None:
        if isinstance(table.get(fast), float) and isinstance(table.get(slow), float):
            table[key] = table[fast] / table[slow]

    def gap_within_tolerance(table: dict, key: str, measure) -> None:
        """``measure()`` (a gap in units of what Adam moves a parameter) into ``table[key]``; > 0.01 fails."""
        nonlocal ok
        guarded(table, key, measure)
        if not (isinstance(table[key], float) and table[key] <= 0.01):
            ok = False

    def max_param_gap(got: torch.nn.Module, want: torch.nn.Module, scale: float) -> float:
        return max(float((g.detach() - w.detach()).abs().max()) / scale
                   for g, w in zip(got.state_dict().values(), want.state_dict().values()) if g.is_floating_point())

    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        from_model = torch.arange(batch) >= round(batch * 0.05)                        # [B]
        rows = Batch(torch.randn(batch, OBS, generator=gen), torch.rand(batch, ACT, generator=gen) * 2 - 1,
                     torch.randn(batch, generator=gen), torch.randn(batch, OBS, generator=gen), torch.zeros(batch),
                     torch.rand(batch, generator=gen) * from_model, from_model).to(dev)
        torch.manual_seed(0)
        base = SAC(OBS, ACT, SACConfig(hidden_dims=agent_hidden), -torch.ones(ACT), torch.ones(ACT), dev)
        table = result["sac"][str(batch)] = {}

        def fused_sac(agent):
            """``agent``, checked to run the fused Triton step under PYSCOREPEN_BACKEND=triton."""
            with requested_backend("triton"):
                backend = agent.fused_update_backend(rows)
            if backend != "triton":
                raise AssertionError(f"SAC.update runs {backend or 'the module path'}, not the Triton step")
            return agent

        for label, backend in (("module_ref_ops", "ref"), ("module_auto", None), ("fused_triton", "triton")):
            agent = copy.deepcopy(base)
            guarded(table, f"{label}_updates_per_s", lambda: _timed_rate(_with_backend(
                backend, functools.partial((fused_sac(agent) if backend == "triton" else agent).update, rows)), steps, sync))
        ratio(table, "fused_triton_vs_module_ref_ops", "fused_triton_updates_per_s", "module_ref_ops_updates_per_s")

        def sac_gap():
            fused, ref = fused_sac(copy.deepcopy(base)), copy.deepcopy(base)
            torch.manual_seed(3)
            with requested_backend("triton"):
                for _ in range(20):
                    fused.update(rows)
            torch.manual_seed(3)
            with requested_backend("ref"):
                for _ in range(20):
                    ref.update_ref(rows)
            scale = 20 * max(fused.config.actor_lr, fused.config.critic_lr)
            return max(max_param_gap(getattr(fused, n), getattr(ref, n), scale)
                       for n in ("actor", "critic", "critic_target"))
        gap_within_tolerance(table, "fused_triton_param_gap_vs_update_ref", sac_gap)

    gen = torch.Generator().manual_seed(0)
    n_rows, in_dim, out_dim = 100_000, OBS + ACT, OBS + 1
    x = torch.randn(n_rows, in_dim, generator=gen).to(dev)
    y = torch.randn(n_rows, out_dim, generator=gen).to(dev)
    torch.manual_seed(0)
    config = DynamicsConfig(ensemble_size=members, hidden_dims=dynamics_hidden, batch_size=256)
    base_model = EnsembleDynamics(OBS, ACT, config).to(dev)
    idx = base_model.shuffle(torch.arange(n_rows, device=dev), torch.Generator().manual_seed(1))   # [E, n]
    lr = 1e-3

    def fit_stepper(backend: str, model):
        """One minibatch step of ``model``'s fit per call under ``backend``, epoch after epoch
        (triton: checked to run the fused Triton step)."""
        optim = model.make_optimizer(lr)
        if backend == "triton":
            with requested_backend(backend):
                chosen = model.fused_step_backend(optim, x)
            if chosen != "triton":
                raise AssertionError(f"the fit runs {chosen or 'the module path'}, not the Triton step")
        state = {"batches": iter(())}

        def step():
            try:
                next(state["batches"])
            except StopIteration:
                state["batches"] = model.train_batches(x, y, idx, optim)
                next(state["batches"])
        return _with_backend(backend, step)

    fit = result["dynamics_fit"]
    for label, backend in (("module_ref_ops", "ref"), ("fused_triton", "triton")):
        guarded(fit, f"{label}_steps_per_s",
                lambda: _timed_rate(fit_stepper(backend, copy.deepcopy(base_model)), steps, sync))
    ratio(fit, "fused_triton_vs_module_ref_ops", "fused_triton_steps_per_s", "module_ref_ops_steps_per_s")

    def fit_gap():
        models = {name: copy.deepcopy(base_model) for name in ("triton", "ref")}
        for name, model in models.items():
            stepper = fit_stepper(name, model)
            for _ in range(20):
                stepper()
        return max_param_gap(models["triton"], models["ref"], 20 * lr)
    gap_within_tolerance(fit, "fused_triton_param_gap_vs_module", fit_gap)
    result["ok"] = ok
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    checks = {"graph": (graph_check, 500), "kernels": (kernel_check, 200)}
    if not argv or argv[0] not in checks:
        print("usage: python -m pyscorepen.gpu_check {graph,kernels} [steps]", file=sys.stderr)
        return 2
    check, default_steps = checks[argv[0]]
    if not torch.cuda.is_available():
        print(f"error: no CUDA: torch.cuda.is_available() is False, nothing to {argv[0]} on this machine.",
              file=sys.stderr)
        return 2
    try:
        result = check(int(argv[1]) if len(argv) > 1 else default_steps)
    except PyScorePenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
