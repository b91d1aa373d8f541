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
                        (each {'fingerprint', 'state_dict'}: see model_fingerprint)
      pretrain.json     their training statistics (epochs, holdout MSE, DSM loss, samples/s)
      policy.pt         final agent state
      eval_returns.json final evaluation's per-episode returns (VaR curve of the report)
      penalty_sample.json  penalties on sampled model and real transitions (pyscorepen.diagnostics)
      learning_curve.png, penalty_heatmap.png (cliff)
      tb/               TensorBoard event files (only with --tensorboard)
      report.html       written by `python -m pyscorepen.report <run>`
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from pyscorepen.errors import PyScorePenError

log = logging.getLogger(__name__)

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


class RunFileError(PyScorePenError):
    """A run-folder file that is missing, truncated or corrupt, or saved for other data."""


def read_json(path: Path, what: str) -> dict:
    """A JSON file of a run folder; a cut or corrupt file is a :class:`RunFileError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise RunFileError(f"{path} ({what}) does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path} ({what}) is cut or corrupt: {err}. Restore it, or delete the run folder "
                           "to start over.") from err


def load_torch_file(path: Path, what: str, map_location="cpu", weights_only: bool = True, hint: str = ""):
    """``torch.load`` of a run-folder file; a missing, truncated or corrupt one is a :class:`RunFileError`
    naming the file, what it holds and ``hint`` (how to recover)."""
    import torch
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except FileNotFoundError as err:
        raise RunFileError(f"{path} ({what}) does not exist. {hint}".strip()) from err
    except Exception as err:  # noqa: BLE001 - torch raises many types (EOFError, RuntimeError, pickle errors)
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        raise RunFileError(f"{path} ({what}) cannot be read, it is truncated or corrupt "
                           f"({type(err).__name__}: {first[:200]}). {hint}".strip()) from err


def load_state(module, state: dict, path: Path, what: str, hint: str = "") -> None:
    """``module.load_state_dict(state)``; a state of other shapes or keys is a :class:`RunFileError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFileError(f"{path} ({what}) does not fit this run's model ({first[:300]}). {hint}".strip()) from err


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl. A cut last line (a run killed while writing it) is left out with a
    warning; a corrupt line before it is a :class:`RunFileError`."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == len(lines) - 1:
                log.warning("%s: the last line is cut (%s); it is ignored", path, err)
                break
            raise RunFileError(f"{path} line {i + 1} is corrupt ({err}). Delete that line, or the run "
                               "folder to start over.") from err
        rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
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


# ------------------------------------------------------------------------------ config changes
def flatten(d: dict, prefix: str = "") -> dict:
    """{'cliff': {'dataset_size': 3}} -> {'cliff.dataset_size': 3}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, ignore=()) -> list[str]:
    """'cliff.dataset_size: 2000 → 3000' for every differing field (dotted names), ``ignore`` left out."""
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in ignore or key in ignore:
            continue
        if json.dumps(a.get(key)) != json.dumps(b.get(key)):
            changes.append(f"{key}: {json.dumps(a.get(key, '(absent)'))} → {json.dumps(b.get(key, '(absent)'))}")
    return changes


def trained_steps(run_dir: Path) -> int:
    """Gradient steps a run folder has already recorded (summary.json, else its last metrics row)."""
    run_dir = Path(run_dir)
    steps = 0
    if (run_dir / SUMMARY).exists():
        try:
            steps = int(read_json(run_dir / SUMMARY, "the run summary").get("steps", 0))
        except (RunFileError, AttributeError, TypeError, ValueError) as err:   # rewritten when the run ends
            log.warning("%s is unreadable (%s); counting the steps of %s instead", run_dir / SUMMARY, err, METRICS)
    rows = read_metrics(run_dir)
    return max([steps] + [int(r.get("step", 0)) for r in rows])


# ------------------------------------------------------------------------------ model fingerprints
def dataset_identity(task) -> dict:
    """What identifies a task's offline data: its name, size, dims, source info and a content hash."""
    data = task.dataset
    digest = hashlib.sha256()
    for t in (data.obs, data.actions, data.rewards, data.next_obs, data.terminals):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    source = {k: v for k, v in task.info.items()
              if k in ("dataset_id", "goal", "boxes", "dataset_size", "dataset_seed", "max_action")}
    return {"task": task.name, **source, "num_transitions": len(data), "obs_dim": data.obs_dim,
            "action_dim": data.action_dim, "sha256": digest.hexdigest()[:16]}


def model_fingerprint(kind: str, identity: dict, model_config) -> dict:
    """What a trained model depends on: ``identity`` (:func:`dataset_identity`) and its config."""
    from dataclasses import asdict
    return json.loads(json.dumps({"kind": kind, "dataset": identity, "config": asdict(model_config)}))


def save_model(path: Path, state_dict: dict, fingerprint: dict) -> None:
    """dynamics.pt / score.pt: ``{'fingerprint', 'state_dict'}``, written to a temp file and renamed."""
    import torch
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"fingerprint": fingerprint, "state_dict": state_dict}, tmp)
    tmp.replace(path)


def load_model(path: Path, what: str, fingerprint: dict | None, map_location="cpu", hint: str = "") -> dict:
    """The state dict of a saved model, after checking its fingerprint against ``fingerprint``.

    A mismatch is a :class:`RunFileError` naming each difference; a file saved before fingerprints
    existed (a bare state dict) loads with a warning."""
    saved = load_torch_file(path, what, map_location=map_location, hint=hint)
    if not isinstance(saved, dict):
        raise RunFileError(f"{path} ({what}) does not hold a model state. {hint}".strip())
    if "state_dict" not in saved or "fingerprint" not in saved:
        log.warning("%s has no fingerprint (saved by an older version); cannot check it matches this run", path)
        return saved
    if fingerprint is not None:
        changes = config_changes(saved["fingerprint"], fingerprint)
        if changes:
            raise RunFileError(f"{path} ({what}) was trained for other data or another model config: "
                               + "; ".join(changes[:8]) + (" …" if len(changes) > 8 else "")
                               + f" (saved → this run). {hint}".rstrip())
    return saved["state_dict"]
