"""Static termination functions against the real env's ``terminated`` flag, and the fallbacks."""
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from pyscorepen.data import TransitionDataset
from pyscorepen.tasks.termination import (LearnedTermination, has_static_termination, resolve_termination_fn,
                                          static_termination_fn)


def env_transitions(env_id: str, steps: int = 3000, seed: int = 0):
    """Transitions of a random policy and of biased / noisy perturbations of it (so that the
    episodes end by every unhealthy condition), with the env's own terminated flag."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    obs_list, act_list, next_list, term_list = [], [], [], []
    obs, _ = env.reset(seed=seed)
    bias = np.zeros_like(low)
    for t in range(steps):
        if t % 200 == 0:  # switch between uniform, biased and small-noise policies
            bias = rng.uniform(low, high) * rng.choice([0.0, 0.5, 1.0])
        action = np.clip(bias + rng.normal(0, rng.choice([0.1, 1.0]), size=low.shape), low, high)
        next_obs, _, terminated, truncated, _ = env.step(action)
        obs_list.append(obs), act_list.append(action), next_list.append(next_obs), term_list.append(terminated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    as_t = lambda x: torch.as_tensor(np.array(x), dtype=torch.float64)
    return as_t(obs_list), as_t(act_list), as_t(next_list), torch.as_tensor(term_list)


@pytest.fixture(scope="module", params=["Hopper-v5", "Walker2d-v5"])
def transitions(request):
    return request.param, env_transitions(request.param)


def test_static_termination_matches_env(transitions):
    env_id, (obs, actions, next_obs, terminated) = transitions
    assert terminated.sum() >= 20 and (~terminated).sum() >= 100, "need both classes to test"
    fn = static_termination_fn(env_id)
    predicted = fn(obs, actions, next_obs)
    assert predicted.dtype == torch.bool and predicted.shape == terminated.shape
    mismatch = (predicted != terminated).nonzero().squeeze(-1)
    assert len(mismatch) == 0, f"{env_id}: {len(mismatch)} mismatches, e.g. next_obs {next_obs[mismatch[:3]]}"
    # float32 storage (as in a TransitionDataset) may flip a value sitting on a bound, nothing more
    predicted32 = fn(obs.float(), actions.float(), next_obs.float())
    assert (predicted32 != terminated).float().mean() < 1e-3


def test_static_termination_ensemble_shape(transitions):
    env_id, (obs, actions, next_obs, terminated) = transitions
    fn = static_termination_fn(env_id)
    stacked = next_obs[:50].expand(3, 50, -1)                      # [E, B, S]
    out = fn(obs[:50].expand(3, 50, -1), actions[:50].expand(3, 50, -1), stacked)
    assert out.shape == (3, 50) and torch.equal(out[1], terminated[:50])


def test_nan_next_state_terminates():
    fn = static_termination_fn("Hopper-v5")
    next_obs = torch.zeros(2, 11)
    next_obs[:, 0] = 1.25
    next_obs[1, 3] = float("nan")
    assert fn(next_obs, torch.zeros(2, 3), next_obs).tolist() == [False, True]


def test_halfcheetah_never_terminates_and_lookup():
    assert has_static_termination("HalfCheetah-v5") and static_termination_fn("HalfCheetah-v5") is None
    assert has_static_termination("Hopper-v5") and has_static_termination("Walker2d-v4")
    assert not has_static_termination("Humanoid-v5")
    with pytest.raises(KeyError):
        static_termination_fn("Humanoid-v5")
    # env kwargs are followed (a dataset collected with a different healthy range)
    fn = static_termination_fn("Walker2d-v5", {"healthy_z_range": [0.5, 2.0]})
    next_obs = torch.tensor([[0.6, 0.0] + [0.0] * 15])
    assert not fn(next_obs, torch.zeros(1, 6), next_obs).item()
    assert static_termination_fn("Hopper-v5", {"terminate_when_unhealthy": False}) is None


def _dataset(obs, actions, next_obs, terminals):
    return TransitionDataset(obs.float(), actions.float(), torch.zeros(len(obs)), next_obs.float(),
                             terminals.float())


def test_learned_termination_head(one_thread):
    obs, actions, next_obs, terminated = env_transitions("Hopper-v5", seed=1)
    n = len(obs) * 2 // 3
    head = LearnedTermination.fit(_dataset(obs[:n], actions[:n], next_obs[:n], terminated[:n]), steps=300)
    predicted = head(obs[n:].float(), actions[n:].float(), next_obs[n:].float())
    truth = terminated[n:]
    recall = (predicted & truth).sum() / truth.sum().clamp_min(1)
    specificity = (~predicted & ~truth).sum() / (~truth).sum()
    assert recall > 0.7 and specificity > 0.9, (float(recall), float(specificity))


def test_resolve_termination_fn_order(one_thread):
    obs = torch.randn(64, 4)
    terminals = torch.zeros(64)
    no_terminals = _dataset(obs, torch.randn(64, 1), obs, terminals)
    fn, source = resolve_termination_fn("Hopper-v5", no_terminals)
    assert source == "static" and fn is not None
    assert resolve_termination_fn("HalfCheetah-v5", no_terminals) == (None, "never")
    # unknown env: learned head only when the dataset has terminals
    assert resolve_termination_fn("MyEnv-v0", no_terminals) == (None, "none-in-data")
    terminals[obs[:, 0] > 1.0] = 1.0
    fn, source = resolve_termination_fn("MyEnv-v0", _dataset(obs, torch.randn(64, 1), obs, terminals),
                                        learned_steps=50)
    assert source == "learned" and isinstance(fn, LearnedTermination)
    assert fn(obs, torch.randn(64, 1), obs).shape == (64,)
