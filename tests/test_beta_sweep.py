"""``python -m pyscorepen.experiments.beta_sweep``: the selection rule, and a tiny resumable sweep on the cliff task."""
import csv
import json

import pytest

from pyscorepen.experiments.beta_sweep import SELECTION_RULE, main, select_beta, sweep_defaults
from pyscorepen.suite import SuiteConfig, train_command


def row(beta, mean, std):
    return {"beta": beta, "score_mean": mean, "score_std": std}


def test_selection_rule():
    # a clear winner
    assert select_beta([row(0.0025, 50, 1), row(0.005, 60, 1), row(0.01, 40, 1)])[0] == 0.005
    # within one std of the best: the larger (more conservative) beta wins
    beta, why = select_beta([row(0.0025, 50, 1), row(0.005, 60, 5), row(0.01, 56, 1), row(0.02, 54, 1)])
    assert beta == 0.01 and "tied within one std: 0.005, 0.01" in why
    # equal means, one seed (std 0): the larger beta
    assert select_beta([row(0.005, 60, 0), row(0.01, 60, 0)])[0] == 0.01
    # unfinished betas are ignored; none finished: none chosen
    assert select_beta([row(0.005, None, None), row(0.01, 30, 0)])[0] == 0.01
    assert select_beta([row(0.005, None, None)]) == (None, "no finished run")
    assert "larger β" in SELECTION_RULE and "every dataset" in SELECTION_RULE


def test_presets_set_beta_and_keep_scorepen_dataset_defaults():
    defaults = sweep_defaults((0.0025, 0.02))
    cmd = train_command(SuiteConfig(out="o"), "scorepen-beta0.02", "x/hopper/medium-replay-v0", 0, defaults)
    assert cmd[cmd.index("--algo") + 1] == "scorepen"
    assert cmd[len(cmd) - 1 - cmd[::-1].index("--beta") + 1] == "0.02"          # the last --beta wins
    assert cmd[cmd.index("--rollout.length") + 1] == "1"                      # scorepen's hopper-medium-replay h
    assert "o/scorepen-beta0.02/hopper-medium-replay/seed0" in cmd


def test_tiny_sweep_on_the_cliff_task_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    extra = ("--dataset-size 500 --sac.hidden-dims 32 32 --dynamics.hidden-dims 32 32 --dynamics.ensemble-size 3 "
             "--dynamics.num-elites 2 --dynamics.max-epochs 2 --score.hidden-dims 32 32 --score.train-steps 50 "
             "--rollout.batch-size 64 --rollout.length 2 --rollout.freq 10 --batch-size 32 --threads 1")
    argv = ["--task", "cliff", "--betas", "0", "0.02", "--seeds", "0", "--steps", "20", "--out", str(out),
            "--eval-interval", "10", "--eval-episodes", "2", f"--extra-args={extra}"]
    assert main(argv) == 0
    runs = {b: out / f"scorepen-beta{b}" / "cliff" / "seed0" for b in ("0", "0.02")}
    for beta, run in runs.items():
        config = json.loads((run / "config.json").read_text())
        assert config["beta"] == float(beta) and config["pretrained_from"] == str(out / "pretrained")
        assert (run / "summary.json").is_file()
    # the runs share the pretrained models
    assert (runs["0"] / "dynamics.pt").read_bytes() == (out / "pretrained" / "dynamics.pt").read_bytes()
    with open(out / "beta_sweep.csv") as f:
        records = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in records] == [0.0, 0.02]
    assert [float(r["beta_paper_units"]) for r in records] == pytest.approx([0.0, 2.0])
    summaries = {b: json.loads((run / "summary.json").read_text()) for b, run in runs.items()}
    for r, b in zip(records, ("0", "0.02")):
        assert float(r["score_mean"]) == pytest.approx(summaries[b]["normalized_score_mean"])
        last = json.loads((runs[b] / "metrics.jsonl").read_text().splitlines()[-1])
        assert float(r["model_penalty_mean"]) == pytest.approx(last["rollout/penalty_mean"])
        evals = [json.loads(line)["normalized_score_mean"] for line in (runs[b] / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("normalized_score_mean") is not None]
        assert float(r["late_score_mean"]) == pytest.approx(sum(evals[-5:]) / len(evals[-5:]))
    # beta = 0 (the no-penalty control) stores no penalty; beta > 0 does (beta * ||h||^2)
    assert float(records[0]["model_penalty_mean"]) == 0.0 < float(records[1]["model_penalty_mean"])
    chosen = [r for r in records if r["chosen"] == "True"]
    assert len(chosen) == 1
    best = max(records, key=lambda r: (float(r["score_mean"]), float(r["beta"])))
    assert chosen[0]["beta"] == best["beta"]           # one seed: std 0, the best mean (ties: larger beta)
    md = (out / "beta_sweep.md").read_text()
    assert SELECTION_RULE in md and f"Chosen: β = {float(best['beta']):g}" in md
    assert (out / "beta_sweep.png").is_file() and (out / "results.md").is_file()
    # rerun: every run is finished, nothing is launched
    log = (out / "suite_log.jsonl").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert (out / "suite_log.jsonl").read_text() == log
    assert "0 run(s) to do, 2 finished run(s) skipped" in capsys.readouterr().err


def test_bad_betas_are_user_errors(tmp_path, capsys):
    assert main(["--task", "cliff", "--betas", "0.01", "0.01", "--out", str(tmp_path / "s")]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["--task", "cliff", "--betas", "-1", "--out", str(tmp_path / "s")]) == 2
    assert "--betas" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_threads_per_run_reaches_every_run():
    from pathlib import Path

    from pyscorepen.experiments.beta_sweep import BetaSweepArgs, suite_config
    from pyscorepen.suite import run_threads
    args = BetaSweepArgs(task="x/hopper/medium-replay-v0", out=Path("o"), parallel=2, threads_per_run=1)
    config = suite_config(args, None)
    assert config.threads_per_run == 1 and run_threads(config) == 1
    cmd = train_command(config, "scorepen-beta0.01", "x/hopper/medium-replay-v0", 0, sweep_defaults((0.01,)))
    assert cmd[cmd.index("--threads") + 1] == "1"
