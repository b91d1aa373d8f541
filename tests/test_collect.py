"""Smoke runs of ``python -m pyscorepen.collect`` on tiny budgets (tiny nets, a few hundred steps)."""
import json

import pytest
import torch

from pyscorepen.collect import REPRODUCIBLE_ENV, CollectConfig, Collector, collect, main, reproducible_env_missing
from pyscorepen.evaluation_metrics import REF_SCORES_FILE
from pyscorepen.algos.sac import SACConfig
from pyscorepen.tasks.minari_task import load_minari_task

TINY = ["--env-id", "Hopper-v5", "--steps", "300", "--dataset-size", "200", "--learning-starts", "100",
        "--eval-every", "100", "--eval-episodes", "1", "--ref-episodes", "2", "--batch-size", "32",
        "--sac.hidden-dims", "32", "32", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def test_collect_cli_writes_loadable_datasets(tmp_path, minari_root, capsys):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sac_steps"] == 300 and summary["expert_return_source"] == "this run's expert"
    assert set(summary["datasets"]) == {"random", "medium", "medium-replay", "expert", "medium-expert"}
    assert summary["medium_step"] in {e["step"] for e in summary["evals"]}
    for level, stats in summary["datasets"].items():
        task = load_minari_task(f"pyscorepen/hopper/{level}-v0")
        assert task.name == stats["id"] and len(task.dataset) == stats["transitions"]
        # reference scores stored in the Minari metadata: random policy and expert return
        assert task.ref_min_score == pytest.approx(summary["ref_min_score"])
        assert task.ref_max_score == pytest.approx(summary["expert_return"])
        assert task.info["ref_scores_source"].count("Minari metadata") == 2
    assert summary["datasets"]["random"]["transitions"] == 200
    assert summary["datasets"]["medium-replay"]["transitions"] == summary["medium_step"]
    assert summary["datasets"]["medium-expert"]["transitions"] == 400
    assert (run_dir / "policies" / "expert.pt").is_file()
    # a rerun trains nothing and rewrites nothing
    capsys.readouterr()
    assert main(TINY + ["--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().err.count("already exists") == 5


def test_resume_after_interrupt(tmp_path):
    small = dict(env_id="Hopper-v5", learning_starts=50, eval_every=100, eval_episodes=1, batch_size=32,
                 sac=SACConfig(hidden_dims=(16, 16)), progress=False, run_dir=str(tmp_path / "r"))
    first = Collector(CollectConfig(steps=200, **small), tmp_path / "r")
    first.train()                                   # checkpoints at steps 100 and 200
    second = Collector(CollectConfig(steps=400, **small), tmp_path / "r")
    assert second.step == 200 and len(second.buffer) == 200 and len(second.evals) == 2
    assert second.buffer.terminals[199] == 1 or second.timeouts[199] == 1   # cut episode ends there
    assert torch.equal(second.sac.actor.net[0].weight, first.sac.actor.net[0].weight)
    second.train()
    assert second.step == 400 and [e["step"] for e in second.evals] == [100, 200, 300, 400]
    # rerunning with a smaller --steps keeps everything and trains no further
    third = Collector(CollectConfig(steps=100, **small), tmp_path / "r")
    third.train()
    assert third.step == 400 and len(third.buffer) == 400


def test_medium_early_stop_with_expert_return(tmp_path, minari_root, monkeypatch):
    """With --expert-return and no expert level, training stops at the medium threshold.
    Also writes to a relative --datasets-path (minari needs it made absolute)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "rel_ds"))
    config = CollectConfig(env_id="Hopper-v5", levels=("medium", "medium-replay"), steps=2000, dataset_size=100,
                           datasets_path="rel_ds",
                           expert_return=-1e9, learning_starts=50, eval_every=100, eval_episodes=1,
                           ref_episodes=1, batch_size=32, sac=SACConfig(hidden_dims=(16, 16)), progress=False,
                           run_dir=str(tmp_path / "r"))
    summary = collect(config)
    assert summary["sac_steps"] == 100 and summary["medium_step"] == 100   # threshold reached at 1st eval
    assert summary["expert_return"] == -1e9 and summary["expert_return_source"] == "--expert-return"
    assert load_minari_task("pyscorepen/hopper/medium-v0").ref_max_score == -1e9


def test_ref_scores_only(tmp_path, minari_root):
    from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
    env = _make_env("Hopper-v5")
    write_dataset("ext/hopper/norefs-v0", rollout_episodes(env, RandomPolicy(env.action_space, 0), 50, 0,
                                                           progress=False),
                  "Hopper-v5", minari_root, None, None, 1, "no refs")
    assert main(["--ref-scores-only", "--task", "ext/hopper/norefs-v0", "--expert-return", "3000",
                 "--ref-episodes", "2", "--no-progress"]) == 0
    stored = json.loads((minari_root / "ext/hopper/norefs-v0" / REF_SCORES_FILE).read_text())
    task = load_minari_task("ext/hopper/norefs-v0")
    assert task.ref_min_score == pytest.approx(stored["ref_min_score"]) and task.ref_max_score == 3000.0


def test_medium_replay_size_continues_training_past_medium(tmp_path, minari_root):
    """--medium-replay-size N: with a known expert return (stop at the medium threshold), SAC
    keeps training until the buffer holds N transitions, and medium-replay is its first N."""
    run_dir = tmp_path / "run"
    args = ["--env-id", "Hopper-v5", "--levels", "medium", "medium-replay", "--expert-return", "-1000",
            "--steps", "600", "--dataset-size", "100", "--learning-starts", "50", "--eval-every", "100",
            "--eval-episodes", "1", "--ref-episodes", "2", "--batch-size", "16", "--sac.hidden-dims", "16", "16",
            "--no-progress", "--run-dir", str(run_dir)]
    assert main(args + ["--medium-replay-size", "400"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["medium_step"] == 100          # threshold below any return: the first evaluation
    assert summary["sac_steps"] == 400            # trained on to the requested buffer size, not to --steps
    assert summary["datasets"]["medium-replay"]["transitions"] == 400
    task = load_minari_task("pyscorepen/hopper/medium-replay-v0")
    assert len(task.dataset) == 400


def _cli_collect(tmp_path, name, *extra, env_overrides=None):
    """``python -m pyscorepen.collect`` as a user runs it (a subprocess, so it may re-execute itself)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in REPRODUCIBLE_ENV}
    env.update(OMP_NUM_THREADS="1", **(env_overrides or {}))
    args = [sys.executable, "-m", "pyscorepen.collect", *TINY, "--levels", "medium-replay",
            "--medium-replay-size", "300", "--expert-return", "3234.3", "--torch-threads", "1",
            "--datasets-path", str(tmp_path / name / "datasets"), "--run-dir", str(tmp_path / name / "run"), *extra]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / name / "run" / "summary.json").read_text())
    files = sorted((tmp_path / name / "datasets").rglob("*.hdf5"))
    return summary, done.stderr, {f.name: f.read_bytes() for f in files}


@pytest.mark.skipif(not reproducible_env_missing({}), reason="the CPU pins apply to x86-64 only")
def test_reproducible_collection_pins_the_cpu_path_and_repeats_byte_for_byte(tmp_path):
    first, stderr, data = _cli_collect(tmp_path, "a")
    assert "restarting with" in stderr                        # the CLI re-executed itself with the pins
    numerics = first["numerics"][-1]
    assert numerics["torch_cpu_capability"] == "AVX2"
    assert {k: numerics[k] for k in REPRODUCIBLE_ENV} == REPRODUCIBLE_ENV
    second, _, data_again = _cli_collect(tmp_path, "b")
    assert data and data == data_again                        # same command, same bytes
    unpinned, stderr, _ = _cli_collect(tmp_path, "c", "--no-reproducible")
    assert "restarting" not in stderr and unpinned["numerics"][-1]["MKL_CBWR"] is None


def test_reproducible_env_missing_is_empty_off_x86(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert reproducible_env_missing({}) == {}
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert reproducible_env_missing({}) == REPRODUCIBLE_ENV
    assert reproducible_env_missing(dict(REPRODUCIBLE_ENV)) == {}
