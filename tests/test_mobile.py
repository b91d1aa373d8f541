"""MOBILE penalty plug-in: reference agreement, behaviour, and use inside the SAC target."""
import copy

import pytest
import torch

from pyscorepen.data import Batch
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
from pyscorepen.penalties import PENALTIES, is_target_penalty
from pyscorepen.penalties.mobile import MobilePenalty, mobile_penalty, mobile_penalty_ref
from pyscorepen.algos.sac import SAC, SACConfig

S, A, B = 5, 2, 12


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def make_agent():
    return SAC(S, A, SACConfig(hidden_dims=(32, 32)), -torch.ones(A), torch.ones(A))


def make_dynamics():
    return EnsembleDynamics(S, A, DynamicsConfig(ensemble_size=4, num_elites=3, hidden_dims=(16, 16)))


def make_batch(from_model):
    n = len(from_model)
    return Batch(torch.randn(n, S), torch.rand(n, A) * 2 - 1, torch.randn(n), torch.randn(n, S), torch.zeros(n),
                 torch.zeros(n), torch.as_tensor(from_model))


def deterministic(actor):
    return lambda obs, with_log_prob=False: actor(obs, deterministic=True, with_log_prob=with_log_prob)


def module_value(actor, critic):
    """next_value for :func:`mobile_penalty` from modules: min_k Q_k(s', actor(s'))."""
    return lambda obs: critic(obs, actor(obs)[0]).amin(0)


@pytest.mark.parametrize("include_reward", [True, False])
def test_vectorized_matches_loop_reference(include_reward):
    agent, dynamics = make_agent(), make_dynamics()
    obs, actions = torch.randn(B, S), torch.rand(B, A) * 2 - 1
    actor = deterministic(agent.actor)
    with torch.no_grad():
        mean, std = dynamics.predict(obs, actions)                          # [E, B, S+1]
        mean, std = mean[dynamics.elites], std[dynamics.elites]
        noise = torch.randn(7, *mean.shape)                                 # [K, M, B, S+1]
        fast = mobile_penalty(obs, actions, mean, std, noise, module_value(actor, agent.critic_target), 0.99,
                              include_reward)
        ref = mobile_penalty_ref(obs, actions, mean, std, noise, actor, agent.critic_target, 0.99, include_reward)
    assert fast.shape == (B,)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_fused_soft_value_matches_modules():
    """What the plug-in evaluates (SAC.soft_value: actor sample + min over the target critics in one
    fused op) equals the module form on the same draws, on the K*M*B next states of one batch."""
    agent, dynamics = make_agent(), make_dynamics()
    obs, actions = torch.randn(B, S), torch.rand(B, A) * 2 - 1
    with torch.no_grad():
        mean, std = (t[dynamics.elites] for t in dynamics.predict(obs, actions))   # [M, B, S+1]
        noise = torch.randn(4, *mean.shape)                                 # [K, M, B, S+1]
        outs = []
        for value in (agent.soft_value, module_value(agent.actor, agent.critic_target)):
            torch.manual_seed(3)                                            # same a' draws ([K*M*B, A] at once)
            outs.append(mobile_penalty(obs, actions, mean, std, noise, value, 0.99))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_plugin_fused_and_loop_agree_in_distribution():
    """MobilePenalty(fused=True) vs the loop reference on the modules: different a' draws, so the
    per-row penalties agree only in distribution; with many samples their means are close."""
    agent, dynamics = make_agent(), make_dynamics()
    batch = make_batch([False] * 3 + [True] * 9)
    means = [MobilePenalty(1.0, dynamics, num_samples=200, fused=fused, include_reward=True)(agent, batch)[3:].mean()
             for fused in (True, False)]
    assert abs(float(means[0]) - float(means[1])) < 0.1 * float(means[1])


def test_penalty_zero_when_elites_agree_and_grows_with_disagreement():
    agent, dynamics = make_agent(), make_dynamics()
    with torch.no_grad():  # all members identical, no sampling noise -> no disagreement
        for layer in dynamics.net.layers:
            layer.weight[:] = layer.weight[0]
            layer.bias[:] = layer.bias[0]
    obs, actions = torch.randn(B, S), torch.rand(B, A) * 2 - 1
    actor = deterministic(agent.actor)

    def penalty(dyn):
        with torch.no_grad():
            mean, std = dyn.predict(obs, actions)
            mean, std = mean[dyn.elites], std[dyn.elites]
            return mobile_penalty(obs, actions, mean, std, torch.zeros(3, *mean.shape),
                                  module_value(actor, agent.critic_target), 0.99)

    assert penalty(dynamics).abs().max() < 1e-5
    sizes = []
    for scale in (0.1, 1.0):
        perturbed = copy.deepcopy(dynamics)
        with torch.no_grad():
            for layer in perturbed.net.layers:
                layer.weight.add_(scale * torch.randn_like(layer.weight))
        sizes.append(float(penalty(perturbed).mean()))
    assert 0 < sizes[0] < sizes[1]


def test_plugin_zero_on_real_transitions_and_registered():
    agent, dynamics = make_agent(), make_dynamics()
    plugin = PENALTIES["mobile"](2.0, dynamics=dynamics, dataset=None, config=None)
    assert isinstance(plugin, MobilePenalty) and is_target_penalty(plugin) and plugin.coef == 2.0
    from_model = [False] * 4 + [True] * 8
    out = plugin(agent, make_batch(from_model))
    assert out.shape == (12,) and torch.all(out[:4] == 0) and torch.all(out[4:] > 0) and torch.isfinite(out).all()
    assert torch.all(plugin(agent, make_batch([False] * 6)) == 0)


def test_sac_update_with_mobile_and_score_penalties():
    """ScorePen+MOBILE: a stored (score) penalty in the batch plus the MOBILE target plug-in."""
    dynamics = make_dynamics()
    agent = SAC(S, A, SACConfig(hidden_dims=(32, 32)), -torch.ones(A), torch.ones(A),
                target_penalties=[MobilePenalty(1.0, dynamics, num_samples=4, target_min=None)])
    batch = make_batch([False] * 4 + [True] * 12)
    batch.penalty[4:] = 0.3                                                 # score penalty, stored
    before = [p.clone() for p in agent.critic.parameters()]
    info = agent.update(batch)
    assert "penalty/mobile" in info and info["penalty/mobile"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in info.values() if isinstance(v, float))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))
    torch.manual_seed(1)                     # same a' draws in both targets (the actor samples first)
    target_with, _ = agent.compute_target(batch)
    agent.target_penalties = []
    torch.manual_seed(1)
    target_without, _ = agent.compute_target(batch)
    # MOBILE lowers the targets of model transitions only
    assert torch.equal(target_with[:4], target_without[:4])
    assert torch.all(target_with[4:] < target_without[4:])


def test_scorepen_plus_mobile_train_run(tmp_path, monkeypatch):
    """`--algo scorepen --penalties score mobile` end to end on a tiny Minari dataset."""
    from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
    from pyscorepen.config import TrainConfig
    from pyscorepen.runs import read_metrics
    from pyscorepen.train import run

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    env = _make_env("Hopper-v5")
    write_dataset("test/hopper/random-v0", rollout_episodes(env, RandomPolicy(env.action_space, 0), 300, 0,
                                                            progress=False),
                  "Hopper-v5", tmp_path / "datasets", ref_min=-20.0, ref_max=3234.3, ref_episodes=1,
                  description="tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(algo="scorepen", penalties=("score", "mobile"), task="test/hopper/random-v0",
                             steps=20, eval_interval=10, eval_episodes=1, out=str(tmp_path / "run"),
                             progress=False, batch_size=32, mobile_beta=1.5)
        config.sac.hidden_dims = (32, 32)
        config.dynamics.max_epochs, config.dynamics.hidden_dims = 1, (32, 32)
        config.rollout.batch_size, config.rollout.freq = 20, 10
        config.score.train_steps = 50
        summary = run(config)
    finally:
        torch.set_num_threads(threads)
    assert summary["normalized_score_mean"] is not None
    rows = read_metrics(tmp_path / "run")
    assert rows and all(r["penalty/mobile"] > 0 and r["penalty/stored_mean"] > 0 for r in rows)


def test_mobile_runs_the_fused_update(tmp_path):
    """A MOBILE agent (the real plug-in, target clamp at 0) takes the fused sac_update where the C++
    extension is built: its clamp is an op argument, not a reason for the module path."""
    import pyscorepen.ops as ops
    from pyscorepen.tasks import make_task
    from pyscorepen.trainer import Trainer
    from tests.test_algorithms import tiny_config
    config = tiny_config("mopo", tmp_path, penalties=("mobile",))
    (tmp_path / "mopo").mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / "mopo")
    trainer.pretrain()
    trainer.rollout_round()
    batch = trainer.sample_batch()
    assert trainer.agent.target_min() == 0.0
    has_cpp = "cpp" in ops.available_backends("sac_update", batch.obs)
    assert trainer.agent.fused_update_backend(batch) == ("cpp" if has_cpp else None)
