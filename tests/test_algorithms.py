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
    # every network the agent has (BC: the actor only; IQL adds a value network)
    nets = {name: getattr(agent, name) for name in ("actor", "critic", "critic_target", "value") if hasattr(agent, name)}
    before = {name: params(module) for name, module in nets.items()}
    alpha_before = agent.log_alpha.item() if hasattr(agent, "log_alpha") else None
    for _ in range(5):
        info = agent.update(trainer.sample_batch())
    assert all(math.isfinite(v) for v in info.values()), info
    for name, module in nets.items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], params(module))]
        assert all(changed), f"{algo}: {name} has parameters that did not change"
    if alpha_before is not None:
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


@pytest.mark.parametrize("all_members", [True, False], ids=["all-members", "elite-only"])
def test_rollout_score_penalty_is_the_score_models_own(tmp_path, all_members):
    """The fused rollout normalizes (s, a) with the dynamics' statistics (training split only); the
    stored score penalty must still be ||h||^2 at the score model's own normalization."""
    torch.manual_seed(0)
    config = tiny_config("scorepen", tmp_path)
    (tmp_path / "scorepen").mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / "scorepen")
    trainer.pretrain()
    dyn, score = trainer.dynamics, trainer.score
    assert not torch.allclose(dyn.input_mean, score.input_mean)   # the holdout split makes them differ
    batch = trainer.dataset.sample(64)
    step = dyn.step(batch.obs, batch.actions, score_params=trainer.score_params, all_members=all_members)
    torch.testing.assert_close(step.score_penalty, score.penalty(batch.obs, batch.actions), rtol=1e-4, atol=1e-5)


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



@pytest.mark.parametrize("algo", ["sac", "combo"])
def test_fast_update_matches_reference_update(algo):
    """SAC.update (fused Adam, no critic weight grads in the actor loss, one conversion) takes the
    same step as the plain SAC.update_ref, for SAC and for the COMBO subclass."""
    from pyscorepen.algos import COMBO, ComboConfig
    from pyscorepen.data import Batch
    from pyscorepen.algos.sac import SAC, SACConfig

    S, A, B = 5, 3, 32
    agents = []
    for fused in (True, False):
        torch.manual_seed(0)
        config = SACConfig(hidden_dims=(16, 16), fused_optim=fused)
        agents.append(COMBO(S, A, config, -torch.ones(A), torch.ones(A), combo=ComboConfig(num_sampled_actions=3))
                      if algo == "combo" else SAC(S, A, config, -torch.ones(A), torch.ones(A)))
    gen = torch.Generator().manual_seed(1)
    batches = [Batch(torch.randn(B, S, generator=gen), torch.rand(B, A, generator=gen), torch.randn(B, generator=gen),
                     torch.randn(B, S, generator=gen), torch.zeros(B), torch.rand(B, generator=gen),
                     torch.arange(B) % 2 == 0) for _ in range(3)]
    infos = []
    for agent, update in ((agents[0], agents[0].update), (agents[1], agents[1].update_ref)):
        torch.manual_seed(2)
        infos.append([update(batch) for batch in batches][-1])
    fast, ref = agents
    assert infos[0].keys() == infos[1].keys() and all(isinstance(v, float) for v in infos[0].values())
    for key in infos[0]:
        assert infos[0][key] == pytest.approx(infos[1][key], rel=1e-4, abs=1e-5), key
    for name in ("actor", "critic", "critic_target"):
        for p_fast, p_ref in zip(getattr(fast, name).parameters(), getattr(ref, name).parameters()):
            torch.testing.assert_close(p_fast, p_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.log_alpha, ref.log_alpha)


@pytest.mark.parametrize("deterministic", [False, True])
def test_actor_repeats_equal_repeated_states(deterministic):
    """``actor(obs, repeats=R)`` (COMBO's R samples per push-down state, the MLP once per state) gives
    what ``actor(obs.repeat(R, 1))`` gives from the same RNG state: rows r*B + b, same noise draw."""
    from pyscorepen.models.nets import TanhGaussianActor
    torch.manual_seed(0)
    actor = TanhGaussianActor(11, 3, (32, 32), -2 * torch.ones(3), torch.ones(3))
    obs = torch.randn(7, 11)
    torch.manual_seed(5)
    want_actions, want_log_prob = actor(obs.repeat(4, 1), deterministic=deterministic)
    torch.manual_seed(5)
    got_actions, got_log_prob = actor(obs, deterministic=deterministic, repeats=4)
    torch.testing.assert_close(got_actions, want_actions)
    assert got_actions.shape == (28, 3)
    if deterministic:
        assert got_log_prob is None and want_log_prob is None
    else:
        torch.testing.assert_close(got_log_prob, want_log_prob)
        assert not torch.equal(got_actions[:7], got_actions[7:14]), "each repeat draws its own noise"
