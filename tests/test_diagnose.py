"""``python -m pyscorepen.diagnose``: simulator state from observations, model error along rollouts,
penalty statistics, and the CLI on a cliff run and a tiny Hopper-v5 run."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from pyscorepen.diagnose import load_for_diagnosis, main, model_error, penalty_comparison, prob_greater
from pyscorepen.errors import PyScorePenError
from pyscorepen.ops.rollout_step import RolloutStepOut
from pyscorepen.tasks.sim_state import set_state_from_obs

TINY_ARGS = ["--steps", "20", "--eval-interval", "10", "--eval-episodes", "1", "--no-progress",
             "--sac.hidden-dims", "32", "32", "--dynamics.hidden-dims", "32", "32", "--dynamics.ensemble-size", "3",
             "--dynamics.num-elites", "2", "--dynamics.max-epochs", "2", "--score.hidden-dims", "32", "32",
             "--score.train-steps", "50", "--rollout.batch-size", "64", "--rollout.length", "2",
             "--rollout.freq", "10", "--batch-size", "32", "--threads", "1"]


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
def test_mujoco_state_from_observation_round_trips_and_replays(env_id):
    """qpos = [0, obs[:nq-1]], qvel = obs[nq-1:]: the env reports the observation we set, and the
    same action from there gives the recorded next observation and reward."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    trajectory, actions, rewards = [obs], [], []
    rng = np.random.default_rng(0)
    for _ in range(25):
        a = rng.uniform(env.action_space.low, env.action_space.high)
        obs, r, terminated, _, _ = env.step(a)
        trajectory.append(obs), actions.append(a), rewards.append(r)
        if terminated:
            break
    other = gym.make(env_id)
    nq = env.unwrapped.model.nq
    # Hopper and Walker2d clip the observed velocities to +-10: such a state is not recoverable
    unclipped = [t for t in range(len(actions)) if np.abs(trajectory[t][nq - 1:]).max() < 10]
    assert len(unclipped) >= 4
    for t in unclipped[::3]:
        other.reset(seed=100 + t)                             # a different state first
        back = set_state_from_obs(other, trajectory[t])
        np.testing.assert_array_equal(back, trajectory[t])
        nxt, r, *_ = other.step(actions[t])
        np.testing.assert_allclose(nxt, trajectory[t + 1], atol=1e-9)
        assert r == pytest.approx(rewards[t], abs=1e-9)
        # datasets store float32 observations: those round-trip exactly too
        obs32 = trajectory[t].astype(np.float32)
        np.testing.assert_array_equal(set_state_from_obs(other, obs32), obs32.astype(np.float64))


def test_unsupported_env_is_a_user_error():
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    with pytest.raises(PyScorePenError, match="Pendulum-v1"):
        set_state_from_obs(env, np.zeros(3))


def test_prob_greater_and_penalty_comparison():
    assert prob_greater([2, 3], [0, 1]) == 1.0 and prob_greater([0], [1]) == 0.0 and prob_greater([1], [1]) == 0.5
    comp = penalty_comparison({"model": {"stored": [1.0, 2.0, 3.0]}, "real": {"stored": [0.5, 1.0, 1.0]}})
    assert comp["stored"]["model"]["median"] == 2.0 and comp["stored"]["median_ratio_model_to_real"] == 2.0
    assert comp["stored"]["p_model_above_real"] == pytest.approx(8 / 9)


@pytest.fixture(scope="module")
def cliff_run(tmp_path_factory):
    from pyscorepen.train import main as train
    out = tmp_path_factory.mktemp("diagnose") / "cliff"
    assert train(["--algo", "scorepen", "--task", "cliff", "--dataset-size", "500", "--out", str(out), *TINY_ARGS]) == 0
    return out


def cliff_model(bias: float):
    """The cliff task's true dynamics (s' = s + clip(a), r = exp(-||s - g||^2 / 2)) plus ``bias`` on s'."""
    goal, max_action = torch.tensor([0.2, 0.4]), 0.05

    def step(obs, actions, **_):
        next_obs = obs + actions.clamp(-max_action, max_action) + bias                 # [B, 2]
        rewards = torch.exp(-0.5 * ((obs - goal) ** 2).sum(-1))                         # [B]
        zero = torch.zeros_like(rewards)
        return RolloutStepOut(next_obs, rewards, zero, zero)
    return step


def test_model_error_is_zero_for_the_true_model_and_grows_with_a_bias(cliff_run, monkeypatch):
    trainer = load_for_diagnosis(cliff_run)
    std = trainer.dataset.obs.std(0).double().numpy()
    monkeypatch.setattr(trainer.dynamics, "step", cliff_model(0.0))
    exact = model_error(trainer, starts=20, horizon=6)
    assert exact["active"] == [20] * 6 and exact["state_roundtrip_max_abs_error"] == 0.0
    assert max(exact["state_error_mean"]) < 1e-5 and max(exact["reward_error_mean"]) < 1e-6
    assert max(exact["one_step_state_error_mean"]) < 1e-5
    assert exact["true_terminated_fraction"] == [0.0] * 6      # the cliff task never terminates
    # a constant bias b on s': the error compounds to k*|b/std| along the rollout, one step stays |b/std|
    bias = 0.01
    monkeypatch.setattr(trainer.dynamics, "step", cliff_model(bias))
    biased = model_error(trainer, starts=20, horizon=6)
    unit = float(np.linalg.norm(bias / std))
    np.testing.assert_allclose(biased["one_step_state_error_mean"], [unit] * 6, rtol=1e-3)
    np.testing.assert_allclose(biased["state_error_mean"], [k * unit for k in range(1, 7)], rtol=1e-3)
    assert biased["reward_error_mean"][0] < 1e-6 < biased["reward_error_mean"][5]   # r depends on s: off from k=2
    bias = biased["model_reward_mean"][5] - biased["true_reward_mean"][5]
    assert biased["reward_bias_mean"][5] == pytest.approx(bias)
    assert max(abs(b) for b in exact["reward_bias_mean"]) < 1e-6


def test_cli_on_a_cliff_run(cliff_run, tmp_path):
    out = tmp_path / "diag"
    assert main([str(cliff_run), "--out", str(out), "--starts", "16", "--horizon", "3"]) == 0
    result = json.loads((out / "diagnose.json").read_text())
    assert {p.name for p in out.glob("*.png")} == set(result["figures"]) == {
        "q_over_steps.png", "penalties_over_steps.png", "penalty_real_vs_model.png", "model_error.png"}
    rows = [json.loads(line) for line in (cliff_run / "metrics.jsonl").read_text().splitlines()]
    assert result["metrics"]["q_mean"]["values"] == [r["q_mean"] for r in rows]
    assert result["q"]["last"] == rows[-1]["q_mean"]
    assert result["q"]["bound_high"] == pytest.approx(1.0 / (1 - 0.9), rel=0.01)   # r <= 1, gamma 0.9 (cliff)
    sample = json.loads((cliff_run / "penalty_sample.json").read_text())
    stored = result["penalty_real_vs_model"]["components"]["stored"]
    assert stored["model"]["n"] == len(sample["model"]["stored"]) and stored["real"]["mean"] == pytest.approx(
        np.mean(sample["real"]["stored"]))
    err = result["model_error"]
    assert err["steps"] == [1, 2, 3] and err["starts"] == 16 and err["training_rollout_length"] == 2
    assert all(e > 0 for e in err["state_error_mean"])               # a 2-epoch model is not exact
    assert any("model error at step 3" in line for line in result["findings"])
    assert main([str(cliff_run / "nope")]) == 2                      # not a run folder: a user error


def test_cli_on_a_tiny_hopper_run(tmp_path, monkeypatch):
    """MuJoCo end to end: a MOPO run on a tiny Hopper-v5 Minari dataset, then the model error
    against the simulator (states set from the dataset's float32 observations)."""
    from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
    from pyscorepen.train import main as train
    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = _make_env("Hopper-v5")
    write_dataset("test/hopper/random-v0", rollout_episodes(env, RandomPolicy(env.action_space, 0), 300, 0,
                                                            progress=False),
                  "Hopper-v5", root, ref_min=-20.0, ref_max=3234.3, ref_episodes=1, description="tiny")
    run = tmp_path / "mopo"
    assert train(["--algo", "mopo", "--task", "test/hopper/random-v0", "--out", str(run), *TINY_ARGS]) == 0
    assert main([str(run), "--starts", "8", "--horizon", "4"]) == 0
    result = json.loads((run / "diagnose" / "diagnose.json").read_text())
    err = result["model_error"]
    assert err["state_roundtrip_max_abs_error"] == 0.0
    assert len(err["state_error_median"]) == 4 and err["active"][0] == 8
    terminated = err["true_terminated_fraction"]
    assert all(a <= b for a, b in zip(terminated, terminated[1:]))   # cumulative
    assert all(a >= b for a, b in zip(err["active"], err["active"][1:]))
    assert "rollout/raw_uncertainty_mean" in result["metrics"] and "q_mean" in result["metrics"]


def test_report_shows_the_diagnosis(cliff_run):
    from pyscorepen.report import ReportArgs, make_report
    assert main([str(cliff_run), "--starts", "8", "--horizon", "2"]) == 0     # default folder: RUN/diagnose
    findings = json.loads((cliff_run / "diagnose" / "diagnose.json").read_text())["findings"]
    make_report(ReportArgs(path=cliff_run))
    text = (cliff_run / "report.html").read_text()
    import html
    assert "Diagnosis (python -m pyscorepen.diagnose)" in text and findings and html.escape(findings[0]) in text
    assert 'alt="scorepen · cliff · seed 0: model_error.png"' in text


def test_unfinished_run_uses_its_checkpoint(cliff_run, tmp_path):
    """A run still training: the newest checkpoint's agent, and a penalty sample from its model buffer."""
    import shutil
    run = tmp_path / "unfinished"
    shutil.copytree(cliff_run, run, ignore=shutil.ignore_patterns("diagnose", "report.html"))
    for name in ("policy.pt", "summary.json", "penalty_sample.json"):
        (run / name).unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([str(run), "--starts", "4", "--horizon", "2"]) == 0
    result = json.loads((run / "diagnose" / "diagnose.json").read_text())
    assert result["penalty_real_vs_model"]["source"].startswith("computed from the checkpoint's model buffer (step 20)")
    assert result["penalty_real_vs_model"]["components"]["stored"]["model"]["n"] == 2000
    assert result["model_error"]["policy_step"] == 20
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # read-only


def test_bad_options_are_user_errors(cliff_run, capsys):
    assert main([str(cliff_run), "--starts", "0"]) == 2
    assert "--starts" in capsys.readouterr().err
