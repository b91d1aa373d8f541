"""``python -m pyscorepen.suite``: defaults file, aggregation into the ScorePen table, and a smoke run."""
import json
import shutil

import pytest

from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
from pyscorepen.configs import dataset_defaults, dataset_key, load_defaults, to_cli_args
from pyscorepen.suite import SuiteConfig, main, run_dir, run_suite, short_name, train_command


def test_defaults_file_and_cli_args():
    defaults = load_defaults()
    assert dataset_key("mujoco/hopper/medium-replay-v0") == "hopper-medium-replay"
    assert dataset_key("/data/pyscorepen/walker2d/medium-expert-v0/data") == "walker2d-medium-expert"
    # MOPO Table 4: hopper-medium (h, lambda) = (5, 5); walker2d-medium-expert = (1, 2)
    assert dataset_defaults("mopo", "mujoco/hopper/medium-v0", defaults) == {"rollout.length": 5, "mopo_lambda": 5.0}
    assert dataset_defaults("mopo", "x/walker2d/medium-expert-v0", defaults) == {"rollout.length": 1,
                                                                                 "mopo_lambda": 2.0}
    assert dataset_defaults("scorepen+mobile", "x/hopper/medium-v0", defaults) == \
        dataset_defaults("mobile", "x/hopper/medium-v0", defaults)
    # COMBO: algorithm-wide 3x256 critics and entropy-free backup, then OfflineRL-Kit's per-dataset (h, beta)
    assert dataset_defaults("combo", "x/hopper/medium-v0", defaults) == {
        "sac.hidden_dims": [256, 256, 256], "sac.deterministic_backup": True, "rollout.length": 5,
        "combo.cql_weight": 5.0}
    assert dataset_defaults("combo", "x/hopper/random-v0", defaults) == {
        "sac.hidden_dims": [256, 256, 256], "sac.deterministic_backup": True}
    assert dataset_defaults("scorepen+count", "x/hopper/medium-v0", defaults) == \
        dataset_defaults("scorepen", "x/hopper/medium-v0", defaults)
    assert to_cli_args({"rollout.length": 5, "mopo_lambda": 1.0}) == ["--rollout.length", "5", "--mopo-lambda", "1.0"]
    cmd = train_command(SuiteConfig(out="o", extra_args="--steps 7"), "scorepen+mobile", "x/hopper/medium-v0", 3,
                        defaults)
    assert cmd[cmd.index("--penalties") + 1: cmd.index("--penalties") + 3] == ["score", "mobile"]
    assert cmd[-2:] == ["--steps", "7"] and "--mobile-beta" in cmd and "o/scorepen+mobile/hopper-medium/seed3" in cmd
    assert short_name("mujoco/halfcheetah/medium-expert-v0") == "ha-me"
    # booleans become tyro flags, nested ones negated as --group.no-name
    assert to_cli_args({"mobile_clamp_target": False, "sac.deterministic_backup": False,
                        "sac.hidden_dims": [256, 256]}) == [
        "--no-mobile-clamp-target", "--sac.no-deterministic-backup", "--sac.hidden-dims", "256", "256"]
    cmd = train_command(SuiteConfig(out="o"), "scorepen+count", "x/hopper/medium-v0", 0, defaults)
    assert cmd[cmd.index("--penalties") + 1: cmd.index("--penalties") + 3] == ["score", "count"]


def fake_run(config, algo, task, seed, final, curve, behaviour=None):
    folder = run_dir(config, algo, task, seed)
    folder.mkdir(parents=True)
    rows = [{"step": s, "return_mean": 10 * v, "normalized_score_mean": v} for s, v in curve]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps(
        {"algo": algo, "task": task, "seed": seed, "return_mean": 10 * final, "normalized_score_mean": final,
         "steps": curve[-1][0], "behaviour_normalized_score": behaviour}))


def test_aggregate_table_csv_and_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "no-datasets"))   # the fallback finds nothing
    tasks = ("mujoco/hopper/medium-v0", "mujoco/walker2d/random-v0")
    config = SuiteConfig(algos=("mopo", "scorepen"), tasks=tasks, seeds=(0, 1), out=str(tmp_path / "suite"),
                         aggregate_only=True)
    for algo, base in (("mopo", 60.0), ("scorepen", 100.0)):
        for task in tasks:
            for seed in (0, 1):
                final = base + 2 * seed
                behaviour = 38.2 if task.endswith("hopper/medium-v0") else None
                fake_run(config, algo, task, seed, final, [(0, 0.0), (10, final / 2), (20, final)], behaviour)
    result = run_suite(config)
    table = (tmp_path / "suite" / "results.md").read_text()
    assert table.splitlines()[0] == "| Task Name | Behaviour | Bar | mopo | scorepen |"
    # each cell: ours, the bar's verdict (medium: >= behaviour + 5), the published D4RL v2 number
    assert "| ho-m | 38.2 | ≥ behaviour + 5 | 61.0±1.0 ✓ (paper 62.8) | 101.0±1.0 ✓ (paper 106.0) |" in table
    assert "| wa-r | – | – | 61.0±1.0 (paper 7.4) | 101.0±1.0 (paper 19.9) |" in table
    assert "| Average | | | 61.0±1.0 (paper 35.1) | 101.0±1.0 (paper 63.0) |" in table
    assert "after 20 gradient steps" in table
    assert "What can be compared" in table and "D4RL v2" in table and "Gymnasium v5" in table
    assert "after 20 gradient steps, mean ± std over the 2 finished seed(s) of each cell. " in table
    import csv
    with open(tmp_path / "suite" / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4 and list(records[0])[:4] == ["algo", "task", "dataset", "seeds_done"]
    by = {(r["algo"], r["dataset"]): r for r in records}
    assert by[("mopo", "ho-m")]["steps"] == "20" and float(by[("mopo", "ho-m")]["behaviour_normalized_score"]) == 38.2
    assert by[("scorepen", "wa-r")]["behaviour_normalized_score"] == ""
    assert float(by[("mopo", "ho-m")]["published_normalized_score"]) == 62.8
    assert by[("mopo", "ho-m")]["bar"] == "pass" and by[("scorepen", "wa-r")]["bar"] == ""
    assert {p.name for p in (tmp_path / "suite" / "curves").iterdir()} == {"hopper-medium.png", "walker2d-random.png"}
    assert not result["failed"]


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def test_suite_smoke_run_and_skip(tmp_path, minari_root):
    env = _make_env("Hopper-v5")
    write_dataset("test/hopper/random-v0", rollout_episodes(env, RandomPolicy(env.action_space, 0), 300, 0,
                                                            progress=False),
                  "Hopper-v5", minari_root, ref_min=-20.0, ref_max=3234.3, ref_episodes=1, description="tiny")
    out = tmp_path / "suite"
    argv = ["--algos", "sac", "--tasks", "test/hopper/random-v0", "--seeds", "0", "--out", str(out),
            "--steps", "20", "--eval-interval", "10", "--eval-episodes", "1",
            "--extra-args=--batch-size 32 --sac.hidden-dims 32 32"]
    assert main(argv) == 0
    log = (out / "suite_log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["returncode"] == 0
    assert (out / "sac" / "hopper-random" / "seed0" / "summary.json").is_file()
    table = (out / "results.md").read_text()
    assert "| Task Name | Behaviour | Bar | sac |" in table and "| ho-r | " in table and "±" in table
    # the trainer's summary carries the dataset's behaviour score: its episodes' mean return, normalized
    summary = json.loads((out / "sac" / "hopper-random" / "seed0" / "summary.json").read_text())
    expected = 100 * (summary["behaviour_return_mean"] + 20.0) / (3234.3 + 20.0)
    assert summary["behaviour_normalized_score"] == pytest.approx(expected)
    assert f"| ho-r | {expected:.1f} | – |" in table   # random data: no bar
    assert "steps,behaviour_normalized_score,published_normalized_score,bar_rule,bar" in (out / "results.csv").read_text().splitlines()[0]
    assert (out / "curves" / "hopper-random.png").is_file()
    # a second call finds the run finished and launches nothing
    assert main(argv) == 0
    assert len((out / "suite_log.jsonl").read_text().splitlines()) == 1


def test_aggregate_skips_diverged_runs_with_nan_or_infinity(tmp_path, capsys):
    """Summaries written before the divergence guard (NaN/Infinity in the JSON) are skipped with a
    warning, never averaged in; their NaN curve rows are not plotted."""
    task = "mujoco/hopper/medium-v0"
    config = SuiteConfig(algos=("mopo",), tasks=(task,), seeds=(0, 1, 2), out=str(tmp_path / "suite"),
                         aggregate_only=True)
    fake_run(config, "mopo", task, 0, 50.0, [(10, 25.0), (20, 50.0)])
    fake_run(config, "mopo", task, 1, float("nan"), [(10, 30.0), (20, float("nan"))])
    fake_run(config, "mopo", task, 2, float("inf"), [(10, 30.0), (20, float("inf"))])
    result = run_suite(config)
    row = result["rows"][0]
    assert row["seeds_done"] == 1 and row["seeds"] == "0"
    assert row["normalized_score_mean"] == 50.0 and row["return_mean"] == 500.0
    err = capsys.readouterr().err
    assert err.count("non-finite return_mean") == 2 and "seed1" in err and "seed2" in err


def test_publish_copies_tables_curves_and_commands(tmp_path, monkeypatch):
    """--aggregate-only --publish DIR: the committed files equal the suite's, with the commands."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "no-datasets"))
    task = "pyscorepen/halfcheetah/medium-v0"
    out = tmp_path / "suite"
    config = SuiteConfig(algos=("mopo", "mobile"), tasks=(task,), seeds=(0, 1), out=str(out), steps=20)
    for algo in config.algos:
        for seed in config.seeds:
            fake_run(config, algo, task, seed, 50.0 + seed, [(10, 20.0), (20, 50.0 + seed)], behaviour=40.0)
    # what the suite logs per launched run; a failed launch before a successful one is not published
    log = [{"algo": "mopo", "task": task, "seed": 0, "cmd": ["/venv/bin/python", "-m", "pyscorepen.train", "--bad"],
            "returncode": 1},
           {"algo": "mopo", "task": task, "seed": 0, "returncode": 0,
            "cmd": ["/venv/bin/python", "-m", "pyscorepen.train", "--algo", "mopo", "--seed", "0"]},
           {"algo": "sac", "task": task, "seed": 0, "returncode": 0, "cmd": ["/x/python", "-m", "not.this.suite"]}]
    (out / "suite_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    dest = tmp_path / "docs" / "results" / "grid"
    argv = ["--algos", "mopo", "mobile", "--tasks", task, "--seeds", "0", "1", "--out", str(out), "--steps", "20",
            "--extra-args=--threads 1 --no-progress", "--aggregate-only", "--publish", str(dest)]
    assert main(argv) == 0
    for name in ("results.md", "results.csv", "curves/halfcheetah-medium.png"):
        assert (dest / name).read_bytes() == (out / name).read_bytes(), name
    # each finished run's records, in --out's layout; an unfinished run (no summary.json) is left out
    for algo in config.algos:
        for seed in config.seeds:
            run = run_dir(config, algo, task, seed)
            for name in ("summary.json", "metrics.jsonl"):
                published = dest / "runs" / run.relative_to(out) / name
                assert published.read_bytes() == (run / name).read_bytes(), published
    assert "| ha-m | 40.0 | ≥ behaviour + 5 | 50.5±0.5 ✓ (paper 73.0) | 50.5±0.5 ✓ (paper 74.6) |" in \
        (dest / "results.md").read_text()
    command = (dest / "command.md").read_text()
    suite_line = ("python -m pyscorepen.suite --algos mopo mobile --tasks pyscorepen/halfcheetah/medium-v0 "
                  f"--seeds 0 1 --out {out} --steps 20 '--extra-args=--threads 1 --no-progress'")
    assert suite_line in command and "--aggregate-only" not in suite_line
    assert "python -m pyscorepen.train --algo mopo --seed 0" in command
    assert "--bad" not in command and "not.this.suite" not in command and "/venv/bin" not in command
    # the published suite command parses back to the same suite
    import shlex

    from pyscorepen.suite import parse_args
    again = parse_args(shlex.split(suite_line)[3:])
    assert (again.algos, again.tasks, again.seeds, again.steps, again.extra_args) == \
        (config.algos, config.tasks, config.seeds, 20, "--threads 1 --no-progress")
    table = (out / "results.md").read_text()
    unfinished = run_dir(config, "mopo", task, 2)
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text('{"step": 10}\n')
    assert main([*argv[:6], "0", "1", "2", *argv[8:]]) == 0
    assert not (dest / "runs" / unfinished.relative_to(out)).exists()
    # copied back into an empty --out, the records give the same table
    again = tmp_path / "again"
    shutil.copytree(dest / "runs", again)
    assert main([*argv[:8], "--out", str(again), *argv[10:-2]]) == 0
    assert (again / "results.md").read_text() == table.replace(str(out), str(again))


@pytest.mark.parametrize("returncode", [0, 143])
def test_interrupted_run_stops_the_suite(tmp_path, monkeypatch, returncode):
    """A run that stops without its summary.json (SIGINT: exit 0 after its checkpoint; SIGTERM: 143)
    stops the suite: no further run starts, and the error says how to resume."""
    import subprocess

    from pyscorepen import suite
    from pyscorepen.errors import PyScorePenError
    launched = []

    def fake_run(cmd, **kwargs):
        launched.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, "", "interrupted by SIGINT")

    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    config = SuiteConfig(algos=("mopo", "mobile"), tasks=("cliff",), seeds=(0, 1), out=str(tmp_path / "s"))
    (tmp_path / "s").mkdir()
    todo = [(a, "cliff", s) for a in config.algos for s in config.seeds]
    with pytest.raises(PyScorePenError, match="interrupted"):
        suite.launch_runs(config, todo, load_defaults(None), tmp_path / "s")
    assert len(launched) == 1
    log = [json.loads(line) for line in (tmp_path / "s" / "suite_log.jsonl").read_text().splitlines()]
    assert log == [{**log[0], "interrupted": True}] and log[0]["returncode"] == returncode


def test_finished_runs_do_not_stop_the_suite(tmp_path, monkeypatch):
    """Exit 0 with a summary.json is a finished run: every queued run is launched."""
    import subprocess

    from pyscorepen import suite
    config = SuiteConfig(algos=("mopo",), tasks=("cliff",), seeds=(0, 1, 2), out=str(tmp_path / "s"))

    def fake_run(cmd, **kwargs):
        seed = int(cmd[cmd.index("--seed") + 1])
        run = run_dir(config, "mopo", "cliff", seed)
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    (tmp_path / "s").mkdir()
    failed = suite.launch_runs(config, [("mopo", "cliff", s) for s in (0, 1, 2)], load_defaults(None), tmp_path / "s")
    assert failed == [] and all((run_dir(config, "mopo", "cliff", s) / "summary.json").is_file() for s in (0, 1, 2))


def test_status_lines_of_runs_in_progress(tmp_path):
    """The suite's periodic status line: step of the budget, last score, rate and time left."""
    import json as _json

    from pyscorepen.suite import SuiteConfig, run_dir, status_lines
    config = SuiteConfig(out=str(tmp_path), steps=200_000)
    running = {("mopo", "pyscorepen/hopper/medium-replay-v0", 1): 1000.0, ("scorepen", "cliff", 0): 1300.0}
    folder = run_dir(config, "mopo", "pyscorepen/hopper/medium-replay-v0", 1)
    folder.mkdir(parents=True)
    rows = [{"step": 2000, "normalized_score_mean": 6.0, "updates_per_s": 250.0},
            {"step": 50_000, "normalized_score_mean": 42.6, "updates_per_s": 250.0}]
    (folder / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    lines = status_lines(config, running, now=1600.0)
    assert lines == [
        "[suite] mopo pyscorepen/hopper/medium-replay-v0 seed 1: step 50000/200000 (25 %), normalized 42.6, "
        "250 updates/s, ~10 min left (10 min)",
        "[suite] scorepen cliff seed 0: pretraining or starting (5 min)",
    ]


def test_bad_status_interval_is_a_user_error(tmp_path, capsys):
    from pyscorepen.suite import main
    assert main(["--algos", "mopo", "--tasks", "cliff", "--out", str(tmp_path), "--status-interval", "-1"]) == 2
    assert "--status-interval" in capsys.readouterr().err


def test_a_cell_with_fewer_seeds_says_how_many(tmp_path, monkeypatch):
    """A grid in progress: the cell whose seeds are not all finished says so, the others do not."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "no-datasets"))
    task = "mujoco/hopper/medium-v0"
    config = SuiteConfig(algos=("mopo", "mobile", "scorepen"), tasks=(task,), seeds=(0, 1, 2),
                         out=str(tmp_path / "suite"), aggregate_only=True)
    for algo, seeds in (("mopo", (0, 1, 2)), ("mobile", (0, 1))):
        for seed in seeds:
            fake_run(config, algo, task, seed, 60.0 + seed, [(0, 0.0), (20, 60.0 + seed)], 38.2)
    run_suite(config)
    table = (tmp_path / "suite" / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ho-m |"))
    mopo, mobile, scorepen = (cell.strip() for cell in row.split("|")[4:7])
    assert "seeds]" not in mopo and mobile.startswith("60.5±0.5 ✓ [2 of 3 seeds]") and "[2 of 3 seeds]" in mobile
    assert scorepen.startswith("–")
    assert "over the 3 finished seed(s) of each cell (fewer where a cell says so; – : no seed finished yet)." in table


def test_status_lists_every_run_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """``--status``: finished (score), running (a live lock holder), stopped (its newest checkpoint),
    not started; a count line; no file written."""
    from pyscorepen.runs import RunLock
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "no-datasets"))
    task = "mujoco/hopper/medium-v0"
    config = SuiteConfig(algos=("mopo",), tasks=(task,), seeds=(0, 1, 2, 3), out=str(tmp_path / "suite"),
                         steps=100, status=True)
    fake_run(config, "mopo", task, 0, 61.0, [(0, 0.0), (100, 61.0)], 38.2)
    for seed in (1, 2):   # in progress: metrics up to step 50, a checkpoint of step 40
        folder = run_dir(config, "mopo", task, seed)
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 50, "normalized_score_mean": 30.0,
                                                          "updates_per_s": 10.0}) + "\n")
        (folder / "checkpoint-40.pt").write_bytes(b"")
    before = sorted(p for p in tmp_path.rglob("*"))
    with RunLock(run_dir(config, "mopo", task, 1)):
        result = run_suite(config)
    lines = result["status"]
    assert lines[0] == f"mopo {task} seed 0: finished, normalized 61.0"
    assert lines[1].startswith(f"mopo {task} seed 1: running (pid ") and "step 50/100 (50 %), normalized 30.0" in lines[1]
    assert lines[1].endswith("10 updates/s, ~0 min left")
    assert lines[2].startswith(f"mopo {task} seed 2: stopped, checkpoint of step 40 (rerunning the suite resumes it)")
    assert lines[3] == f"mopo {task} seed 3: not started"
    assert lines[4].endswith("4 run(s) in " + str(tmp_path / "suite") + ": 1 finished, 1 running, 1 stopped, 1 not started")
    after = sorted(p for p in tmp_path.rglob("*") if p.name != ".lock")
    assert after == before                                               # nothing written (the test's own lock aside)
    assert "not started" in capsys.readouterr().out
