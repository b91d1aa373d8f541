"""``python -m pyscorepen.suite --ray ADDRESS`` on a local Ray cluster started by the test.

Two runs go to Ray as tasks (1 CPU each on a 2-CPU cluster). Mid-run, after each has written a
checkpoint, one run's train process is SIGKILLed and the other run's Ray worker is SIGKILLed.
Ray relaunches both; they resume from their own checkpoints and must end exactly where an
uninterrupted local suite ends: the same policy.pt tensors, summary.json (apart from the wall
time), final-evaluation returns and results table.

Slow (a Ray cluster start plus four tiny trainings, ~1-2 min on 2 cores): run with --runslow;
CI runs this file with --runslow (see .ci/run).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyscorepen import runs
from pyscorepen.suite import SuiteConfig, run_dir

TINY = ("--batch-size 32 --sac.hidden-dims 32 32 --dynamics.hidden-dims 32 32 --dynamics.ensemble-size 3 "
        "--dynamics.num-elites 2 --dynamics.max-epochs 2 --score.hidden-dims 32 32 --score.train-steps 50 "
        "--rollout.batch-size 64 --rollout.length 2 --rollout.freq 10 --dataset-size 500")
SEEDS = (0, 1)


def suite_args(out: Path) -> list[str]:
    return ["--algos", "scorepen", "--tasks", "cliff", "--seeds", *map(str, SEEDS), "--out", str(out),
            "--steps", "600", "--eval-interval", "100", "--eval-episodes", "3", f"--extra-args={TINY}"]


def train_pid(out: Path) -> int | None:
    """pid of the train process writing run folder ``out`` (a child of this test's suite)."""
    needle = "pyscorepen.train\0".encode()
    target = f"--out\0{out}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and target in cmdline:
            return int(entry.name)
    return None


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    return {prefix: obj}


@pytest.mark.slow
def test_ray_suite_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    ray = pytest.importorskip("ray", reason="pip install -e .[ray]")
    # a throw-away cluster on this machine: no usage reporting, no auth token shared through ~/.ray
    ray_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **ray_env}
    os.environ.update(ray_env)

    # the uninterrupted reference: the local suite (no Ray)
    ref = tmp_path / "local"
    proc = subprocess.run([sys.executable, "-m", "pyscorepen.suite", *suite_args(ref)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        suite = subprocess.Popen([sys.executable, "-m", "pyscorepen.suite", *suite_args(out),
                                  "--ray", context.address_info["address"]],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        folders = {seed: run_dir(SuiteConfig(out=str(out.resolve())), "scorepen", "cliff", seed) for seed in SEEDS}
        how = {0: "train process", 1: "Ray worker"}
        killed: dict[int, dict] = {}
        deadline = time.monotonic() + 420
        while len(killed) < len(SEEDS) and suite.poll() is None and time.monotonic() < deadline:
            for seed, folder in folders.items():
                if seed in killed or runs.latest_checkpoint(folder) is None:
                    continue
                pid = train_pid(folder)
                if pid is None or (folder / runs.SUMMARY).exists():
                    continue
                victim = pid if how[seed] == "train process" else parent_pid(pid)
                os.kill(victim, signal.SIGKILL)       # a process this test's suite started
                step = torch.load(runs.latest_checkpoint(folder), weights_only=False)["step"]
                killed[seed] = {"train_pid": pid, "victim": victim, "checkpoint_step": step,
                                "dynamics_mtime": (folder / runs.DYNAMICS).stat().st_mtime_ns}
                assert not (folder / runs.SUMMARY).exists(), "the run finished before it could be killed"
            time.sleep(0.02)
        stdout, stderr = suite.communicate(timeout=600)
    finally:
        ray.shutdown()

    assert set(killed) == set(SEEDS), f"not killed mid-run: {sorted(set(SEEDS) - set(killed))}\n{stderr}"
    assert suite.returncode == 0, stderr
    for seed, info in killed.items():
        assert 0 < info["checkpoint_step"] < 600
        assert not alive(info["train_pid"])            # a killed worker takes its train process along
        folder = folders[seed]
        # resumed from its own checkpoint: the dynamics model was not trained again
        assert (folder / runs.DYNAMICS).stat().st_mtime_ns == info["dynamics_mtime"]
        reference = run_dir(SuiteConfig(out=str(ref)), "scorepen", "cliff", seed)
        got, want = ({k: v for k, v in json.loads((d / runs.SUMMARY).read_text()).items()
                      if not k.endswith("seconds")} for d in (folder, reference))   # wall times differ
        assert got == want, how[seed]
        got, want = (tensors(torch.load(d / runs.POLICY)) for d in (folder, reference))
        assert got.keys() == want.keys()
        for key in want:
            same = torch.equal(got[key], want[key]) if isinstance(want[key], torch.Tensor) else got[key] == want[key]
            assert same, f"{how[seed]}: policy.pt differs at {key}"
        assert (folder / runs.EVAL_RETURNS).read_text() == (reference / runs.EVAL_RETURNS).read_text()

    # the same table, and one suite_log line per run, marked as run on Ray
    assert (out / "results.md").read_text() == (ref / "results.md").read_text()
    log = [json.loads(line) for line in (out / "suite_log.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in log) == list(SEEDS)
    assert all(r["returncode"] == 0 and r["backend"] == "ray" for r in log)


def test_ray_flag_without_ray_installed_is_a_clean_error(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from pyscorepen.suite import main\n"
            f"sys.exit(main(['--algos', 'sac', '--tasks', 'cliff', '--seeds', '0', '--out', {str(tmp_path)!r}, '--ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --ray needs the 'ray' package") and "pip install -e .[ray]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ray_flag_parsing_and_cpu_request():
    from pyscorepen.suite import parse_args, train_command
    from pyscorepen.suite_ray import threads_of
    assert parse_args(["--ray"]).ray == "local"
    assert parse_args(["--ray", "--seeds", "1"]).ray == "local" and parse_args(["--ray", "--seeds", "1"]).seeds == (1,)
    assert parse_args(["--ray", "head:6379"]).ray == "head:6379"
    assert parse_args([]).ray is None
    config = parse_args(["--threads-per-run", "3", "--extra-args=--steps 5"])
    cmd = train_command(config, "sac", "cliff", 0, {})
    assert threads_of(cmd, config.threads_per_run) == 3
    assert threads_of([*cmd, "--threads", "4"], config.threads_per_run) == 4     # the run's own --threads wins
    assert threads_of([*cmd, "--threads=2"], 1) == 2


def test_train_task_retries_only_runs_killed_from_outside():
    """The Ray task body: killed by a signal (or 137/143) -> RunKilled (Ray retries); an error of
    the run itself (exit 2: bad config) is returned, not retried. No Ray needed."""
    from pyscorepen.suite_ray import RunKilled, train_task
    py = [sys.executable, "-c"]
    with pytest.raises(RunKilled):
        train_task([*py, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 1)
    with pytest.raises(RunKilled):
        train_task([*py, "raise SystemExit(143)"], 1)
    result = train_task([*py, "import os, sys; print('bad config', file=sys.stderr); "
                               "sys.exit(2 if os.environ['OMP_NUM_THREADS'] == '3' else 1)"], 3)
    assert result["returncode"] == 2 and result["stderr_tail"] == "bad config"
    assert train_task([*py, "pass"], 1)["returncode"] == 0


def test_bad_suite_numbers_are_a_clean_error(tmp_path, capsys):
    from pyscorepen.suite import main
    assert main(["--out", str(tmp_path / "s"), "--threads-per-run", "0"]) == 2
    assert "--threads-per-run must be >= 1" in capsys.readouterr().err and not (tmp_path / "s").exists()
