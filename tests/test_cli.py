"""Smoke runs of the CLI entry points and the run-folder contract (incl. resuming)."""
import json
import os
import subprocess
import sys

import pytest

from pyscorepen.configs import to_cli_args
from tests.test_algorithms import TINY

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(module, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_args(**extra):
    # cliff options are top-level flags (--goal, --dataset-size): drop their group prefix
    values = {k.removeprefix("cliff."): v for k, v in {**TINY, **extra}.items() if k != "progress"}
    return [*to_cli_args(values), "--no-progress"]


def test_train_cli_writes_run_folder_and_resumes(tmp_path):
    out = tmp_path / "run"
    cli("pyscorepen.train", "--algo", "scorepen", "--task", "cliff", "--goal", "0.1", "0.3", "--seed", "3",
        "--beta", "0.02", "--out", str(out), *tiny_args(steps=10))
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint-10.pt", "dynamics.pt", "score.pt", "pretrain.json",
                 "policy.pt", "learning_curve.png", "penalty_heatmap.png"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["cliff"]["goal"] == [0.1, 0.3] and config["beta"] == 0.02 and config["seed"] == 3
    summary = json.loads((out / "summary.json").read_text())
    for key in ("algo", "task", "seed", "steps", "return_mean", "return_std", "final_distance_to_goal_mean",
                "normalized_score_mean"):
        assert key in summary, key
    assert summary["steps"] == 10
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10]
    assert {"return_mean", "return_std", "loss/critic", "rollout/raw_score_mean"} <= set(rows[0])

    # resume: same folder, more steps -> continues from step 10 without retraining the models
    dyn_mtime = (out / "dynamics.pt").stat().st_mtime
    cli("pyscorepen.train", "--algo", "scorepen", "--goal", "0.1", "0.3", "--seed", "3", "--beta", "0.02",
        "--out", str(out), *tiny_args(steps=20))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]
    assert (out / "dynamics.pt").stat().st_mtime == dyn_mtime
    assert json.loads((out / "summary.json").read_text())["steps"] == 20

    # a different config in the same folder is refused with a one-line error, no traceback
    proc = cli("pyscorepen.train", "--algo", "mopo", "--out", str(out), *tiny_args(), check=False)
    assert proc.returncode == 2 and "different config" in proc.stderr and "Traceback" not in proc.stderr

    # evaluate re-loads the run and prints the same summary keys
    proc = cli("pyscorepen.evaluate", str(out), "--episodes", "3")
    evaluated = json.loads(proc.stdout)
    assert evaluated["num_episodes"] == 3 and evaluated["steps"] == 20
    assert "final_distance_to_goal_mean" in evaluated


@pytest.mark.parametrize("algo", ["mopo", "combo", "sac", "iql", "bc"])
def test_train_cli_every_algo(algo, tmp_path):
    cli("pyscorepen.train", "--algo", algo, "--out", str(tmp_path / algo), *tiny_args(steps=10))
    summary = json.loads((tmp_path / algo / "summary.json").read_text())
    assert summary["algo"] == algo and summary["steps"] == 10


def test_train_help_lists_generated_flags():
    out = cli("pyscorepen.train", "--help").stdout
    for flag in ("--algo", "--goal", "--boxes", "--rollout.length", "--dynamics.hidden-dims", "--sac.gamma",
                 "--score.sigmas", "--penalties"):
        assert flag in out, flag


def test_pretrain_only_writes_shared_models_then_a_run_reuses_them(tmp_path):
    """--pretrain-only: dynamics.pt + score.pt (no policy), the models that --pretrained-from runs share."""
    pre = tmp_path / "pre"
    cli("pyscorepen.train", "--algo", "scorepen", "--pretrain-only", "--out", str(pre), *tiny_args())
    assert (pre / "dynamics.pt").is_file() and (pre / "score.pt").is_file()
    assert not (pre / "policy.pt").exists() and not (pre / "summary.json").exists()
    run = tmp_path / "run"
    cli("pyscorepen.train", "--algo", "scorepen", "--pretrained-from", str(pre), "--out", str(run),
               *tiny_args(steps=10))
    assert (run / "policy.pt").is_file()
    assert (run / "dynamics.pt").read_bytes() == (pre / "dynamics.pt").read_bytes()
