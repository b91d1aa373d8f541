"""The paper/reference defaults of issue 10 §1: rollout size, COMBO, MOBILE, SAC options, count preset."""
import math

import pytest
import torch

from pyscorepen.algos import COMBO, ComboConfig
from pyscorepen.algos.sac import SAC, SACConfig
from pyscorepen.config import RolloutConfig, TrainConfig, apply_overrides, defaults_for
from pyscorepen.configs import dataset_defaults, load_defaults
from pyscorepen.data import Batch, ReplayBuffer
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics, rollout
from pyscorepen.penalties import PENALTIES
from pyscorepen.penalties.mobile import mobile_penalty
from pyscorepen.tasks import make_task
from pyscorepen.trainer import Trainer

S, A = 4, 2


def random_batch(n: int, from_model: list[bool], gen: torch.Generator) -> Batch:
    return Batch(torch.randn(n, S, generator=gen), torch.rand(n, A, generator=gen) * 2 - 1,
                 torch.randn(n, generator=gen), torch.randn(n, S, generator=gen), torch.zeros(n), torch.zeros(n),
                 torch.as_tensor(from_model))


# ------------------------------------------------------------------------------------ rollouts
def test_rollout_defaults_are_the_papers():
    r = RolloutConfig()
    assert (r.batch_size, r.length, r.retain_rounds) == (50_000, 5, 5)        # MBPO/MOPO/MOBILE
    # the cliff task keeps 10k (its documented figures); MuJoCo datasets get 50k
    assert defaults_for("scorepen", "cliff").rollout.batch_size == 10_000
    assert defaults_for("mopo", "x/hopper/medium-replay-v0").rollout.batch_size == 50_000


def test_model_buffer_holds_five_rounds(tmp_path):
    config = apply_overrides(TrainConfig(algo="mopo", out=str(tmp_path)), {
        "progress": False, "sac.hidden_dims": (8,), "dynamics.hidden_dims": (8,), "cliff.dataset_size": 200})
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path)
    assert trainer.model_buffer.capacity == 50_000 * 5 * 5 == 1_250_000


def test_fifty_thousand_starts_run_in_bounded_chunks():
    """A 50k x 5 round never evaluates more than chunk_size rows at once (the policy and the fused
    model step see chunks), and all 250k transitions reach the buffer."""
    torch.manual_seed(0)
    dyn = EnsembleDynamics(S, A, DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(8,)))
    rows = []

    def policy(obs):
        rows.append(obs.shape[0])
        return torch.zeros(obs.shape[0], A)

    step = dyn.step
    dyn.step = lambda obs, actions, **kw: (rows.append(obs.shape[0]), step(obs, actions, **kw))[1]
    config = RolloutConfig()
    buffer = ReplayBuffer(config.batch_size * config.length * config.retain_rounds, S, A)
    stats = rollout(dyn, policy, torch.randn(config.batch_size, S), config.length, buffer,
                    chunk_size=config.chunk_size)
    assert stats["rollout/transitions"] == len(buffer) == 250_000
    assert max(rows) == config.chunk_size == 4096
    assert len(rows) == 2 * config.length * math.ceil(50_000 / 4096)


# ------------------------------------------------------------------------------------ COMBO
def test_combo_defaults_table():
    combo = defaults_for("combo", "mujoco/hopper/medium-v0")
    assert combo.sac.hidden_dims == (256, 256, 256) and combo.sac.deterministic_backup
    assert combo.combo.cql_weight == 5.0 and combo.rollout.length == 5 and combo.combo.rho == "mix"
    assert defaults_for("combo", "mujoco/halfcheetah/medium-v0").combo.cql_weight == 0.5
    weights = {key: table["combo.cql_weight"] for key, table in load_defaults()["combo"].items()}
    assert set(weights.values()) <= {0.5, 1.0, 5.0} and len(weights) == 9   # the paper's search set
    mopo = defaults_for("mopo", "mujoco/hopper/medium-v0")
    assert mopo.sac.hidden_dims == (256, 256) and not mopo.sac.deterministic_backup


def test_combo_rho_mixes_dataset_and_model_states():
    """rho='mix' pushes Q down on every state of the batch (model and dataset ones, COMBO §3);
    rho='model' on model states only. Changing the dataset rows' states moves the push-down term
    in the first case only (push-up on dataset pairs held fixed)."""
    gen = torch.Generator().manual_seed(0)
    from_model = [False] * 6 + [True] * 10
    batch = random_batch(16, from_model, gen)
    moved = Batch(*(getattr(batch, f) for f in ("obs", "actions", "rewards", "next_obs", "terminals", "penalty",
                                                "from_model")))
    moved.obs = batch.obs.clone()
    moved.obs[:6] += 5.0
    moved.next_obs = batch.next_obs.clone()
    moved.next_obs[:6] += 5.0
    for rho in ("mix", "model"):
        torch.manual_seed(0)
        agent = COMBO(S, A, SACConfig(hidden_dims=(16, 16)), -torch.ones(A), torch.ones(A),
                      combo=ComboConfig(rho=rho, num_sampled_actions=4))
        rows = agent.push_down_rows(batch)
        assert rows.tolist() == ([True] * 16 if rho == "mix" else from_model)
        q_pred = torch.zeros(2, 16)
        gaps = []
        for b in (batch, moved):
            torch.manual_seed(1)
            with torch.no_grad():
                gaps.append(agent.critic_regularizer(b, q_pred)[1]["combo/q_gap"])
        assert (gaps[0] != gaps[1]) if rho == "mix" else torch.equal(gaps[0], gaps[1])
    # on an all-dataset batch (no rollouts yet) 'mix' pushes down on dataset states; 'model' has none
    real_only = random_batch(8, [False] * 8, gen)
    assert agent.combo.rho == "model" and agent.critic_regularizer(real_only, torch.zeros(2, 8))[1] == {}
    agent.combo = ComboConfig(rho="mix", num_sampled_actions=4)
    assert "combo/q_gap" in agent.critic_regularizer(real_only, torch.zeros(2, 8))[1]
    assert ComboConfig().rho == "mix"


def test_deterministic_backup_drops_the_entropy_term():
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(32, [True] * 32, gen)
    targets = {}
    for deterministic in (False, True):
        torch.manual_seed(0)
        agent = SAC(S, A, SACConfig(hidden_dims=(16, 16), deterministic_backup=deterministic, init_alpha=0.5),
                    -torch.ones(A), torch.ones(A))
        for fused in (True, False):
            torch.manual_seed(2)
            targets[deterministic, fused] = agent.compute_target(batch, fused=fused)[0]
        torch.manual_seed(2)
        with torch.no_grad():
            next_actions, next_log_prob = agent.actor(batch.next_obs)
            next_q = agent.critic_target(batch.next_obs, next_actions).min(0).values
        entropy = 0.0 if deterministic else agent.alpha * next_log_prob
        expected = batch.rewards + agent.config.gamma * (next_q - entropy)
        torch.testing.assert_close(targets[deterministic, False], expected)
        torch.testing.assert_close(targets[deterministic, True], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(targets[True, False], targets[False, False])


# ------------------------------------------------------------------------------------ MOBILE
def test_mobile_clamps_the_target_and_uses_the_references_penalty():
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(16, [False] * 4 + [True] * 12, gen)
    batch.rewards -= 50.0                                                  # targets far below 0
    dyn = EnsembleDynamics(S, A, DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(8,)))
    config = TrainConfig()
    assert config.mobile_clamp_target and not config.mobile_include_reward
    plugin = PENALTIES["mobile"](1.0, dynamics=dyn, dataset=None, config=config)
    assert plugin.target_min == 0.0 and not plugin.include_reward
    agent = SAC(S, A, SACConfig(hidden_dims=(16, 16)), -torch.ones(A), torch.ones(A), target_penalties=[plugin])
    clamped = agent.compute_target(batch)[0]
    assert torch.all(clamped == 0.0)                                       # real and model rows alike
    off = apply_overrides(config, {"mobile_clamp_target": False})
    agent.target_penalties = [PENALTIES["mobile"](1.0, dynamics=dyn, dataset=None, config=off)]
    assert agent.target_penalties[0].target_min is None and torch.all(agent.compute_target(batch)[0] < 0)
    # the table turns the clamp off where returns can be negative
    assert dataset_defaults("mobile", "x/halfcheetah/random-v0")["mobile_clamp_target"] is False
    assert "mobile_clamp_target" not in dataset_defaults("mobile", "x/hopper/medium-replay-v0")
    # default penalty: std over elites of the sample mean of min Q'(s', a') -- no r, no gamma
    mean, std = torch.randn(2, 5, S + 1, generator=gen), torch.rand(2, 5, S + 1, generator=gen)
    noise = torch.randn(3, 2, 5, S + 1, generator=gen)
    value = lambda next_obs: next_obs.sum(-1)                              # a stand-in for min_k Q'
    u = mobile_penalty(torch.zeros(5, S), torch.zeros(5, A), mean, std, noise, value, 0.99)
    next_q = (mean + std * noise)[..., :S].sum(-1)                         # [K, M, B]
    torch.testing.assert_close(u, next_q.mean(0).std(0))
    with_r = mobile_penalty(torch.zeros(5, S), torch.zeros(5, A), mean, std, noise, value, 0.99, include_reward=True)
    torch.testing.assert_close(with_r, ((mean + std * noise)[..., S] + 0.99 * next_q).mean(0).std(0))


def test_mobile_table_sources_are_marked():
    """Every MOBILE (h, beta) entry is either traced to a reference file or marked UNVERIFIED."""
    from pyscorepen.configs import DEFAULTS_FILE
    lines = [line for line in DEFAULTS_FILE.read_text().splitlines() if line.startswith("[mobile.")]
    assert len(lines) == 12
    assert all(("UNVERIFIED" in line) or ("configs/gym/" in line) or ("run_mobile.py" in line) for line in lines)


# ------------------------------------------------------------------------------------ SAC
def test_actor_lr_cosine_schedule_and_resume():
    gen = torch.Generator().manual_seed(0)
    assert not SACConfig().actor_lr_cosine                                 # off unless measured to help
    with pytest.raises(ValueError, match="total_steps"):
        SAC(S, A, SACConfig(actor_lr_cosine=True), -torch.ones(A), torch.ones(A))
    config = SACConfig(hidden_dims=(8,), actor_lr_cosine=True, actor_lr=1e-3)
    agent = SAC(S, A, config, -torch.ones(A), torch.ones(A), total_steps=10)
    lrs = []
    for _ in range(6):
        agent.update(random_batch(8, [True] * 8, gen))
        lrs.append(agent.actor_optim.param_groups[0]["lr"])
    expected = [0.5e-3 * (1 + math.cos(math.pi * t / 10)) for t in range(6)]
    assert lrs == pytest.approx(expected)
    assert agent.critic_optim.param_groups[0]["lr"] == config.critic_lr  # the critic keeps its rate
    resumed = SAC(S, A, config, -torch.ones(A), torch.ones(A), total_steps=10)
    resumed.load_state_dict(agent.state_dict())
    for a in (agent, resumed):
        a.update(random_batch(8, [True] * 8, gen))
    assert resumed.actor_optim.param_groups[0]["lr"] == agent.actor_optim.param_groups[0]["lr"] \
        == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 6 / 10)))


# ------------------------------------------------------------------------------------ count preset
def test_scorepen_plus_count_rollout_stores_both_penalties(tmp_path):
    from tests.test_algorithms import tiny_config
    torch.manual_seed(0)
    config = tiny_config("scorepen", tmp_path, penalties=("score", "count"), beta=0.5, count_coef=2.0)
    (tmp_path / "scorepen").mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / "scorepen")
    trainer.pretrain()
    stats = trainer.rollout_round()
    assert 0 < stats["rollout/raw_count_mean"] <= 1
    expected = 0.5 * stats["rollout/raw_score_mean"] + 2.0 * stats["rollout/raw_count_mean"]
    assert stats["rollout/penalty_mean"] == pytest.approx(expected, rel=1e-4)
    info = trainer.agent.update(trainer.sample_batch())
    assert all(math.isfinite(v) for v in info.values())
    presets = load_defaults()["presets"]
    assert presets["scorepen+count"] == ["--algo", "scorepen", "--penalties", "score", "count"]


def test_scorepen_beta_is_the_sweeps_choice_on_every_mujoco_dataset():
    """beta = 0.0025 from the hopper-medium-replay sweep's rule (defaults.toml, docs/results/beta-sweep-hopper-mr/),
    the same on every MuJoCo dataset; the cliff task keeps config.py's value. ScorePen+MOBILE (MOBILE's
    table for h and its coefficient) and ScorePen+count (ScorePen's table) run with the same beta."""
    from pyscorepen.suite import SuiteConfig, load_defaults as suite_defaults, train_command
    for env in ("halfcheetah", "hopper", "walker2d"):
        for level in ("random", "medium", "medium-replay", "medium-expert"):
            assert defaults_for("scorepen", f"pyscorepen/{env}/{level}-v0").beta == 0.0025, (env, level)
    assert defaults_for("scorepen", "cliff").beta == TrainConfig().beta == 0.01
    task = "pyscorepen/hopper/medium-replay-v0"
    for algo in ("scorepen", "scorepen+mobile", "scorepen+count"):
        cmd = train_command(SuiteConfig(out="o"), algo, task, 0, suite_defaults())
        betas = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--beta"]
        assert betas in ([], ["0.0025"]), (algo, betas)   # never another value
        from pyscorepen.train import parse_config
        argv = [a for a in cmd[cmd.index("pyscorepen.train") + 1:]]
        assert parse_config(argv).beta == 0.0025, algo
