"""IQL and BC: the loss pieces on hand-made numbers, and IQL learning a tiny task."""
import math

import pytest
import torch

from pyscorepen.algos.bc import BC, BCConfig
from pyscorepen.algos.iql import IQL, IQLConfig, awr_weights, episode_return_range, expectile_loss
from pyscorepen.data import TransitionDataset


def test_expectile_loss_on_hand_made_numbers():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # |tau - 1(u<0)| u^2 with tau = 0.7: 0.7*4, 0.3*1, 0.7*0.25, 0.3*9
    expected = (0.7 * 4 + 0.3 * 1 + 0.7 * 0.25 + 0.3 * 9) / 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(expected)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * diff.square().mean().item())   # tau = 0.5: MSE / 2
    # the minimizer over a constant v is the tau-expectile: above the mean for tau > 0.5
    x = torch.tensor([0.0, 0.0, 0.0, 1.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad(); expectile_loss(x - v, 0.7).backward(); opt.step()
    # expectile e solves 0.7 * (1 - e) = 0.3 * 3 e  ->  e = 0.7 / 1.6
    assert v.item() == pytest.approx(0.7 / 1.6, abs=1e-4)


def test_awr_weights_on_hand_made_numbers():
    q, v = torch.tensor([1.0, 0.0, -1.0, 100.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])
    w = awr_weights(q, v, beta=3.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([math.exp(3), 1.0, math.exp(-3), 100.0])


def test_episode_return_range_splits_at_terminals_timeouts_and_jumps():
    obs = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    next_obs = torch.tensor([[1.0], [2.0], [3.0], [11.0], [12.0], [21.0]])
    rewards = torch.tensor([1.0, 1.0, 1.0, 5.0, 5.0, -2.0])
    terminals = torch.zeros(6)
    timeouts = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])     # episode 2 ends by time-out
    ds = TransitionDataset(obs, torch.zeros(6, 1), rewards, next_obs, terminals, timeouts)
    # episodes: rows 0-2 (jump 3 -> 10 ends it), rows 3-4 (time-out), row 5
    assert episode_return_range(ds) == (-2.0, 10.0)


def bandit(n=4096, seed=0):
    """One-step task: s ~ U[-1, 1], dataset actions ~ U[-1, 1], r = -(a - s)^2, terminal."""
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.rand(n, 1, generator=g) - 1
    a = 2 * torch.rand(n, 1, generator=g) - 1
    return TransitionDataset(s, a, -(a - s).square().squeeze(-1), s, torch.ones(n))


def test_iql_learns_a_contextual_bandit_that_bc_cannot():
    torch.manual_seed(0)
    data = bandit()
    low, high = -torch.ones(1), torch.ones(1)
    iql = IQL(1, 1, IQLConfig(hidden_dims=(64, 64), beta=10.0, normalize_rewards=False), low, high)
    bc = BC(1, 1, BCConfig(hidden_dims=(64, 64)), low, high)
    before = [p.detach().clone() for p in (*iql.actor.parameters(), *iql.critic.parameters(), *iql.value.parameters())]
    for _ in range(1500):
        batch = data.sample(256)
        info = iql.update(batch)
        bc.update(batch)
    assert all(math.isfinite(v) for v in info.values())
    after = [*iql.actor.parameters(), *iql.critic.parameters(), *iql.value.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    iql_err = (iql.act(s, deterministic=True) - s).abs().mean().item()
    bc_err = (bc.act(s, deterministic=True) - s).abs().mean().item()
    # BC clones the uniform behaviour (mean ~0, error ~0.5); IQL's AWR moves towards a = s
    assert bc_err > 0.35 and iql_err < 0.2, (iql_err, bc_err)
    # the value is an upper expectile of the in-sample Q: above the dataset's mean reward (-2/3 on average)
    assert info["v_mean"] > -0.6


def test_iql_state_dict_roundtrip():
    low, high = -torch.ones(2), torch.ones(2)
    a = IQL(3, 2, IQLConfig(hidden_dims=(8,)), low, high)
    b = IQL(3, 2, IQLConfig(hidden_dims=(8,)), low, high)
    a.reward_scale, a.num_updates = 2.5, 7
    b.load_state_dict(a.state_dict())
    obs = torch.randn(4, 3)
    assert torch.equal(a.act(obs, deterministic=True), b.act(obs, deterministic=True))
    assert b.reward_scale == 2.5 and b.num_updates == 7


def test_iql_actor_lr_cosine_decay():
    low, high = -torch.ones(1), torch.ones(1)
    agent = IQL(1, 1, IQLConfig(hidden_dims=(8,), actor_lr_decay_steps=4, normalize_rewards=False), low, high)
    data = bandit(64)
    lrs = []
    for _ in range(6):
        agent.update(data.sample(16))
        lrs.append(agent.actor_optim.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(3e-4 * (1 + math.cos(math.pi / 4)) / 2) and lrs[3] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(0.0)                # stays at 0 after the decay
    assert agent.critic_optim.param_groups[0]["lr"] == 3e-4
