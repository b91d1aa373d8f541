"""The penalty sample and final returns a run stores for the report (pyscorepen.diagnostics)."""
import json

import numpy as np
import torch

from pyscorepen import diagnostics
from pyscorepen.config import TrainConfig, apply_overrides
from pyscorepen.tasks import make_task
from pyscorepen.trainer import Trainer
from tests.test_algorithms import TINY


def trained(algo, tmp_path, **extra):
    config = apply_overrides(TrainConfig(algo=algo, out=str(tmp_path / algo)), {**TINY, **extra})
    (tmp_path / algo).mkdir()
    trainer = Trainer(config, make_task("cliff", cliff=config.cliff), tmp_path / algo)
    trainer.train()
    return trainer


def test_penalty_sample_real_vs_model(tmp_path):
    trainer = trained("scorepen", tmp_path, penalties=("score", "mobile"))
    rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    sample = diagnostics.penalty_sample(trainer, n=300)
    assert torch.equal(torch.get_rng_state(), rng[0]) and np.array_equal(np.random.get_state()[1], rng[1])
    assert sample == diagnostics.penalty_sample(trainer, n=300)                 # deterministic
    assert set(sample["model"]) == set(sample["real"]) == {"stored", "target/mobile"}
    buffer = trainer.model_buffer.penalty[: len(trainer.model_buffer)]
    stored = torch.tensor(sample["model"]["stored"])
    assert len(stored) == 300 and torch.isin(stored, buffer).all()              # drawn from the model buffer
    # real side: the score penalty beta * ||h(s, a)||^2 of dataset pairs (not their stored 0)
    real = torch.tensor(sample["real"]["stored"])
    assert (real > 0).all() and sample["dropped_nonfinite"] == {}
    assert all(v >= 0 for side in ("model", "real") for v in sample[side]["target/mobile"])
    # the file the trainer wrote at the end of training is the same sample
    assert diagnostics.penalty_sample(trainer) == json.loads(
        (trainer.run_dir / diagnostics.PENALTY_SAMPLE).read_text())


def test_no_penalty_algorithms_store_an_empty_sample(tmp_path):
    for algo in ("sac", "combo"):
        sample = diagnostics.penalty_sample(trained(algo, tmp_path))
        assert sample["model"] == sample["real"] == {}
