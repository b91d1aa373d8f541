"""The Hopper commands of the CDSA experiments on a tiny locally collected dataset: IQL and
ScorePen-MORL trained on it, CDSA trained on it, both evaluated with and without the correction."""
import json
import os
import subprocess
import sys

import pytest

from pyscorepen.collect import main as collect_main
from tests.test_collect import TINY as TINY_COLLECT


def cli(module, *args, env):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, f"{module} {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_hopper_iql_scorepen_and_cdsa_commands(tmp_path, monkeypatch):
    datasets = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets))
    assert collect_main(TINY_COLLECT + ["--run-dir", str(tmp_path / "collect"), "--levels", "random"]) == 0
    task = "pyscorepen/hopper/random-v0"
    env = {"MINARI_DATASETS_PATH": str(datasets)}
    small = ["--task", task, "--eval-episodes", "2", "--no-progress"]
    cli("pyscorepen.train", "--algo", "iql", "--steps", "20", "--eval-interval", "20", "--iql.hidden-dims", "16",
        "--out", str(tmp_path / "iql"), *small, env=env)
    cli("pyscorepen.train", "--algo", "scorepen", "--steps", "10", "--eval-interval", "10", "--sac.hidden-dims", "16",
        "--dynamics.hidden-dims", "16", "--dynamics.max-epochs", "1", "--score.train-steps", "10",
        "--rollout.batch-size", "16", "--out", str(tmp_path / "scorepen"), *small, env=env)
    cli("pyscorepen.train", "--algo", "cdsa", "--steps", "20", "--eval-interval", "20",
        "--out", str(tmp_path / "cdsa"), *small, env=env)
    config = json.loads((tmp_path / "cdsa" / "config.json").read_text())
    assert (config["cdsa"]["k1"], config["cdsa"]["k2"]) == (0.1, 1.0)     # CDSA Table 2, hopper-random (IQL)
    for base in ("iql", "scorepen"):
        result = json.loads(cli("pyscorepen.evaluate", str(tmp_path / base), "--cdsa", str(tmp_path / "cdsa"),
                                "--episodes", "2", env=env).stdout)
        assert result["k1"] == 0.1 and result["corrected"]["num_episodes"] == 2 and "var_5" in result["corrected"]
