"""Issue 9's throughput targets as *paired* ratios against the sgemm probe, for noisy machines.

The pytest benches probe sgemm once per session and divide every median by it. On a VM whose
speed drifts by +-30 % within minutes (benches/README.md, sessions 8-10) that ratio moves with
the drift between the probe and the bench. Here each round runs the probe (the better of MKL and
oneDNN on the 8192 x 256 x 256 GEMM of ``benchutil.PROBE_SHAPE``) right before the workload, and
the round's ratio is workload GFLOP/s / probe GFLOP/s; the table shows the median and the quartiles
of those paired ratios over the rounds, so slow drift cancels within each pair::

    python benches/targets.py                       # every workload, 2 threads, 15 rounds (~2 min)
    python benches/targets.py --threads 1 --rounds 30 --workloads combo critic-3840

Workloads (the FLOP counts of the pytest benches, same inputs):

* ``sac``, ``combo``: ``SAC.update`` / ``COMBO.update`` as the fused ``sac_update`` op
  (bench_sac_update.py, batch 256; COMBO with rho = model and R = 10);
* ``mobile``: the MOBILE update on the fused ops (bench_mobile.py);
* ``critic-256``, ``critic-3840``, ``dynamics-256``: ``ensemble_mlp`` forward + all gradients
  (bench_ensemble_mlp.py), the last two being issue 9's ">= 85 % at B >= 4 096" class and the
  dynamics fit's kernels;
* ``fit-step``: one whole minibatch step of the dynamics fit as ``fit`` runs it (the
  ``dynamics_fit_step`` op where the ISA allows; bench_dynamics_train.py's sizes: 7 x 4x200, S=17,
  A=6, 256 rows per member; FLOPs of the forward + backward only, so the loss and Adam count as overhead).

Run it with nothing else on the cores (one more busy process halves the 2-thread rates). It sets the
training CLIs' allocator thresholds for its process (pyscorepen.allocator.tune_malloc), as a run has.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_ensemble_mlp  # noqa: E402
import bench_mobile  # noqa: E402
import bench_sac_update  # noqa: E402
from benchutil import cpu_isa, probe_sgemm_gflops  # noqa: E402

TARGETS = {"sac": 75.0, "combo": 80.0, "mobile": 80.0, "critic-3840": 85.0}   # % of the probe (issue 9)


def probe_gflops() -> float:
    """The better of MKL and oneDNN on PROBE_SHAPE, best of 3 calls each, wall time (as the workloads)."""
    with torch.no_grad():
        return probe_sgemm_gflops(repeats=3, wall=True)["limit_gflops"]


def cycling(update, batches):
    """A step function that runs ``update`` on ``batches`` in turn."""
    state = {"i": 0}

    def step():
        state["i"] += 1
        update(batches[state["i"] % len(batches)])
    return step


def update_workload(algo: str):
    agent, update = bench_sac_update.make_agent(algo, "fused")
    gen = torch.Generator().manual_seed(1)
    batches = [bench_sac_update.make_batch(bench_sac_update.MODEL_FRACTION[algo], gen) for _ in range(4)]
    if agent.fused_update_backend(batches[0]) is None:
        raise SystemExit(f"{algo}: no fused update on this machine (extension not built or policy)")
    return cycling(update, batches), bench_sac_update.update_flops(algo, batches[0])


def mobile_workload():
    agent, update = bench_mobile.make_update("fast")
    gen = torch.Generator().manual_seed(1)
    batches = [bench_mobile.make_batch(0.95, gen) for _ in range(2)]
    return cycling(update, batches), bench_mobile.update_flops(agent, batches[0])


def ensemble_workload(shape: str):
    from pyscorepen.ops.ensemble_mlp import ensemble_mlp
    x, weights, biases, activation = bench_ensemble_mlp.make_inputs(shape)
    leaves = [x, *weights, *biases]

    def step():
        out = ensemble_mlp(x, weights, biases, activation, backend="cpp")
        torch.autograd.grad(out.square().sum(), leaves)
    return step, bench_ensemble_mlp.SHAPES[shape][1] * bench_ensemble_mlp.flops_per_row(shape)


def fit_step_workload():
    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
    import bench_dynamics_train as b
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(b.OBS_DIM, b.ACT_DIM, DynamicsConfig(ensemble_size=b.MEMBERS, hidden_dims=b.HIDDEN))
    optim = dynamics.make_optimizer(1e-3)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(b.TRAIN_SIZE, b.OBS_DIM + b.ACT_DIM, generator=gen), torch.randn(b.TRAIN_SIZE, b.OBS_DIM + 1,
                                                                                      generator=gen)
    idx = dynamics.shuffle(torch.arange(b.TRAIN_SIZE), gen)
    state = {"steps": iter(())}

    def step():
        try:
            next(state["steps"])
        except StopIteration:   # a new pass over the same shuffle
            state["steps"] = dynamics.train_batches(x, y, idx, optim)
            next(state["steps"])
    batch = dynamics.config.batch_size
    return step, b.MEMBERS * batch * b.FLOPS_PER_SAMPLE


WORKLOADS = {
    "sac": lambda: update_workload("sac"),
    "combo": lambda: update_workload("combo"),
    "mobile": mobile_workload,
    "critic-256": lambda: ensemble_workload("critic-256"),
    "critic-3840": lambda: ensemble_workload("critic-3840"),
    "dynamics-256": lambda: ensemble_workload("dynamics-256"),
    "fit-step": fit_step_workload,
}


def measure(step, flops: int, rounds: int, calls: int, warmup: int = 3) -> dict[str, float]:
    """`rounds` x (probe, `warmup` untimed workload calls, then `calls` timed ones: their median);
    paired ratios in %. The untimed calls matter: right after the probe the first 1-3 calls of a
    small workload ran up to 3x slower (the probe's 8 MB operands leave the caches and the
    allocator cold), which is the probe's footprint, not the workload's speed."""
    ratios, medians, probes = [], [], []
    for _ in range(rounds):
        probe = probe_gflops()
        for _ in range(warmup):
            step()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        probes.append(probe)
        medians.append(median)
        ratios.append(100 * flops / median / 1e9 / probe)
    ratios.sort()
    q = len(ratios) // 4
    return {"pct_median": statistics.median(ratios), "pct_q25": ratios[q], "pct_q75": ratios[-1 - q],
            "ms_median": 1e3 * statistics.median(medians), "probe_median": statistics.median(probes)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=7, help="timed workload calls per round (their median is paired)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # the CLIs' allocator settings (what a training run has; the fit step's op is chosen only with them)
    from pyscorepen.allocator import tune_malloc
    tune_malloc()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{args.threads} thread(s), C++ ISA {cpu_isa()}, {args.rounds} rounds x {args.calls} calls\n")
    print("| workload | median time | probe (median) | % of the paired probe: median [q25, q75] | target |")
    print("|---|---:|---:|---:|---|")
    for name in args.workloads:
        step, flops = WORKLOADS[name]()
        r = measure(step, flops, args.rounds, args.calls)
        target = TARGETS.get(name)
        verdict = "" if target is None else f">= {target:.0f} %: {'met' if r['pct_median'] >= target else 'missed'}"
        print(f"| {name} | {r['ms_median']:.2f} ms | {r['probe_median']:.0f} GFLOP/s | "
              f"**{r['pct_median']:.1f} %** [{r['pct_q25']:.1f}, {r['pct_q75']:.1f}] | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
