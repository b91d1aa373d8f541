"""Every algorithm: a few updates on tiny data give finite losses and change every network."""
import math

import pytest
import torch

from pyscorepen.algos import ALGORITHMS
from pyscorepen.config import TrainConfig, apply_overrides
from pyscorepen.tasks import make_task
from pyscorepen.trainer import Trainer

TINY = {"steps": 20, "eval_interval": 10, "eval_episodes": 2, "progress": False, "sac.hidden_dims": (32, 32),
        "dynamics.hidden_dims": (32, 32), "dynamics.ensemble_size": 3, "dynamics.num_elites": 2,
        "dynamics.max_epochs": 2, "score.hidden_dims": (32, 32), "score.train_steps": 50,
        "rollout.batch_size": 64, "rollout.length": 2, "rollout.freq": 10, "cliff.dataset_size": 500,
        "combo.num_sampled_actions": 3}


def tiny_config(algo: str, tmp_path, **extra) -> TrainConfig:
    return apply_overrides(TrainConfig(algo=algo, out=str(tmp_path / algo)), {**TINY, **extra})


def params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_updates_are_finite_and_change_every_network(algo, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(algo, tmp_path)
    task = make_task("cliff", cliff=config.cliff)
    (tmp_path / algo).mkdir()
    trainer = Trainer(config, task, tmp_path / algo)
    trainer.pretrain()
    if trainer.algorithm.uses_model:
        stats = trainer.rollout_round()
        assert stats["rollout/transitions"] == 128 and len(trainer.model_buffer) == 128
    agent = trainer.agent
    before = {"actor": params(agent.actor), "critic": params(agent.critic), "target": params(agent.critic_target)}
    alpha_before = agent.log_alpha.item()
    for _ in range(5):
        info = agent.update(trainer.sample_batch())
    assert all(math.isfinite(v) for v in info.values()), info
    for name, module in (("actor", agent.actor), ("critic", agent.critic), ("target", agent.critic_target)):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], params(module))]
        assert all(changed), f"{algo}: {name} has parameters that did not change"
    assert agent.log_alpha.item() != alpha_before
    if algo == "combo":
        assert "combo/q_gap" in info
    if algo in ("scorepen", "mopo"):
        assert trainer.model_buffer.penalty[: len(trainer.model_buffer)].gt(0).all()


def test_penalties_combine_with_separate_coefficients(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("scorepen", tmp_path, penalties=("score", "uncertainty"), beta=0.5, mopo_lambda=3.0)
    (tmp_path / "scorepen").mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / "scorepen")
    trainer.pretrain()
    stats = trainer.rollout_round()
    expected = 0.5 * stats["rollout/raw_score_mean"] + 3.0 * stats["rollout/raw_uncertainty_mean"]
    assert stats["rollout/penalty_mean"] == pytest.approx(expected, rel=1e-4)


def test_real_ratio_and_batch_composition(tmp_path):
    config = tiny_config("combo", tmp_path)
    (tmp_path / "combo").mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / "combo")
    trainer.pretrain()
    trainer.rollout_round()
    batch = trainer.sample_batch()
    assert len(batch) == 256 and int((~batch.from_model).sum()) == 128      # COMBO f = 0.5
    assert torch.all(batch.penalty[~batch.from_model] == 0)


def test_unknown_penalty_is_a_clear_error(tmp_path):
    config = tiny_config("mopo", tmp_path, penalties=("nope",))
    with pytest.raises(ValueError, match="unknown penalties"):
        Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path)


@pytest.mark.parametrize("num_model", [5, 16])
def test_combo_batched_regularizer_matches_reference(num_model):
    """COMBO's one-critic-call regularizer equals the three-call reference (value and gradients)."""
    from pyscorepen.algos import COMBO, ComboConfig
    from pyscorepen.data import Batch
    from pyscorepen.sac import SACConfig

    torch.manual_seed(0)
    S, A, B = 5, 3, 24
    agent = COMBO(S, A, SACConfig(hidden_dims=(16, 16)), -2 * torch.ones(A), torch.ones(A),
                  combo=ComboConfig(num_sampled_actions=4, temperature=0.7))
    from_model = torch.arange(B) < num_model
    batch = Batch(torch.randn(B, S), torch.rand(B, A), torch.randn(B), torch.randn(B, S), torch.zeros(B),
                  torch.zeros(B), from_model)
    # same policy samples in both: a deterministic stand-in for the actor's noise
    agent.actor.forward = lambda obs, deterministic=False, with_log_prob=True, _f=agent.actor.forward: (
        _f(obs, deterministic=True)[0], obs.sum(-1))
    results = []
    for fn in (agent.critic_regularizer, agent.critic_regularizer_ref):
        torch.manual_seed(1)
        q_pred = agent.critic(batch.obs, batch.actions)
        reg, info = fn(batch, q_pred)
        agent.critic.zero_grad()
        reg.backward()
        results.append((reg.detach(), float(info["combo/q_gap"]), [p.grad.clone() for p in agent.critic.parameters()]))
    (fast, gap_fast, grads_fast), (ref, gap_ref, grads_ref) = results
    torch.testing.assert_close(fast, ref)
    assert gap_fast == pytest.approx(gap_ref, rel=1e-5)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)
