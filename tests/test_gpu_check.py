"""GPU readiness pieces that can run without a GPU: scripts/gpu_check.sh and its Python parts say
"no CUDA" cleanly, the capture refuses what it cannot hold, and the update's capture-time path
(statistics kept as tensors, no host sync) works."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyscorepen.algos import COMBO, SAC, SACConfig
from pyscorepen.algos.cuda_graph import check_capturable
from pyscorepen.data import Batch
from pyscorepen.errors import PyScorePenError
from pyscorepen.gpu_check import _batches, main
from pyscorepen.penalties import MobilePenalty

REPO = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


@no_cuda
def test_script_says_no_cuda(tmp_path):
    results = tmp_path / "r.txt"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(results)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA" in proc.stdout and "no CUDA" in results.read_text()


@no_cuda
def test_graph_check_says_no_cuda(capsys):
    assert main(["graph", "10"]) == 2
    assert "no CUDA" in capsys.readouterr().err
    assert main(["kernels", "10"]) == 2
    assert "no CUDA" in capsys.readouterr().err
    assert main([]) == 2                                  # usage line, no traceback


def test_capture_refuses_what_it_cannot_hold(monkeypatch):
    agent = SAC(3, 2, SACConfig(hidden_dims=(16, 16)), -torch.ones(2), torch.ones(2))
    if not torch.cuda.is_available():
        with pytest.raises(PyScorePenError, match="no CUDA"):
            check_capturable(agent)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(PyScorePenError, match="device='cuda'"):
        check_capturable(agent)
    agent.device = torch.device("cuda")                   # only the checks look at it
    check_capturable(agent)                               # plain SAC / MOPO / ScorePen: capturable
    agent.target_penalties = [MobilePenalty(1.0, dynamics=None)]
    with pytest.raises(PyScorePenError, match="MOBILE"):
        check_capturable(agent)
    combo = COMBO(3, 2, SACConfig(hidden_dims=(16, 16)), -torch.ones(2), torch.ones(2))
    combo.device = torch.device("cuda")
    with pytest.raises(PyScorePenError, match="COMBO"):
        check_capturable(combo)


def test_update_keeps_tensor_stats_when_capturing(monkeypatch):
    """What GraphedUpdate records: the module-path update with the float conversion (the one host
    sync) swapped out returns 0-dim tensors; the class's conversion turns them into the floats the
    eager update returns. (The reference backends: the module path a CUDA capture takes.)"""
    monkeypatch.setenv("PYSCOREPEN_BACKEND", "ref")
    torch.manual_seed(0)
    agent = SAC(11, 3, SACConfig(hidden_dims=(32, 32)), -torch.ones(3), torch.ones(3))
    batch = _batches(1, "cpu")[0]
    assert isinstance(batch, Batch) and batch.obs.shape == (256, 11)
    agent.stats_to_floats = lambda stats: stats
    try:
        stats = agent.update(batch)
    finally:
        del agent.stats_to_floats
    assert stats and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    floats = SAC.stats_to_floats(stats)
    assert set(floats) == set(agent.update(batch)) and all(isinstance(v, float) for v in floats.values())


@pytest.mark.slow
def test_kernel_check_under_the_triton_interpreter():
    """``python -m pyscorepen.gpu_check kernels``' measurements on CPU tensors under TRITON_INTERPRET=1 at
    tiny sizes (in a child process, so the interpreter is on before triton is imported): every rate is
    a positive number and both Triton whole steps stay within 1 % of what Adam moves from their
    references after 20 steps. So the GPU script's new step cannot rot while no GPU runs it (~45 s)."""
    pytest.importorskip("triton", reason="Triton is not installed; the Triton backend is optional")
    code = ("import json; from pyscorepen.gpu_check import kernel_check; print(json.dumps(kernel_check("
            "steps=1, batches=(8,), device='cpu', agent_hidden=(16,), dynamics_hidden=(16,), members=2)))")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("PYSCOREPEN_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    sac, fit = result["sac"]["8"], result["dynamics_fit"]
    rates = [sac[f"{label}_updates_per_s"] for label in ("module_ref_ops", "module_auto", "fused_triton")]
    rates += [fit[f"{label}_steps_per_s"] for label in ("module_ref_ops", "fused_triton")]
    assert all(isinstance(rate, float) and rate > 0 for rate in rates), result
    assert 0 <= sac["fused_triton_param_gap_vs_update_ref"] <= 0.01
    assert 0 <= fit["fused_triton_param_gap_vs_module"] <= 0.01
    assert result["ok"] is True


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for a CUDA machine's python: logs each call (OMP_NUM_THREADS, then the arguments, one
# per line, then a blank line) and answers the script's probes; FAKE_XDIST: whether xdist "imports";
# FAKE_FAIL: the module whose run exits 3
{ echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-}"; printf '%s\n' "$@"; echo; } >> "$FAKE_LOG"
if [ "$1" = "-c" ]; then
    case "$2" in
        *"import xdist"*) [ "${FAKE_XDIST:-0}" = 1 ]; exit $? ;;
        *"print('torch'"*) echo "torch fake | cuda fake | Fake GPU" ;;
        *"import triton"*) echo "triton fake" ;;
    esac
    exit 0
fi
echo "ran: $*"
[ "$1" = "-m" ] && [ "$2" = "${FAKE_FAIL:-}" ] && exit 3
exit 0
"""


def _run_script_with_fake_cuda(tmp_path, xdist: bool, fail: str = "") -> tuple[subprocess.CompletedProcess, list]:
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(log), "FAKE_XDIST": "1" if xdist else "0",
           "FAKE_FAIL": fail}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "results.txt")],
                          capture_output=True, text=True, timeout=120, env=env)
    calls = [block.split("\n") for block in log.read_text().strip("\n").split("\n\n")]
    return proc, [(call[0].split("=", 1)[1], call[1:]) for call in calls]


@pytest.mark.parametrize("xdist", [False, True])
def test_script_runs_every_step_with_arguments_the_tools_accept(tmp_path, monkeypatch, capsys, xdist):
    """scripts/gpu_check.sh has never run on a GPU: with a python that says CUDA is there, every step
    runs in order, the summary says so, and what each step runs is accepted by the real tools (test
    files that exist, CLI options that parse), so a renamed option or file cannot rot it unseen."""
    proc, calls = _run_script_with_fake_cuda(tmp_path, xdist)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (tmp_path / "results.txt").read_text()
    assert "ALL PASSED" in results and "Fake GPU" in results
    summary = proc.stdout.split("## summary")[1].splitlines()
    assert [line.split(":")[0] for line in summary if "exit 0" in line] == [
        "1 triton kernels vs reference (compiled)", "2 op benches, triton provider", "3a CUDA-graph SAC update",
        "3b whole-step Triton kernels (SAC update, dynamics fit)", "4a 2,000-step ScorePen run (cliff, cuda)",
        "4b 2,000-step ScorePen profile (Hopper sizes, cuda)"]
    runs = {args[1]: (omp, args[2:]) for omp, args in calls if args[0] == "-m"}
    assert set(runs) == {"pytest", "pyscorepen.gpu_check", "pyscorepen.train", "pyscorepen.profile"}

    # step 1 and 2: the test and bench files exist; step 1's workers share the cores
    pytest_calls = [args[2:] for _, args in calls if args[:2] == ["-m", "pytest"]]
    assert len(pytest_calls) == 2
    for args in pytest_calls:
        files = [a for a in args if a.endswith(".py")]
        assert files and all((REPO / f).is_file() for f in files), files
    omp_1 = next(omp for omp, args in calls if args[:2] == ["-m", "pytest"] and "-v" in args)
    workers = min(os.cpu_count(), 8) if xdist else 1
    assert int(omp_1) == os.cpu_count() // workers
    assert ("-n" in pytest_calls[0]) == xdist

    # step 3: both subcommands exist (here they stop at "no CUDA", not at the usage line)
    checks = [args[2:] for _, args in calls if args[:2] == ["-m", "pyscorepen.gpu_check"]]
    assert [c[0] for c in checks] == ["graph", "kernels"]
    for check in checks:
        if not torch.cuda.is_available():
            assert main(check) == 2
            assert "no CUDA" in capsys.readouterr().err

    # step 4: the train and profile command lines parse (and validate, with CUDA pretended)
    from pyscorepen.profile import ProfileConfig
    from pyscorepen.train import parse_config
    import tyro
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    train_args = runs["pyscorepen.train"][1]
    config = parse_config(train_args)
    assert (config.algo, config.device, config.steps) == ("scorepen", "cuda", 2000)
    profile = tyro.cli(ProfileConfig, args=runs["pyscorepen.profile"][1])
    assert (profile.algo, profile.device, profile.steps) == ("scorepen", "cuda", 2000)


def test_script_reports_a_failed_step(tmp_path):
    """A step that fails is named in the summary, the later steps still run, and the exit status is 1."""
    proc, calls = _run_script_with_fake_cuda(tmp_path, xdist=False, fail="pyscorepen.train")
    assert proc.returncode == 1
    results = (tmp_path / "results.txt").read_text()
    assert "SOME STEPS FAILED" in results
    assert "4a 2,000-step ScorePen run (cliff, cuda): exit 3" in results
    assert "4b 2,000-step ScorePen profile (Hopper sizes, cuda): exit 0" in results
    assert calls[-1][1][:2] == ["-m", "pyscorepen.profile"]
