"""scripts/mujoco_grid.sh's shared fit: fit here, use a committed finished fit, resume a committed
unfinished one, and refit when a committed fit belongs to other data (tiny models, FIT_ONLY=1)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyscorepen.collect import write_dataset
from tests.test_minari import random_episodes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mujoco_grid.sh"
TASK = "test/hopper/medium-replay-v0"
SLUG = "test_hopper_medium-replay-v0"
FIT_ARGS = ("--dynamics.hidden-dims 16 16 --dynamics.ensemble-size 3 --dynamics.num-elites 2 "
            "--dynamics.max-epochs 4 --dynamics.max-epochs-since-update 10 --dynamics-checkpoint-interval 2 "
            "--score.hidden-dims 16 16 --score.train-steps 20")


def make_dataset(root: Path, seed: int) -> Path:
    write_dataset(TASK, random_episodes(40, seed=seed), "Hopper-v5", root, ref_min=-20.0, ref_max=3234.3,
                  ref_episodes=2, description="test")
    return root


def grid(out: Path, datasets: Path, artifacts: Path, **extra_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYSCOREPEN_TEST_KILL_AT"}
    env.update({"OMP_NUM_THREADS": "1", "MINARI_DATASETS_PATH": str(datasets), "TASKS": TASK,
           "OUT": str(out), "ARTIFACTS": str(artifacts), "FIT_ONLY": "1", "FIT_ARGS": FIT_ARGS, **extra_env})
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_grid_uses_resumes_or_refuses_committed_fits(tmp_path):
    data, other_data = make_dataset(tmp_path / "data", 0), make_dataset(tmp_path / "other_data", 1)
    empty = tmp_path / "no_artifacts"

    fresh = grid(tmp_path / "a", data, empty)                       # nothing committed: fit here
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "dynamics epoch 4" in fresh.stderr
    fitted = tmp_path / "a" / "pretrained" / SLUG
    reference = {name: (fitted / name).read_bytes() for name in ("dynamics.pt", "score.pt")}

    finished = tmp_path / "finished"                                # a committed finished fit is used
    (finished / SLUG).mkdir(parents=True)
    for name in reference:
        shutil.copy(fitted / name, finished / SLUG / name)
    used = grid(tmp_path / "b", data, finished)
    assert used.returncode == 0, used.stderr[-3000:]
    assert "dynamics epoch" not in used.stderr                      # no fitting happened
    assert all((tmp_path / "b" / "pretrained" / SLUG / n).read_bytes() == b for n, b in reference.items())

    refit = grid(tmp_path / "c", other_data, finished)              # other data: refused, fitted here
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert "does not match this dataset; fitting here" in refit.stderr
    assert (tmp_path / "c" / "pretrained" / SLUG / "dynamics.pt").read_bytes() != reference["dynamics.pt"]

    killed = grid(tmp_path / "k", data, empty, PYSCOREPEN_TEST_KILL_AT="dynamics_epoch:3")
    assert killed.returncode != 0
    unfinished = tmp_path / "unfinished"                            # a committed unfinished fit resumes
    (unfinished / SLUG).mkdir(parents=True)
    shutil.copy(tmp_path / "k" / "pretrained" / SLUG / "dynamics-fit-2.pt", unfinished / SLUG)
    resumed = grid(tmp_path / "d", data, unfinished)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the dynamics fit from dynamics-fit-2.pt" in resumed.stderr
    assert all((tmp_path / "d" / "pretrained" / SLUG / n).read_bytes() == b for n, b in reference.items())
