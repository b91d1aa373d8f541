"""Minari loader: ids and paths, transitions, env recovery, reference scores, and the errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
from pyscorepen.evaluation_metrics import REF_SCORES_FILE, summarize_returns, value_at_risk
from pyscorepen.tasks.minari_task import (DatasetIntegrityError, DatasetNotFoundError, MinariTaskError,
                                          load_minari_task)

DATASET = "test/hopper/random-v0"


def random_episodes(n: int = 300, seed: int = 0, env_id: str = "Hopper-v5"):
    env = _make_env(env_id)
    return rollout_episodes(env, RandomPolicy(env.action_space, seed), n, seed, progress=False)


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


@pytest.fixture
def hopper_dataset(minari_root):
    episodes = random_episodes()
    write_dataset(DATASET, episodes, "Hopper-v5", minari_root, ref_min=-20.0, ref_max=3234.3, ref_episodes=2,
                  description="test")
    return episodes


def test_load_by_id(hopper_dataset):
    task = load_minari_task(DATASET)
    data = task.dataset
    n = sum(len(ep["rewards"]) for ep in hopper_dataset)
    assert len(data) == n == 300 and data.obs_dim == 11 and data.action_dim == 3
    for t in (data.obs, data.actions, data.rewards, data.next_obs, data.terminals, data.timeouts):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape[0] == n
    ep0 = hopper_dataset[0]
    k = len(ep0["rewards"])
    assert torch.allclose(data.obs[:k], torch.as_tensor(ep0["observations"][:-1], dtype=torch.float32))
    assert torch.allclose(data.next_obs[:k], torch.as_tensor(ep0["observations"][1:], dtype=torch.float32))
    assert torch.equal(data.obs[1:k], data.next_obs[:k - 1])       # consecutive within an episode
    # terminal = the env's terminated flag, never the time-out
    terminated = np.concatenate([ep["terminations"] for ep in hopper_dataset])
    truncated = np.concatenate([ep["truncations"] for ep in hopper_dataset])
    assert torch.equal(data.terminals, torch.as_tensor(terminated, dtype=torch.float32))
    assert torch.equal(data.timeouts, torch.as_tensor(truncated, dtype=torch.float32))
    assert data.terminals.sum() >= 1 and data.timeouts[-1] == 1 and data.terminals[-1] == 0
    # env, termination function, references
    env = task.make_env()
    assert env.spec.id == "Hopper-v5" and env.observation_space.shape == (11,)
    assert task.info["env_id"] == "Hopper-v5" and task.info["termination_source"] == "static"
    assert task.termination_fn(data.obs, data.actions, data.next_obs).float().eq(data.terminals).float().mean() > 0.99
    assert task.ref_min_score == -20.0 and task.ref_max_score == 3234.3
    assert task.normalized_score(3234.3) == pytest.approx(100.0)


def test_load_by_path(hopper_dataset, minari_root):
    by_folder = load_minari_task(str(minari_root / DATASET))
    by_data = load_minari_task(str(minari_root / DATASET / "data"))
    assert len(by_folder.dataset) == len(by_data.dataset) == 300


def test_missing_dataset_error(minari_root):
    with pytest.raises(DatasetNotFoundError) as err:
        load_minari_task("mujoco/hopper/medium-v0")
    message = str(err.value)
    assert "minari download mujoco/hopper/medium-v0" in message
    assert "python -m pyscorepen.collect --env-id Hopper-v5 --levels medium" in message
    assert "\n" not in message and str(minari_root) in message
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_minari_task("./no/such/dataset")


def test_missing_dataset_cli_has_no_traceback(minari_root):
    """The train CLI prints the one-paragraph message (exit 2), not a stack trace."""
    result = subprocess.run([sys.executable, "-m", "pyscorepen.train", "--task", "mujoco/hopper/medium-v0",
                             "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "minari download mujoco/hopper/medium-v0" in result.stderr


def test_corrupt_dataset_errors(minari_root, capsys):
    episodes = random_episodes(400, seed=1)
    assert len(episodes) >= 4
    episodes[1]["observations"][2, 3] = np.nan               # NaN
    episodes[2]["actions"] = episodes[2]["actions"][:-1]     # mismatched length
    episodes[3]["rewards"][0] = np.inf                       # inf
    write_dataset("test/hopper/corrupt-v0", episodes, "Hopper-v5", minari_root, None, None, 2, "corrupt")
    with pytest.raises(DatasetIntegrityError) as err:
        load_minari_task("test/hopper/corrupt-v0")
    assert "episode 1" in str(err.value) and "'observations'" in str(err.value) and "NaN" in str(err.value)
    assert "drop_invalid_episodes" in str(err.value)
    task = load_minari_task("test/hopper/corrupt-v0", drop_invalid_episodes=True)
    dropped = {d["episode"]: " ".join(d["problems"]) for d in task.info["dropped_episodes"]}
    assert set(dropped) == {1, 2, 3}
    assert "'actions' has" in dropped[2] and "'rewards'" in dropped[3]
    assert len(task.dataset) == sum(len(ep["rewards"]) for i, ep in enumerate(episodes) if i not in dropped)
    assert torch.isfinite(task.dataset.obs).all()
    assert "dropped 3 invalid episode(s)" in capsys.readouterr().err


def test_obs_dim_mismatch(minari_root):
    episodes = random_episodes(100, seed=2)
    for ep in episodes:
        ep["observations"] = ep["observations"][:, :10]
    write_dataset("test/hopper/narrow-v0", episodes, "Hopper-v5", minari_root, None, None, 2, "narrow")
    with pytest.raises(MinariTaskError, match=r"episode 0: field 'observations' has shape \(\d+, 10\).*11 dims"):
        load_minari_task("test/hopper/narrow-v0")


def test_reference_score_fallbacks(minari_root, capsys):
    write_dataset("test/hopper/norefs-v0", random_episodes(100, seed=3), "Hopper-v5", minari_root, None, None,
                  2, "no refs")
    task = load_minari_task("test/hopper/norefs-v0")
    assert task.ref_min_score is None and task.ref_max_score is None and task.normalized_score(1.0) is None
    notice = capsys.readouterr().err
    assert "ref_min_score missing" in notice and "--ref-scores-only" in notice
    task = load_minari_task("test/hopper/norefs-v0", ref_min=1.0, ref_max=11.0)
    assert task.normalized_score(6.0) == pytest.approx(50.0)
    assert "from --ref-min" in capsys.readouterr().err
    (minari_root / "test/hopper/norefs-v0" / REF_SCORES_FILE).write_text(
        json.dumps({"ref_min_score": 0.0, "ref_max_score": 10.0}))
    task = load_minari_task("test/hopper/norefs-v0")
    assert (task.ref_min_score, task.ref_max_score) == (0.0, 10.0)
    assert REF_SCORES_FILE in task.info["ref_scores_source"]


def test_value_at_risk_and_summary():
    returns = torch.arange(101, dtype=torch.float64)            # 0..100
    var = value_at_risk(returns, (5, 50))
    assert var == {"var_5": pytest.approx(5.0), "var_50": pytest.approx(50.0)}

    class Refs:
        ref_min_score, ref_max_score = 0.0, 200.0

    summary = summarize_returns(returns, Refs())
    assert summary["return_mean"] == pytest.approx(50.0)
    assert summary["normalized_score_mean"] == pytest.approx(25.0)
    assert summary["normalized_score_std"] == pytest.approx(summary["return_std"] / 2)
    assert summary["normalized_var_5"] == pytest.approx(2.5)
    assert summarize_returns([1.0, 2.0])["normalized_score_mean"] is None
