"""``python -m pyscorepen.calibrate``: measure the automatic CPU policy on this machine.

    python -m pyscorepen.calibrate                     # the default thread count, ~30-40 s on 2 Zen 3 cores
    python -m pyscorepen.calibrate --threads 1 2       # one calibration per thread count
    python -m pyscorepen.calibrate --show              # the policy in force now, nothing measured
    python -m pyscorepen.calibrate --forget            # drop this CPU's calibrations

On CPU, ``auto`` runs an op's C++ kernel only from the batch size where it beat the pure-PyTorch
reference (:data:`pyscorepen.ops.backend.CPP_MIN_ROWS`). Those built-in thresholds were measured
on a few machines (benches/README.md); elsewhere (another CPU, another ISA, another torch and its
MKL) the break-even can sit elsewhere. This command times ``ref`` and ``cpp`` interleaved, in one
process, on every shape class of that policy over its batch sweep
(:data:`pyscorepen.ops.workloads.SWEEPS`, on the ISA auto uses here), takes as each class's
threshold the smallest batch from which cpp was >= 1.0x ref at every larger measured batch
(:func:`pyscorepen.ops.calibration.min_rows_threshold`), and stores the thresholds for this
machine, ISA, thread count, torch version and extension build (:mod:`pyscorepen.ops.calibration`).
From then on ``auto`` uses them; a run records the policy it started with in its folder
(``cpu_policy.json``) and keeps it when resumed.

The ``dynamics_fit_step`` class times the whole minibatch step of the dynamics fit as one op
against the module path it replaces (rows per member). ``sac_update`` times one SAC update as the
fused op against the module path it replaces, under the thresholds just measured, and takes the
other rule: auto runs the op only *up to* a batch (:data:`pyscorepen.ops.backend.CPP_MAX_ROWS`),
the largest up to which cpp was >= 1.0x at every measured batch
(:func:`pyscorepen.ops.calibration.max_rows_limit`).

Run it on an otherwise idle machine: a busy core makes both sides slower unevenly. It sets the
allocator as the training CLIs do (:func:`pyscorepen.allocator.tune_malloc`), since the fit step's
speed depends on it.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

# the shape classes of pyscorepen.ops.workloads.SWEEPS, backend.CPP_MIN_ROWS and CPP_MAX_ROWS (a test
# keeps them equal)
ShapeClass = Literal["rollout_step", "score_penalty", "soft_value", "ensemble_mlp/relu", "ensemble_mlp/silu",
                     "dynamics_fit_step", "sac_update"]


@dataclass
class CalibrateConfig:
    threads: list[int] = field(default_factory=list)
    """Torch thread counts to calibrate, one calibration each (auto looks up the process's count);
    default: the cores this process may use, as train's --threads. Range: [1, inf)."""
    rounds: int = 5
    """Timed rounds per backend and batch (best of them, twice, interleaved). Range: [1, inf)."""
    shape_classes: list[ShapeClass] = field(default_factory=list)
    """Shape classes to measure (default: all); the others keep what the file holds for them, else
    the built-in values."""
    show: bool = False
    """Print the policy in force (source, thresholds and limits; at the first --threads, else the
    default count) and the calibration file; measure nothing."""
    forget: bool = False
    """Remove this CPU's calibrations from the file (every ISA and thread count); measure nothing."""
    dry_run: bool = False
    """Measure and print, but do not write the calibration file."""


def best_seconds(run, backend: str, rounds: int, clock, min_time: float = 0.02) -> float:
    """Best time per call over ``rounds`` rounds of enough calls to last ``min_time``."""
    run(backend)                      # warm-up: allocations, first-call dispatch
    start = clock()
    run(backend)
    calls = max(1, int(min_time / max(clock() - start, 1e-6)))
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            run(backend)
        best = min(best, (clock() - start) / calls)
    return best


def measure_ratios(shape_class: str, rounds: int, threads: int, batches=None, progress=None) -> dict[int, float]:
    """ref time / cpp time per batch of ``shape_class``'s sweep, ``threads`` torch threads, on the
    ISA set now. One thread: CPU time of the thread (``time.thread_time``), which a shared machine
    disturbs least; more: wall time. ``progress(shape_class, batch, ref_seconds, cpp_seconds)`` is
    called after each batch."""
    from pyscorepen.ops.workloads import SWEEPS
    sweep, factory, _ = SWEEPS[shape_class]
    clock = time.thread_time if threads == 1 else time.perf_counter
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    ratios = {}
    try:
        for batch in batches or sweep:
            run = factory(batch)
            ref = cpp = float("inf")
            for _ in range(2):   # interleaved: both sides see the same machine
                ref = min(ref, best_seconds(run, "ref", rounds, clock))
                cpp = min(cpp, best_seconds(run, "cpp", rounds, clock))
            ratios[batch] = ref / cpp
            if progress:
                progress(shape_class, batch, ref, cpp)
    finally:
        torch.set_num_threads(previous)
    return ratios


def calibrate(threads: int, rounds: int, shape_classes, progress=None) -> dict:
    """Measure ``shape_classes`` at ``threads`` threads; returns the calibration entry (not written).
    The whole-step ops' limits (``backend.CPP_MAX_ROWS``) are measured after the thresholds, with the
    thresholds just measured pinned: their module path runs the ops as auto will from now on."""
    from pyscorepen.ops import backend, calibration
    isa = backend.cpu_isa()
    if isa is None:
        from pyscorepen.errors import PyScorePenError
        raise PyScorePenError("the C++ extension is not loaded (pip install --no-build-isolation -e . builds it): "
                              "there is no cpp backend to calibrate")
    ratios, thresholds, limits = {}, {}, {}
    for shape_class in sorted(shape_classes, key=lambda sc: sc in backend.CPP_MAX_ROWS):   # limits last
        if shape_class in backend.CPP_MAX_ROWS:   # the classes not measured now: the policy in force
            with backend.pinned_cpu_policy(thresholds):
                ratios[shape_class] = measure_ratios(shape_class, rounds, threads, progress=progress)
            limits[shape_class] = calibration.max_rows_limit(ratios[shape_class])
        else:
            ratios[shape_class] = measure_ratios(shape_class, rounds, threads, progress=progress)
            thresholds[shape_class] = calibration.min_rows_threshold(ratios[shape_class])
    return calibration.new_entry(isa, threads, thresholds, ratios, rounds, limits)


def _rows(value: int) -> str:
    from pyscorepen.ops.calibration import NEVER
    return "never" if value >= NEVER else f"{value:,}"


def _limit(value: int) -> str:
    from pyscorepen.ops.calibration import NEVER
    return "any" if value >= NEVER else "no" if value == 0 else f"{value:,}"


def show() -> None:
    """Print the policy in force (at the current torch thread count) and the calibration file."""
    from pyscorepen.ops import backend, calibration
    policy = backend.cpu_policy()
    path = calibration.policy_file()
    print(f"ISA {policy['isa']}, {policy['threads']} thread(s), CPU {' / '.join(backend.cpu_vendor_keys())}: "
          f"{policy['source']} policy" + (f" ({policy.get('created')})" if policy["source"] == "calibrated" else ""))
    for shape_class, rows in policy["thresholds"].items():
        builtin = backend.builtin_min_rows(shape_class, policy["isa"])
        print(f"  {shape_class:<18} cpp from {_rows(rows):>6} rows   (built-in: {_rows(builtin)})")
    for op, rows in policy["limits"].items():
        builtin = backend.builtin_max_rows(op, policy["isa"])
        print(f"  {op:<18} cpp up to {_limit(rows):>5} rows   (built-in: {_limit(builtin)})")
    if path is None:
        print(f"calibrations ignored ({calibration.ENV_VAR}={calibration.BUILTIN})")
    else:
        try:
            entries = calibration.read_entries(path)
            note = f"{len(entries)} calibration(s)"
        except calibration.CalibrationError as err:
            note = f"unusable: {err}"
        print(f"calibration file: {path} ({note})")


def main(argv: list[str] | None = None) -> int:
    import tyro

    from pyscorepen.errors import cli_main
    from pyscorepen.ops import backend, calibration
    from pyscorepen.ops.workloads import SWEEPS
    from pyscorepen.threads import default_threads
    config = tyro.cli(CalibrateConfig, args=argv, description=__doc__.split("\n\n")[0])
    from pyscorepen.allocator import tune_malloc
    tune_malloc()   # as the train / profile CLIs: the fit step op is timed as a run has it

    def go(cfg: CalibrateConfig) -> int:
        from pyscorepen.validation import ConfigError
        path = calibration.policy_file()
        if cfg.show:
            if cfg.threads:
                torch.set_num_threads(cfg.threads[0])
            show()
            return 0
        if path is None and not cfg.dry_run:
            raise ConfigError(f"{calibration.ENV_VAR}={calibration.BUILTIN} ignores calibrations: unset it, or "
                              "pass --dry-run to measure without writing")
        if cfg.forget:
            removed = calibration.forget(path, {"cpu": calibration.cpu_model()})
            print(f"removed {removed} calibration(s) of {calibration.cpu_model()} from {path}")
            return 0
        if cfg.rounds < 1 or any(t < 1 for t in cfg.threads):
            raise ConfigError("--rounds and --threads must be >= 1")
        if os.environ.pop(backend.ENV_VAR, None):   # the module paths timed must dispatch as auto does
            print(f"note: {backend.ENV_VAR} is ignored while calibrating (the automatic policy is measured)",
                  file=sys.stderr)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > 0.5:
            print(f"note: load average {load:.1f}; other work on the cores makes the ratios noisy", file=sys.stderr)
        shape_classes = cfg.shape_classes or list(SWEEPS)
        print(f"calibrating {', '.join(shape_classes)} on {calibration.cpu_model()}, ISA {backend.cpu_isa()}"
              f"{' (EMULATED test build: timings mean nothing)' if backend.avx512_emulated() else ''}", flush=True)
        for threads in cfg.threads or [default_threads()]:
            def progress(shape_class, batch, ref, cpp, threads=threads):
                print(f"  {threads} thread(s)  {shape_class:<18} B = {batch:>6,}  ref/cpp {ref / cpp:5.2f}", flush=True)
            entry = calibrate(threads, cfg.rounds, shape_classes, progress)
            found = [f"{sc} cpp from {_rows(rows)}" for sc, rows in entry["thresholds"].items()]
            found += [f"{op} cpp up to {_limit(rows)}" for op, rows in entry["limits"].items()]
            print(f"{threads} thread(s): " + ", ".join(found), flush=True)
            if not cfg.dry_run:
                calibration.write_entry(path, entry)
        calibration.clear_cache()
        if not cfg.dry_run:
            print(f"written to {path}; auto uses it in processes with the same thread count "
                  f"(show it: python -m pyscorepen.calibrate --show)")
        return 0

    return cli_main(lambda _argv: go(config), [], print_result=False)   # the tables are printed as they come


if __name__ == "__main__":
    sys.exit(main())
