"""Penalty-aware rollouts: evaluating only each row's sampled elite gives the same (s', r) and
score penalty as the all-member fused step, and the rollout picks the path from the penalties."""
import math

import pytest
import torch

from pyscorepen.config import TrainConfig
from pyscorepen.data import ReplayBuffer, TransitionDataset
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics, requires_all_members, rollout
from pyscorepen.models.nets import mlp, mlp_weights
from pyscorepen.ops import available_backends, rollout_step
from pyscorepen.penalties import PENALTIES, MobilePenalty, ScorePenalty, UncertaintyPenalty

OBS, ACT = 5, 2


def make_dynamics(seed=0, ensemble=7, elites=5):
    torch.manual_seed(seed)
    dyn = EnsembleDynamics(OBS, ACT, DynamicsConfig(ensemble_size=ensemble, num_elites=elites, hidden_dims=(32, 32)))
    with torch.no_grad():   # members that differ clearly, logvars away from the bounds
        for layer in dyn.net.layers:
            layer.bias.normal_(0.0, 0.3)
        dyn.max_logvar.fill_(0.5)
        dyn.min_logvar.fill_(-5.0)
    dyn.elites.copy_(torch.tensor([6, 0, 3, 4, 1][:elites]))
    return dyn


def score_params():
    torch.manual_seed(5)
    return mlp_weights(mlp(OBS + ACT, (16, 16), OBS + ACT))


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_step_members_matches_all_member_step(backend, monkeypatch):
    """Same member choice and the same fixed noise tensor: the elite-only step reproduces the
    all-member op's next state, reward and score penalty row by row (float rounding only)."""
    obs = torch.randn(300, OBS)
    if backend not in available_backends("rollout_step", obs):
        pytest.skip(f"backend {backend!r} unavailable here")
    monkeypatch.setenv("PYSCOREPEN_BACKEND", backend)
    dyn = make_dynamics()
    actions = torch.randn(300, ACT)
    member = dyn.elites[torch.randint(5, (300,))]
    member[:7] = dyn.elites[2]            # a run of one member and members in every order
    noise = torch.randn(300, OBS + 1)
    sw, sb = score_params()
    full = rollout_step(obs, actions, dyn.input_mean, dyn.input_std, [w.detach() for w in dyn.net.weights()],
                        [b.detach() for b in dyn.net.biases()], dyn.max_logvar.detach(), dyn.min_logvar.detach(),
                        member, noise, sw, sb)
    elite = dyn.step_members(obs, actions, member, noise, (sw, sb))
    torch.testing.assert_close(elite.next_obs, full.next_obs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(elite.rewards, full.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(elite.score_penalty, full.score_penalty, atol=1e-4, rtol=1e-5)
    assert torch.isnan(elite.mopo_penalty).all()          # not computed: unreadable by mistake
    # a member absent from the batch, and a single-member batch
    one = dyn.step_members(obs[:3], actions[:3], member.new_full((3,), 4), noise[:3])
    ref = rollout_step(obs[:3], actions[:3], dyn.input_mean, dyn.input_std, [w.detach() for w in dyn.net.weights()],
                       [b.detach() for b in dyn.net.biases()], dyn.max_logvar.detach(), dyn.min_logvar.detach(),
                       member.new_full((3,), 4), noise[:3], [], [])
    torch.testing.assert_close(one.next_obs, ref.next_obs, atol=1e-5, rtol=1e-5)
    assert (one.score_penalty == 0).all()


def test_step_paths_draw_the_same_sample_from_one_generator():
    """``step`` draws the member and the noise before choosing the path: for one generator seed
    the two paths return the same sample (exact same member choice and noise)."""
    dyn = make_dynamics(1)
    obs, actions = torch.randn(512, OBS), torch.randn(512, ACT)
    a = dyn.step(obs, actions, score_params=score_params(), generator=torch.Generator().manual_seed(3))
    b = dyn.step(obs, actions, score_params=score_params(), generator=torch.Generator().manual_seed(3),
                 all_members=False)
    torch.testing.assert_close(b.next_obs, a.next_obs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.rewards, a.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.score_penalty, a.score_penalty, atol=1e-4, rtol=1e-5)


def test_step_paths_sample_statistics_agree():
    """Independent draws (different generators) from one state-action: both paths sample the
    same mixture of the elites' Gaussians. Mean and std of every output within 5 standard errors,
    and the two empirical CDFs of the reward within the two-sample KS bound at alpha = 1e-3."""
    dyn = make_dynamics(2)
    n = 40_000
    obs, actions = torch.randn(1, OBS).expand(n, OBS), torch.randn(1, ACT).expand(n, ACT)
    a = dyn.step(obs, actions, generator=torch.Generator().manual_seed(10))
    b = dyn.step(obs, actions, generator=torch.Generator().manual_seed(11), all_members=False)
    xa = torch.cat([a.next_obs, a.rewards[:, None]], 1).double()       # [n, S+1]
    xb = torch.cat([b.next_obs, b.rewards[:, None]], 1).double()
    se_mean = (xa.var(0) / n + xb.var(0) / n).sqrt()
    assert ((xa.mean(0) - xb.mean(0)).abs() < 5 * se_mean).all()
    # std of the sample std ~ sqrt((kurtosis - 1) / 4n) * std; the mixture is mildly non-Gaussian
    se_std = xa.std(0) * math.sqrt(2.0 / n)
    assert ((xa.std(0) - xb.std(0)).abs() < 5 * se_std).all()
    # the mixture is clearly not one Gaussian: the members differ, so the check has teeth
    mean, _ = dyn.predict(obs[:1], actions[:1])
    assert mean[dyn.elites, 0].std(0).max() > 5 * se_mean.max()
    grid = torch.cat([xa[:, -1], xb[:, -1]]).sort().values
    cdf_a = torch.searchsorted(xa[:, -1].sort().values, grid, right=True) / n
    cdf_b = torch.searchsorted(xb[:, -1].sort().values, grid, right=True) / n
    ks_bound = math.sqrt(-math.log(1e-3 / 2) * (2 * n) / (n * n))
    assert (cdf_a - cdf_b).abs().max() < ks_bound


def test_rollout_chooses_the_path_from_the_penalties(monkeypatch):
    assert not requires_all_members([ScorePenalty(1.0)])
    assert not requires_all_members([])                               # no penalty: elite-only
    assert requires_all_members([ScorePenalty(1.0), UncertaintyPenalty(1.0)])
    assert requires_all_members([object()])                           # unknown plug-in: the safe side
    assert MobilePenalty.requires_all_members                         # evaluated at target time by itself
    # every registered plug-in declares it; only MOPO's uncertainty (and MOBILE, at target time) needs all
    data = TransitionDataset(torch.randn(50, OBS), torch.randn(50, ACT), torch.randn(50), torch.randn(50, OBS),
                             torch.zeros(50))
    context = {"dynamics": make_dynamics(), "dataset": data, "config": TrainConfig()}
    declared = {name: factory(1.0, **context).requires_all_members for name, factory in PENALTIES.items()}
    assert declared == {**dict.fromkeys(PENALTIES, False), "uncertainty": True, "mobile": True}

    dyn = make_dynamics(3)
    calls = {"members": 0}
    original = EnsembleDynamics.step_members

    def counting(self, *args, **kwargs):
        calls["members"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EnsembleDynamics, "step_members", counting)
    policy = lambda obs: torch.tanh(obs[:, :ACT])                      # noqa: E731
    start = torch.randn(200, OBS)
    buffers = {}
    for name, penalties in (("score", (ScorePenalty(0.5),)), ("both", (ScorePenalty(0.5), UncertaintyPenalty(1.0)))):
        buffers[name] = ReplayBuffer(1000, OBS, ACT)
        before = calls["members"]
        stats = rollout(dyn, policy, start, 3, buffers[name], penalties, score_params=score_params(),
                        chunk_size=64, generator=torch.Generator().manual_seed(4))
        assert stats["rollout/transitions"] == 600 and math.isfinite(stats["rollout/penalty_mean"])
        assert (calls["members"] - before) == (12 if name == "score" else 0)   # 4 chunks x 3 steps
    # same generator, same transitions; the stored penalty differs only by the MOPO term
    a, b = buffers["score"], buffers["both"]
    torch.testing.assert_close(a.next_obs[:600], b.next_obs[:600], atol=1e-5, rtol=1e-5)
    assert (b.penalty[:600] > a.penalty[:600]).all()
