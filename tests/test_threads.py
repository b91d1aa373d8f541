"""Thread counts: the train default (affinity / $OMP_NUM_THREADS), --threads, and the suite dividing
the cores among its parallel runs so that no default configuration oversubscribes."""
import threading
import time
from pathlib import Path

import pytest
import torch
import tyro

from pyscorepen import suite, threads
from pyscorepen.config import TrainConfig
from pyscorepen.configs import load_defaults
from pyscorepen.errors import PyScorePenError
from pyscorepen.suite import SuiteConfig, train_command


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_the_affinity_set_unless_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.available_cores() == 3 and threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")          # an explicit choice wins
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")           # set but empty: ignored
    assert threads.default_threads() == 3


def test_configure_threads_sets_torch(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.configure_threads(None) == 1 == torch.get_num_threads()
    assert threads.configure_threads(2) == 2 == torch.get_num_threads()
    with pytest.raises(PyScorePenError, match="at least 1"):
        threads.configure_threads(0)
    assert tyro.cli(TrainConfig, args=["--threads", "3"]).threads == 3
    assert TrainConfig().threads is None


def test_divide_cores():
    assert threads.divide_cores(1, 2) == 2
    assert threads.divide_cores(2, 2) == 1
    assert threads.divide_cores(3, 8) == 2            # 3 x 2 = 6 <= 8: never more threads than cores
    assert threads.divide_cores(4, 2) == 1            # more runs than cores: one thread each
    for parallel in range(1, 9):
        for cores in range(1, 17):
            if parallel <= cores:
                assert parallel * threads.divide_cores(parallel, cores) <= cores


def test_suite_passes_each_run_its_share(monkeypatch):
    defaults = load_defaults()
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    cmd = train_command(SuiteConfig(out="o"), "mopo", "x/hopper/medium-v0", 0, defaults)
    assert cmd[cmd.index("--threads") + 1] == "4"     # one run at a time: all the cores
    cmd = train_command(SuiteConfig(out="o", parallel=2), "mopo", "x/hopper/medium-v0", 0, defaults)
    assert cmd[cmd.index("--threads") + 1] == "2"
    # --extra-args come last, so a user's --threads overrides the suite's
    cmd = train_command(SuiteConfig(out="o", parallel=2, extra_args="--threads 1"), "mopo", "x/hopper/medium-v0", 0,
                        defaults)
    assert cmd[-2:] == ["--threads", "1"]
    assert tyro.cli(TrainConfig, args=cmd[cmd.index("--task"):]).threads == 1
    # an explicit --threads-per-run wins over the division; Ray runs default to 1 thread each
    cmd = train_command(SuiteConfig(out="o", parallel=2, threads_per_run=3), "mopo", "x/hopper/medium-v0", 0, defaults)
    assert cmd[cmd.index("--threads") + 1] == "3"
    cmd = train_command(SuiteConfig(out="o", ray="local"), "mopo", "x/hopper/medium-v0", 0, defaults)
    assert cmd[cmd.index("--threads") + 1] == "1"


def test_suite_runs_in_parallel_with_divided_threads(tmp_path, monkeypatch):
    """parallel=2 on 2 cores: at most two train processes at a time, each with --threads 1."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    running, peak, seen, lock = [0], [0], [], threading.Lock()

    class Done:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(cmd, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append(cmd[cmd.index("--threads") + 1])
        time.sleep(0.2)
        run = Path(cmd[cmd.index("--out") + 1])          # a finished run writes its summary.json
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text("{}")
        with lock:
            running[0] -= 1
        return Done()

    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    config = SuiteConfig(algos=("mopo", "scorepen"), tasks=("x/hopper/medium-v0",), seeds=(0, 1), out=str(tmp_path),
                         parallel=2)
    todo = [(a, t, s) for a in config.algos for t in config.tasks for s in config.seeds]
    t0 = time.perf_counter()
    assert suite.launch_runs(config, todo, load_defaults(), tmp_path) == []
    assert peak[0] == 2 and seen == ["1"] * 4
    assert time.perf_counter() - t0 < 0.75            # 4 runs of 0.2 s, two at a time
    assert len((tmp_path / "suite_log.jsonl").read_text().splitlines()) == 4
