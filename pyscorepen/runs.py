"""The run folder contract (other tools rely on it):

    runs/<algo>-<task>-s<seed>/
      config.json       resolved TrainConfig
      metrics.jsonl     one JSON object per evaluation: step, return_mean, return_std,
                        normalized_score_mean, losses, penalty and rollout statistics
                        (every key, its unit and meaning: docs/metrics.md)
      summary.json      algo, task, seed, steps, return_mean, return_std, normalized_score_*,
                        (cliff) final_distance_to_goal_mean
      checkpoint.pt     latest training state (agent, model buffer, RNG) for resuming
      dynamics.pt       trained dynamics ensemble      score.pt   trained score model
      pretrain.json     their training statistics (epochs, holdout MSE, DSM loss, samples/s)
      policy.pt         final agent state
      eval_returns.json final evaluation's per-episode returns (VaR curve of the report)
      penalty_sample.json  penalties on sampled model and real transitions (pyscorepen.diagnostics)
      learning_curve.png, penalty_heatmap.png (cliff)
      tb/               TensorBoard event files (only with --tensorboard)
      report.html       written by `python -m pyscorepen.report <run>`
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT, DYNAMICS, SCORE, POLICY = "checkpoint.pt", "dynamics.pt", "score.pt", "policy.pt"
PRETRAIN = "pretrain.json"
HEATMAP, CURVE = "penalty_heatmap.png", "learning_curve.png"
EVAL_RETURNS, PENALTY_SAMPLE = "eval_returns.json", "penalty_sample.json"


def default_run_dir(algo: str, task: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_")
    return Path("runs") / f"{algo}-{slug}-s{seed}"


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    (Path(run_dir) / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_summary(run_dir: Path, summary: dict) -> None:
    (Path(run_dir) / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def summarize(result, task) -> dict[str, float]:
    """Statistics of an evaluation: return, normalized score and VaR (see
    :func:`pyscorepen.evaluation_metrics.summarize_returns`), plus the cliff task's final
    distance to the goal."""
    from pyscorepen.evaluation_metrics import summarize_returns
    out = summarize_returns(result.returns, task)
    if result.final_distances:
        d = np.asarray(result.final_distances)
        out["final_distance_to_goal_mean"] = float(d.mean())
        out["final_distance_to_goal_std"] = float(d.std())
    if result.trajectories and getattr(task, "trajectory_metrics", None) is not None:
        out.update(task.trajectory_metrics(result.trajectories))   # risky task: hazard-entry rate
    return out
