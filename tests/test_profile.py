"""``python -m pyscorepen.profile``: a smoke run at tiny sizes, and the projection's arithmetic."""
import json

import pytest
import torch

from pyscorepen.profile import PHASES, ProfileConfig, format_table, main, profile_run, synthetic_task

TINY = ["--steps", "6", "--dataset-size", "3000", "--rollout-batch-size", "64", "--rollout-freq", "3",
        "--eval-episodes", "1", "--dynamics-batches", "2", "--score-batches", "2", "--batch-size", "32",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_profile_cli_smoke(capsys):
    assert main(["--algo", "scorepen", "--obs-dim", "4", "--action-dim", "2", *TINY]) == 0
    out = capsys.readouterr().out
    table, _, payload = out.partition("{")
    assert "scorepen on synthetic (fast path, 1 thread(s))" in table
    for phase in PHASES:
        assert phase in table
    assert "elite-only" in table and "total" in table
    result = json.loads("{" + payload)
    assert result["rollout_rounds_measured"] == 2 and not result["rollout_all_members"]
    assert result["projected_1m_steps_hours"] > 0
    probe = result["sgemm_probe_gflops"]
    assert probe["start"] > 0 and probe["end"] > 0 and "sgemm probe" in table

    # the machine's speed before and after: a drift above PROBE_DRIFT is said, as what it means
    steady = format_table({**result, "sgemm_probe_gflops": {"start": 140.0, "end": 130.0}})
    drifted = format_table({**result, "sgemm_probe_gflops": {"start": 140.0, "end": 100.0}})
    assert "140 GFLOP/s before, 130 after" in steady and "warning" not in steady
    assert "warning: the machine's speed changed during the profile" in drifted


@pytest.mark.parametrize("algo,mode", [("mopo", "fast"), ("scorepen", "ref")])
def test_projection_is_per_unit_times_units(algo, mode):
    config = ProfileConfig(algo=algo, mode=mode, obs_dim=3, action_dim=2, steps=4, dataset_size=2000,
                           rollout_batch_size=32, rollout_freq=2, eval_episodes=1, dynamics_batches=2,
                           score_batches=2, batch_size=16, threads=1, target_steps=10_000, eval_interval=5000,
                           dynamics_epochs=7)
    task = synthetic_task(3, 2, 2000)
    result = profile_run(config, task=task)
    units = result["units"]
    assert units["update"] == units["sampling"] == 10_000 and units["rollout"] == 5000
    assert units["evaluation"] == 3                                  # evaluations at 0, 5000, 10000 steps
    n_train = 2000 - min(int(2000 * 0.2), 1000)
    assert units["pretrain_dynamics"] == 7 * -(-n_train // 256)      # 7 epochs of ceil(n_train / 256) batches
    assert ("pretrain_score" in units) == (algo == "scorepen")
    for phase, seconds in result["projected_s"].items():
        assert seconds == pytest.approx(result["per_unit_s"][phase] * units[phase])
    assert result["projected_target_hours"] == pytest.approx(sum(result["projected_s"].values()) / 3600)
    assert result["projected_1m_steps_hours"] > result["projected_target_hours"]
    assert result["rollout_all_members"] == (algo == "mopo" or mode == "ref")


def test_profile_rejects_bad_steps(capsys):
    assert main(["--steps", "0", "--dataset-size", "500"]) == 2
    assert "--steps 0: must be in [1, inf)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_profile_cuda_without_a_gpu_is_a_clean_error(capsys):
    assert main(["--device", "cuda", "--dataset-size", "500"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
