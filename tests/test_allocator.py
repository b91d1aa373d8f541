"""pyscorepen.allocator: the CLIs' glibc thresholds stop the per-step page-fault churn.

Each check runs in a fresh interpreter: mallopt changes the whole process, and the allocator's
state (its dynamic thresholds) depends on everything allocated before."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# The dynamics fit's steps (7 members x 4 x 200 SiLU, 256 rows per member; what made the
# faults visible in perf) on its module path (autograd; the dynamics_fit_step op is chosen only in a
# tuned process, so it is forced with argv[2] == "op"): minor page faults per step over 16 steps,
# over 32 steps after 16 warm-up steps (one-time faults, e.g. a heap that still grows, are
# spread over the 32: tuned processes read 6-25 per step over 16, 0-12 over 32; untuned 500-580
# on the module path, ~3 700 on the op).
CHURN = """
import json, resource, sys
import torch
from pyscorepen import allocator
from pyscorepen.allocator import tune_malloc
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
tuned = tune_malloc() if sys.argv[1] == "tune" else None
op = len(sys.argv) > 2 and sys.argv[2] == "op"
if op:
    allocator.buffers_kept = lambda: True   # the op whatever the allocator (its policy would refuse it)
torch.manual_seed(0)
dynamics = EnsembleDynamics(17, 6, DynamicsConfig(ensemble_size=7, hidden_dims=(200,) * 4, fused_step=op))
gen = torch.Generator().manual_seed(1)
x, y = torch.randn(4096, 23, generator=gen), torch.randn(4096, 18, generator=gen)
index, optim = torch.arange(4096), dynamics.make_optimizer(1e-3)
dynamics.train_epoch(x, y, index, optim, gen)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
dynamics.train_epoch(x, y, index, optim, gen)
dynamics.train_epoch(x, y, index, optim, gen)
steps = 2 * 4096 // 256
print(json.dumps({"tuned": tuned, "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps}))
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are glibc's")


def churn(mode: str, path: str = "module", **env) -> dict:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("MALLOC_") and k not in ("PYSCOREPEN_MALLOC", "LD_PRELOAD")}
    environment.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHURN, mode, path], env=environment, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def churn_untuned(path: str = "module", mode: str = "default", above: float = 100, attempts: int = 3,
                  **env) -> dict:
    """``churn(mode, path, **env)`` in a process whose allocator is left at glibc's defaults, repeated
    until one shows the churn (more than ``above`` faults per step), at most ``attempts`` processes.
    Under glibc's defaults the churn depends on the allocator's history (its dynamic mmap threshold
    rises with the first large free): one fresh process in ~15 read 37 faults per step on the
    module path where the others read 260-870 (AMD Zen 3, session 12). The premise is that
    untuned processes churn, not that every one does."""
    for _ in range(attempts):
        result = churn(mode, path, **env)
        if result["faults_per_step"] > above:
            break
    return result


@glibc_only
def test_tuned_process_reuses_its_buffers():
    default, tuned = churn_untuned(), churn("tune")
    # glibc's defaults (2.36, measured: 260-900 per step): freed buffers go back to the OS, and the
    # next step faults them in again
    assert default["faults_per_step"] > 100, default
    assert tuned["tuned"] is True
    assert tuned["faults_per_step"] < 50, tuned


@glibc_only
def test_the_fused_fit_step_churns_without_the_settings():
    """The dynamics_fit_step op frees its ~16 MB at once (measured 700-3 800 faults per step with
    glibc's defaults): why its automatic choice asks allocator.buffers_kept()."""
    default, tuned = churn_untuned("op", above=200), churn("tune", "op")
    assert default["faults_per_step"] > 200, default
    assert tuned["tuned"] is True and tuned["faults_per_step"] < 50, tuned


@glibc_only
@pytest.mark.parametrize("env", [{"PYSCOREPEN_MALLOC": "default"}, {"MALLOC_ARENA_MAX": "2"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_users_choice_is_kept(env):
    result = churn_untuned(mode="tune", **env)
    assert result["tuned"] is False
    assert result["faults_per_step"] > 50, result   # the default behaviour, untouched (tuned: < 50)


def test_tune_malloc_is_idempotent_and_safe_here(monkeypatch):
    from pyscorepen import allocator
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv("PYSCOREPEN_MALLOC", "default")   # never change the test process's allocator
    assert allocator.tune_malloc() is False
    monkeypatch.delenv("PYSCOREPEN_MALLOC")
    assert allocator.tune_malloc() is False   # remembered: one decision per process
