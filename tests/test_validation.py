"""The declared ranges (every numeric option has one, --help shows it) and the fit logs without bars."""
import logging

import pytest
import torch

from pyscorepen.collect import CollectConfig
from pyscorepen.config import TrainConfig
from pyscorepen.evaluate import EvaluateArgs
from pyscorepen.experiments.cliff_sweep import SweepArgs
from pyscorepen.suite import SuiteConfig
from pyscorepen.validation import (ConfigError, Interval, check_ranges, field_docstrings, nested_fields,
                                   numeric_fields, parse_range)


def all_numeric_fields(cls, prefix=""):
    docs = field_docstrings(cls)
    for name, _, _ in numeric_fields(cls):
        yield f"{cls.__name__}.{prefix}{name}", docs.get(name)
    for name, sub, _ in nested_fields(cls):
        yield from all_numeric_fields(sub, f"{name}.")


@pytest.mark.parametrize("cls", [TrainConfig, EvaluateArgs, SuiteConfig, CollectConfig, SweepArgs])
def test_every_numeric_option_documents_its_range(cls):
    missing = [name for name, doc in all_numeric_fields(cls) if parse_range(doc) is None]
    assert not missing, f"add 'Range: [lo, hi)' to the docstring of {missing}"


def test_interval_parsing_and_membership():
    r = parse_range("Discount factor. Range: [0, 1).")
    assert r == Interval(0.0, 1.0, True, False) and str(r) == "[0, 1)"
    assert 0 in r and 0.99 in r and 1 not in r and -1e-9 not in r
    r = parse_range("Range: (0, inf), each value.")
    assert 1e30 in r and 0 not in r and str(r) == "(0, inf)"
    assert parse_range("no range here") is None


def test_check_ranges_reports_every_problem_with_its_flag():
    config = TrainConfig()
    config.beta, config.sac.gamma, config.cliff.dataset_size = -1.0, float("nan"), 0
    with pytest.raises(ConfigError) as err:
        check_ranges(config)
    message = str(err.value)
    assert "--beta -1.0: must be in [0, inf)" in message and "--sac.gamma nan: must be a finite number" in message
    assert "--dataset-size 0" in message and "\n" not in message     # cliff options have no group prefix


def test_help_shows_ranges(capsys):
    from pyscorepen.train import main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Range: [0, 1)" in out and "--debug" in out


def test_fits_log_without_progress_bars(caplog):
    from pyscorepen.data import TransitionDataset
    from pyscorepen.models import dynamics as dynamics_module
    from pyscorepen.models import score as score_module
    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
    from pyscorepen.models.score import ScoreConfig, ScoreModel
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
    data = TransitionDataset(obs, act, torch.zeros(200), obs + act, torch.zeros(200), torch.zeros(200))
    caplog.set_level(logging.INFO)
    dyn = EnsembleDynamics(2, 2, DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(8,), max_epochs=7))
    dyn.fit(data, progress=False)
    lines = [r.message for r in caplog.records if r.name == dynamics_module.__name__]
    assert len(lines) == 2 and lines[0].startswith(f"dynamics epoch {dynamics_module.LOG_EVERY_EPOCHS}:")
    assert "holdout MSE" in lines[0] and "elites" in lines[0] and lines[1].startswith("dynamics epoch 7:")
    caplog.clear()
    ScoreModel(4, ScoreConfig(hidden_dims=(8,), train_steps=score_module.LOG_EVERY_STEPS + 1)).fit(data, progress=False)
    lines = [r.message for r in caplog.records if r.name == score_module.__name__]
    assert len(lines) == 2 and "DSM loss" in lines[0]
    caplog.clear()
    dyn.fit(data, progress=True)     # with bars: no log lines
    assert not [r for r in caplog.records if r.name == dynamics_module.__name__]


def test_cliff_sweep_reuses_checked_pretrained_models(tmp_path):
    """The sweep trains dynamics + score once (no policy) and its runs reuse them through the
    fingerprint check of --pretrained-from."""
    from dataclasses import replace

    from pyscorepen import runs
    from pyscorepen.config import apply_overrides, defaults_for
    from pyscorepen.experiments.cliff_sweep import sweep
    from tests.test_algorithms import TINY
    base = apply_overrides(defaults_for("scorepen", "cliff"), {**TINY, "cliff.dataset_size": 300})
    args = SweepArgs(out=tmp_path / "sweep", grid=(1.0,), seeds=(0,), algos=("scorepen", "mopo"), steps=2,
                     eval_episodes=1)
    rows = sweep(args, base=replace(base, eval_interval=2))
    assert [r["algo"] for r in rows] == ["scorepen", "mopo"]
    shared = args.out / "pretrained-s0"
    assert (shared / runs.DYNAMICS).exists() and not (shared / runs.SUMMARY).exists()
    saved = torch.load(shared / runs.DYNAMICS, weights_only=True)
    assert saved["fingerprint"]["dataset"]["num_transitions"] == 300
    for algo in ("scorepen", "mopo"):   # byte-identical copies of the shared, checked models
        run_dir = args.out / f"{algo}-beta1-s0"
        assert (run_dir / runs.DYNAMICS).read_bytes() == (shared / runs.DYNAMICS).read_bytes()
    assert (args.out / "sweep.md").exists()


def test_dynamics_fingerprint_leaves_out_how_the_fit_is_computed(tmp_path):
    """DynamicsConfig.fused_step (the dynamics_fit_step op or autograd) is not part of what a saved
    dynamics.pt depends on: a model saved before the field existed, or with it off, loads for a
    config with it on; a field that changes the model still refuses."""
    import dataclasses

    from pyscorepen.models.dynamics import DynamicsConfig
    from pyscorepen.runs import RunFileError, load_model, model_fingerprint, save_model
    identity = {"task": "cliff", "num_transitions": 300, "obs_dim": 2, "action_dim": 2, "sha256": "ab"}
    on, off = DynamicsConfig(), DynamicsConfig(fused_step=False)
    assert model_fingerprint("dynamics", identity, on) == model_fingerprint("dynamics", identity, off)
    before_the_field = model_fingerprint("dynamics", identity, on)        # as an older version saved it
    before_the_field["config"] = {k: v for k, v in dataclasses.asdict(on).items() if k != "fused_step"}
    save_model(tmp_path / "dynamics.pt", {"w": torch.ones(1)}, before_the_field)
    assert float(load_model(tmp_path / "dynamics.pt", "the dynamics", model_fingerprint("dynamics", identity, on))["w"]) == 1
    with pytest.raises(RunFileError, match="config.num_elites"):
        load_model(tmp_path / "dynamics.pt", "the dynamics",
                   model_fingerprint("dynamics", identity, DynamicsConfig(num_elites=3)))


def test_model_files_fingerprint_and_legacy(tmp_path, caplog):
    from pyscorepen import runs
    from pyscorepen.models.score import ScoreConfig
    from pyscorepen.runs import RunFileError, load_model, model_fingerprint, save_model
    identity = {"task": "cliff", "num_transitions": 300, "obs_dim": 2, "action_dim": 2, "sha256": "ab"}
    fp = model_fingerprint("score", identity, ScoreConfig())
    state = {"w": torch.ones(2)}
    save_model(tmp_path / "score.pt", state, fp)
    assert torch.equal(load_model(tmp_path / "score.pt", "the score model", fp)["w"], state["w"])
    other = model_fingerprint("score", {**identity, "num_transitions": 400}, ScoreConfig(sigmas=(0.2,)))
    with pytest.raises(RunFileError) as err:
        load_model(tmp_path / "score.pt", "the score model", other)
    assert "dataset.num_transitions: 300 → 400" in str(err.value) and "config.sigmas: [0.1] → [0.2]" in str(err.value)
    torch.save(state, tmp_path / "legacy.pt")       # saved before fingerprints: loads, with a warning
    assert torch.equal(load_model(tmp_path / "legacy.pt", "the score model", fp)["w"], state["w"])
    assert "no fingerprint" in caplog.text
    assert not list(tmp_path.glob("*.tmp")) and runs.SCORE == "score.pt"
