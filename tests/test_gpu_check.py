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
