"""The cliff-region task (ScorePen §5.1): env, dataset generator, references."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from pyscorepen.tasks import make_task
from pyscorepen.tasks.cliff import ENV_ID, CliffConfig, generate_dataset, in_region, reference_returns


def test_env_matches_the_paper():
    env = gym.make(ENV_ID)
    s, _ = env.reset(seed=0)
    assert np.all(np.abs(s) <= 0.1)
    steps, done = 0, False
    while not done:
        s_prev = s
        s, r, term, trunc, info = env.step(np.array([1.0, -1.0]))      # clipped to the 0.05 bound
        assert np.allclose(s, s_prev + np.array([0.05, -0.05]), atol=1e-6)
        assert r == pytest.approx(np.exp(-0.5 * np.sum((s_prev - np.array([0.2, 0.4])) ** 2)), rel=1e-5)
        steps += 1
        done = term or trunc
    assert steps == 30 and not term
    assert info["distance_to_goal"] == pytest.approx(np.linalg.norm(s - np.array([0.2, 0.4])), rel=1e-5)


def test_dataset_fills_a_union_of_boxes_and_nothing_outside():
    cfg = CliffConfig(boxes=(-0.5, -0.5, 0.0, 0.5, 0.0, -0.5, 0.5, 0.0), dataset_size=4000, dataset_seed=1)
    data = generate_dataset(cfg)
    boxes = cfg.box_array()
    assert len(data) == 4000
    assert in_region(data.obs, boxes).all() and in_region(data.next_obs, boxes).all()
    assert not in_region(torch.tensor([[0.25, 0.25]]), boxes).any()      # the missing quadrant is empty
    assert torch.allclose(data.next_obs, data.obs + data.actions)
    assert data.actions.abs().max() <= 0.05
    # uniform: each of the three quadrants holds about a third of the data
    frac = (data.obs[:, 0] < 0).float().mean().item()
    assert abs(frac - 2 / 3) < 0.03
    assert torch.equal(generate_dataset(cfg).obs, data.obs)               # seeded
    with pytest.raises(ValueError):
        CliffConfig(boxes=(0, 0, 1)).box_array()


def test_references_and_normalized_score():
    ref_min, ref_max = reference_returns(CliffConfig(), episodes=50)
    assert 25 < ref_min < ref_max < 30
    task = make_task("cliff")
    assert task.normalized_score(task.ref_max_score) == pytest.approx(100)
    assert task.normalized_score(task.ref_min_score) == pytest.approx(0)
    task = make_task("cliff", cliff=CliffConfig(goal=(0.0, 0.0)), ref_min=1.0, ref_max=2.0)
    assert task.normalized_score(1.5) == pytest.approx(50)
