"""CDSA test-time correction of a trained policy, evaluated against the uncorrected one.

``evaluate_correction(base, cdsa_run, ...)`` loads the CDSA networks of a ``--algo cdsa`` run
folder, wraps the base policy (a run folder of any algorithm of the library, or any callable
obs [B, S] -> actions [B, A]) in :class:`pyscorepen.algos.cdsa.CorrectedPolicy` (CDSA Algorithm 2,
Eq. 10) and evaluates both on the same initial states, all episodes stepped together so the
policy and the correction run batched. It reports return, normalized score and the VaR curve
(the n-th percentile of the sorted episode returns, CDSA Fig. 4) of each, and writes
``summary.json`` and ``var_curve.png`` into ``out``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


from pyscorepen import runs
from pyscorepen.algos.cdsa import CDSA, CorrectedPolicy
from pyscorepen.errors import PyScorePenError
from pyscorepen.evaluation import evaluate_policy
from pyscorepen.evaluation_metrics import value_at_risk

VAR_CURVE_PERCENTILES: tuple[float, ...] = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
"""Percentiles of the VaR curve (CDSA Fig. 4 plots VaR over the percentile)."""


def load_cdsa(run_dir: str | Path):
    """(CDSA agent, its Trainer) from a ``--algo cdsa`` run folder."""
    from pyscorepen.evaluate import load_trainer
    trainer = load_trainer(Path(run_dir))
    if not isinstance(trainer.agent, CDSA):
        raise PyScorePenError(f"{run_dir} is a '{trainer.config.algo}' run, not a CDSA run (train one with "
                              f"python -m pyscorepen.train --algo cdsa --task {trainer.config.task})")
    return trainer.agent, trainer


def load_policy(base: str | Path | Callable) -> tuple[Callable, str, object]:
    """(policy obs -> deterministic action, a name, its Trainer or None) from a run folder or a callable."""
    if callable(base):
        return base, getattr(base, "__name__", type(base).__name__), None
    from pyscorepen.evaluate import load_trainer
    trainer = load_trainer(Path(base))
    if not trainer.algorithm.has_policy:
        raise PyScorePenError(f"{base} is a '{trainer.config.algo}' run: it has no policy to correct")
    agent = trainer.agent
    return (lambda obs: agent.act(obs.to(trainer.device), deterministic=True)), Path(base).name, trainer


def evaluate_correction(base: str | Path | Callable, cdsa_run: str | Path, k1: float | None = None,
                        k2: float | None = None, iterations: int | None = None, episodes: int = 10,
                        seed: int = 10_000, out: str | Path | None = None, write: bool = True,
                        keep_trajectories: bool = False, cdsa=None) -> dict:
    """Base vs CDSA-corrected policy on the CDSA run's task. K1, K2 and n default to the CDSA run's
    config (the per-dataset values of configs/defaults.toml, CDSA Table 2). ``cdsa``: an already
    loaded ``(agent, trainer)`` pair (sweeps load it once). Returns the summary (also written)."""
    agent, trainer = cdsa if cdsa is not None else load_cdsa(cdsa_run)
    cfg = trainer.config.cdsa
    k1, k2 = cfg.k1 if k1 is None else k1, cfg.k2 if k2 is None else k2
    iterations = cfg.iterations if iterations is None else iterations
    policy, name, base_trainer = load_policy(base)
    task = trainer.task
    if base_trainer is not None and base_trainer.config.task != trainer.config.task:
        print(f"[pyscorepen] note: the base policy was trained on {base_trainer.config.task}, CDSA on "
              f"{trainer.config.task}; evaluating on the latter's environment")
    corrected = CorrectedPolicy(policy, agent, k1, k2, iterations)
    results = {}
    for label, act in (("base", policy), ("corrected", corrected)):
        result = evaluate_policy(act, task.make_env, episodes, seed=seed, keep_trajectories=True)
        results[label] = result
    summary = {"task": trainer.config.task, "base_run": str(base) if not callable(base) else name,
               "cdsa_run": str(cdsa_run), "k1": k1, "k2": k2, "iterations": iterations, "episodes": episodes,
               "seed": seed}
    for label, result in results.items():
        summary[label] = runs.summarize(result, task)
    summary["var_curve"] = {"percentiles": list(VAR_CURVE_PERCENTILES),
                            **{label: list(value_at_risk(r.returns, VAR_CURVE_PERCENTILES).values())
                               for label, r in results.items()}}
    if write:
        out = Path(out) if out is not None else default_out(cdsa_run, name, k1, k2, iterations)
        out.mkdir(parents=True, exist_ok=True)
        (out / runs.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        var_curve_plot(summary, out / "var_curve.png")
        summary["out"] = str(out)
    if keep_trajectories:
        summary["trajectories"] = {label: r.trajectories for label, r in results.items()}
    return summary


def default_out(cdsa_run: str | Path, name: str, k1: float, k2: float, iterations: int) -> Path:
    return Path(cdsa_run) / "corrected" / f"{name}-k1_{k1:g}-k2_{k2:g}-n{iterations}"


def var_curve_plot(summary: dict, path: Path, ax=None) -> None:
    """VaR (n-th percentile of the sorted episode returns) vs n, base vs corrected (CDSA Fig. 4)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = summary["var_curve"]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(4.5, 3.3))
    ax.plot(curve["percentiles"], curve["base"], "o-", color="tab:green", ms=3, label="base")
    ax.plot(curve["percentiles"], curve["corrected"], "o-", color="tab:blue", ms=3,
            label=f"CDSA (K1={summary['k1']:g}, K2={summary['k2']:g}, n={summary['iterations']})")
    ax.set_xlabel("percentile n")
    ax.set_ylabel("VaR (return)")
    ax.set_title(f"{summary['task']}: {summary['episodes']} episodes", fontsize=9)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
