"""CDSA: the partial score fields point toward the data, the inverse dynamics recover actions,
and the corrector is the identity at K1 = K2 = 0 and keeps actions within bounds."""
import math

import pytest
import torch

from pyscorepen.algos.cdsa import CDSA, CDSAConfig, CorrectedPolicy
from pyscorepen.data import TransitionDataset
from pyscorepen.models.score import ScoreConfig, ScoreModel


def line_data(n=4096, noise=0.05, seed=0):
    """s ~ U[-1, 1], a = s + N(0, noise^2): the data lie along the line a = s."""
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.rand(n, 1, generator=g) - 1
    a = s + noise * torch.randn(n, 1, generator=g)
    return TransitionDataset(s, a, torch.zeros(n), s + a, torch.zeros(n))


def train(agent, data, steps, batch=256):
    for _ in range(steps):
        info = agent.update(data.sample(batch))
    return info


@pytest.fixture(scope="module")
def trained_on_line():
    torch.manual_seed(0)
    data = line_data()
    agent = CDSA(1, 1, CDSAConfig(score_lr=3e-3, sigma=0.1), -3 * torch.ones(1), 3 * torch.ones(1))
    agent.prepare(data)
    info = train(agent, data, 600)
    return agent, info


def test_partial_score_model_perturbs_and_outputs_only_its_coordinates():
    torch.manual_seed(0)
    model = ScoreModel(5, ScoreConfig(sigmas=(0.1,), hidden_dims=(16,)), perturbed=(3, 5))
    x = torch.randn(8, 5)
    assert model(x).shape == (8, 2)
    # the DSM target only involves the perturbed coordinates: the loss does not change if the
    # network ignored the unperturbed inputs -- check the noise is applied to columns 3:5 only
    seen = []
    model.net.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    model.dsm_loss(x)
    assert torch.equal(seen[0][:, :3], x[:, :3]) and not torch.equal(seen[0][:, 3:], x[:, 3:])
    with pytest.raises(ValueError):
        ScoreModel(5, ScoreConfig(), perturbed=(4, 7))


def test_g_points_toward_the_data_in_action_space(trained_on_line):
    agent, info = trained_on_line
    assert all(math.isfinite(v) for v in info.values())
    s = torch.linspace(-0.6, 0.6, 13)[:, None]
    above = agent.action_score.score(s, s + 0.2)          # action above the data line a = s
    below = agent.action_score.score(s, s - 0.2)
    assert (above < 0).all() and (below > 0).all(), (above.flatten(), below.flatten())
    # Tweedie's displacement for Gaussian data a | s ~ N(s, 0.05^2) smoothed by N(0, sigma_raw^2):
    # E[a | a~] - a~ = -(a~ - s) sigma_raw^2 / (sigma_raw^2 + 0.05^2), sigma_raw = 0.1 * std(a)
    sigma_raw2 = (0.1 * agent.action_score.input_std[1]) ** 2
    expected = -0.2 * sigma_raw2 / (sigma_raw2 + 0.05 ** 2)                 # ~ -0.115
    d = agent.action_score.displacement(s, s + 0.2)
    assert d.mean().item() == pytest.approx(expected.item(), rel=0.25), (d.flatten(), expected)


def test_h_points_toward_the_data_in_state_space(trained_on_line):
    agent, _ = trained_on_line
    a = torch.linspace(-0.6, 0.6, 13)[:, None]
    right = agent.state_score.score(a + 0.2, a)           # state to the right of the line s = a
    left = agent.state_score.score(a - 0.2, a)
    assert (right < 0).all() and (left > 0).all(), (right.flatten(), left.flatten())


def test_inverse_dynamics_recovers_actions_on_a_linear_system():
    torch.manual_seed(0)
    A = torch.tensor([[0.9, 0.1], [-0.2, 0.8]])
    B = torch.tensor([[0.5, 0.0], [0.3, -0.4]])         # invertible: a = B^-1 (s' - A s)
    n = 4096
    s, a = torch.randn(n, 2), torch.rand(n, 2) * 2 - 1
    data = TransitionDataset(s, a, torch.zeros(n), s @ A.T + a @ B.T, torch.zeros(n))
    agent = CDSA(2, 2, CDSAConfig(), -torch.ones(2), torch.ones(2))
    agent.prepare(data)
    train(agent, data, 600)
    s_test, a_test = torch.randn(512, 2), torch.rand(512, 2) * 2 - 1
    pred = agent.inverse(s_test, s_test @ A.T + a_test @ B.T)
    mse = (pred - a_test).square().mean().item()
    assert mse < 0.01 * a_test.var().item(), mse         # < 1% of the action variance (1/3)


def test_corrector_with_zero_gains_is_the_identity():
    torch.manual_seed(0)
    agent = CDSA(3, 2, CDSAConfig(), -torch.ones(2), torch.ones(2))      # untrained: g, h, I arbitrary
    obs = torch.randn(64, 3)
    actions = torch.rand(64, 2) * 2 - 1
    assert torch.equal(agent.correct(obs, actions, 0.0, 0.0, iterations=3), actions)
    policy = CorrectedPolicy(lambda o: actions, agent, 0.0, 0.0)
    assert torch.equal(policy(obs), actions)
    # nonzero gains do move the actions
    assert not torch.equal(agent.correct(obs, actions, 1.0, 1.0), actions)


def test_corrected_actions_stay_within_the_bounds():
    torch.manual_seed(0)
    low, high = torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 2.0])
    agent = CDSA(3, 2, CDSAConfig(displacement=False), low, high)
    obs = torch.randn(256, 3) * 5
    actions = low + (high - low) * torch.rand(256, 2)
    for k1, k2, n in ((100.0, 100.0, 1), (-50.0, 30.0, 4), (0.3, -0.7, 2)):
        out = agent.correct(obs, actions, k1, k2, iterations=n)
        assert ((out >= low) & (out <= high)).all()
    assert (out == low).any() or (out == high).any()      # large gains hit the bounds (clipped, not rescaled)


def test_cdsa_state_dict_roundtrip():
    a = CDSA(3, 2, CDSAConfig(), -torch.ones(2), torch.ones(2))
    b = CDSA(3, 2, CDSAConfig(), -torch.ones(2), torch.ones(2))
    data = line_data(64)
    data = TransitionDataset(data.obs.repeat(1, 3), data.actions.repeat(1, 2), data.rewards,
                             data.next_obs.repeat(1, 3), data.terminals)
    a.prepare(data)
    a.update(data.sample(32))
    b.load_state_dict(a.state_dict())
    obs, act = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    assert torch.equal(a.correct(obs, act, 0.5, 0.5), b.correct(obs, act, 0.5, 0.5)) and b.num_updates == 1
