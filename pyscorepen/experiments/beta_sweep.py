"""``python -m pyscorepen.experiments.beta_sweep``: choose ScorePen-MORL's β on one dataset, by a stated rule.

    python -m pyscorepen.experiments.beta_sweep --task pyscorepen/hopper/medium-replay-v0 \\
        --betas 0.0025 0.005 0.01 0.02 --seeds 0 --steps 50000 --out runs/beta_sweep [--parallel 2]

Selection rule: pick the β with the highest mean final normalized score (over seeds) on this one
dataset; a β whose mean is within one std (over seeds) of the best one's counts as tied, and among
tied values the larger β (more conservative) wins. The chosen β is then used unchanged on every
dataset: no per-dataset peeking at test returns.

Units: the library's β is in normalized (s, a) units, β_ours = β_paper · σ² with the score model's
σ = 0.1 (``--beta`` in pyscorepen/config.py), so the paper's search range [0.25, 2] (ScorePen §5.1)
is [0.0025, 0.02] here.

Every β is one suite algorithm ``scorepen-beta<β>`` (= ``--algo scorepen --beta β`` plus the
per-dataset defaults of scorepen), run by :mod:`pyscorepen.suite` into ``<out>/scorepen-beta<β>/
<dataset>/seed<s>``; finished runs are skipped, so rerunning the command resumes the sweep. All runs
share one dynamics ensemble and score model: ``--pretrained-from``, or one trained once into
``<out>/pretrained``. Writes ``beta_sweep.md``, ``beta_sweep.csv`` and ``beta_sweep.png`` (final
normalized score, mean ± std over seeds, and the mean model-data penalty vs β) into ``--out``,
besides the suite's results.md / results.csv / curves/.
"""
from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyscorepen.errors import DEBUG_HELP, PyScorePenError, cli_main

SELECTION_RULE = (
    "Selection rule: the β with the highest mean final normalized score over seeds on this one dataset; "
    "values whose mean is within one std (over seeds) of the best mean are tied, and among tied values the "
    "larger β (more conservative) is chosen. The chosen β is used unchanged on every dataset (no "
    "per-dataset peeking).")


@dataclass
class BetaSweepArgs:
    task: str
    """The one dataset of the sweep (anything the train CLI's --task accepts)."""
    betas: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02)
    """β values (library units, = paper β · σ², σ = 0.1: the paper's [0.25, 2]). Range: [0, inf), each value."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds per β. Range: [0, 4294967295], each value."""
    steps: int = 50_000
    """Gradient steps per run. Range: [1, inf)."""
    out: Path = Path("runs/beta_sweep")
    """Sweep folder: one run folder per (β, seed), the shared models and the results."""
    pretrained_from: str | None = None
    """Run folder of this task's trained dynamics.pt / score.pt (e.g. the grid's runs/grid/pretrained/<task>);
    None: trained once into <out>/pretrained."""
    parallel: int = 1
    """Runs trained at the same time (the suite's --parallel). Range: [1, inf)."""
    threads_per_run: int | None = None
    """Torch threads of each run (the suite's --threads-per-run; None: the cores divided by
    --parallel). Set 1 when other jobs share the machine. Range: [1, inf)."""
    eval_interval: int | None = None
    """Steps between evaluations (None: the train CLI's default). Range: [1, inf)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (None: the train CLI's default). Range: [1, inf)."""
    extra_args: str = ""
    """More train CLI arguments for every run and the shared pretraining, one shell-quoted string."""


def algo_name(beta: float) -> str:
    return f"scorepen-beta{beta:g}"


def sweep_defaults(betas: tuple[float, ...]) -> dict:
    """The packaged defaults with one preset per β: ``scorepen-beta<β>`` = scorepen with --beta β,
    inheriting scorepen's per-dataset tables (a β in those tables is replaced by the sweep's)."""
    from pyscorepen.configs import load_defaults
    defaults = load_defaults()
    for beta in betas:
        name = algo_name(beta)
        defaults.setdefault("presets", {})[name] = ["--algo", "scorepen", "--beta", repr(float(beta))]
        defaults[name] = {key: {**table, "beta": float(beta)} for key, table in defaults.get("scorepen", {}).items()}
        defaults.setdefault("inherit", {})[name] = "scorepen"
    return defaults


def suite_config(args: BetaSweepArgs, pretrained: str | None):
    from pyscorepen.suite import SuiteConfig
    extra = ([f"--pretrained-from {shlex.quote(pretrained)}"] if pretrained else []) + \
        ([args.extra_args] if args.extra_args else [])
    return SuiteConfig(algos=tuple(algo_name(b) for b in args.betas), tasks=(args.task,), seeds=args.seeds,
                       out=str(args.out), steps=args.steps, eval_interval=args.eval_interval,
                       eval_episodes=args.eval_episodes, extra_args=" ".join(extra), parallel=args.parallel,
                       threads_per_run=args.threads_per_run)


def pretrain_shared(args: BetaSweepArgs) -> str:
    """``<out>/pretrained``: this task's dynamics ensemble and score model, trained once (resumed if cut)."""
    folder = args.out / "pretrained"
    if (folder / "dynamics.pt").exists() and (folder / "score.pt").exists():
        return str(folder)
    cmd = [sys.executable, "-m", "pyscorepen.train", "--algo", "scorepen", "--task", args.task, "--pretrain-only",
           "--out", str(folder), "--no-progress", *shlex.split(args.extra_args)]
    print(f"[beta_sweep] training the shared models: {shlex.join(cmd)}", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise PyScorePenError(f"the shared pretraining failed (exit {result.returncode}): {tail}")
    return str(folder)


LATE_EVALS = 5
"""Evaluations averaged by the table's robustness column (the rule itself reads the final one)."""


def _late_score(rows: list[dict], metric: str) -> float | None:
    """Mean of a run's last :data:`LATE_EVALS` evaluations of ``metric`` (its metrics.jsonl rows):
    less noisy than the final one where learning curves oscillate (hopper's do by tens of points
    between evaluations)."""
    values = [float(r[metric]) for r in rows if r.get(metric) is not None]
    return float(np.mean(values[-LATE_EVALS:])) if values else None


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(values)) if values else None


def sweep_rows(args: BetaSweepArgs, config) -> list[dict]:
    """One row per β: final normalized score over finished seeds, and the penalty on model data."""
    from pyscorepen.suite import SUMMARY, run_dir
    rows = []
    for beta in args.betas:
        runs_done = [run_dir(config, algo_name(beta), args.task, s) for s in args.seeds]
        runs_done = [r for r in runs_done if (r / SUMMARY).is_file()]
        summaries = [json.loads((r / SUMMARY).read_text()) for r in runs_done]
        scores = [s.get("normalized_score_mean") for s in summaries]
        metric = "normalized_score_mean" if scores and all(v is not None for v in scores) else "return_mean"
        finals = [float(s[metric]) for s in summaries if s.get(metric) is not None]
        from pyscorepen.runs import read_metrics
        metrics = [[r for r in read_metrics(run) if "step" in r] for run in runs_done]   # one read per run
        last = [rows[-1] if rows else {} for rows in metrics]
        late = [v for v in (_late_score(rows, metric) for rows in metrics) if v is not None]
        samples = []
        for r in runs_done:
            path = r / "penalty_sample.json"
            samples.append(json.loads(path.read_text()) if path.is_file() else {})
        sigma = 0.1
        if runs_done:
            sigmas = json.loads((runs_done[0] / "config.json").read_text()).get("score", {}).get("sigmas") or [0.1]
            sigma = min(sigmas)
        rows.append({
            "beta": beta, "beta_paper_units": beta / sigma ** 2, "seeds_done": len(finals),
            "metric": metric,
            "score_mean": float(np.mean(finals)) if finals else None,
            "score_std": float(np.std(finals)) if finals else None,
            "late_score_mean": float(np.mean(late)) if late else None,
            "late_score_std": float(np.std(late)) if late else None,
            "model_penalty_mean": _mean(m.get("rollout/penalty_mean") for m in last),
            "raw_score_penalty_mean": _mean(m.get("rollout/raw_score_mean") for m in last),
            "sample_model_penalty_mean": _mean(_mean(s.get("model", {}).get("stored", [])) for s in samples),
            "sample_real_penalty_mean": _mean(_mean(s.get("real", {}).get("stored", [])) for s in samples),
        })
    return rows


def select_beta(rows: list[dict]) -> tuple[float | None, str]:
    """The β of :data:`SELECTION_RULE` among rows with a score, and why."""
    scored = [r for r in rows if r["score_mean"] is not None]
    if not scored:
        return None, "no finished run"
    best = max(scored, key=lambda r: (r["score_mean"], r["beta"]))
    tied = [r for r in scored if r["score_mean"] >= best["score_mean"] - best["score_std"]]
    chosen = max(tied, key=lambda r: r["beta"])
    why = f"highest mean: β = {best['beta']:g} ({best['score_mean']:.1f} ± {best['score_std']:.1f})"
    if chosen is not best:
        tied_betas = ", ".join(format(r["beta"], "g") for r in sorted(tied, key=lambda r: r["beta"]))
        why += f"; tied within one std: {tied_betas}, the largest is chosen"
    return chosen["beta"], why


def write_results(args: BetaSweepArgs, rows: list[dict], chosen: float | None, why: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fields = list(rows[0]) + ["chosen"]
    with open(args.out / "beta_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{**r, "chosen": r["beta"] == chosen} for r in rows])
    fmt = lambda v, spec=".3g": "–" if v is None else format(v, spec)
    metric = rows[0]["metric"] if rows else "normalized_score_mean"
    lines = [f"# ScorePen-MORL β sweep on {args.task}", "",
             f"{args.steps} gradient steps, seeds {' '.join(map(str, args.seeds))}; score = final "
             f"{'normalized score' if metric == 'normalized_score_mean' else 'return'}, "
             "mean ± std over seeds.",
             "",
             f"| β | β (paper units) | seeds | score | last {LATE_EVALS} evaluations | model-data penalty "
             "(rollout/penalty_mean) | ‖h‖² on model data (rollout/raw_score_mean) | penalty sample: model / real "
             "| chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        score = "–" if r["score_mean"] is None else f"{r['score_mean']:.1f} ± {r['score_std']:.1f}"
        late = "–" if r.get("late_score_mean") is None else f"{r['late_score_mean']:.1f} ± {r['late_score_std']:.1f}"
        lines.append(f"| {r['beta']:g} | {r['beta_paper_units']:g} | {r['seeds_done']} | {score} | {late} | "
                     f"{fmt(r['model_penalty_mean'])} | {fmt(r['raw_score_penalty_mean'])} | "
                     f"{fmt(r['sample_model_penalty_mean'])} / {fmt(r['sample_real_penalty_mean'])} | "
                     f"{'**yes**' if r['beta'] == chosen else ''} |")
    verdict = f"Chosen: β = {chosen:g} ({why})." if chosen is not None else f"Chosen: none ({why})."
    lines += ["", SELECTION_RULE, "", verdict, "",
              f"Last {LATE_EVALS} evaluations: each seed's mean over its last {LATE_EVALS} evaluations, then mean ± "
              "std over seeds; a robustness check beside the rule's final score, not used by the rule.",
              "",
              "Penalties: last logged rollout round, mean over seeds (reward units, β applied; ‖h‖² unweighted); "
              "the penalty sample is penalty_sample.json's stored penalty on model and on real transitions."]
    (args.out / "beta_sweep.md").write_text("\n".join(lines) + "\n")

    done = [r for r in rows if r["score_mean"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if done:
        axes[0].errorbar([r["beta"] for r in done], [r["score_mean"] for r in done],
                         yerr=[r["score_std"] for r in done], marker="o", capsize=3)
        if chosen is not None:
            axes[0].axvline(chosen, color="gray", ls="--", label=f"chosen β = {chosen:g}")
            axes[0].legend(fontsize=8)
        pen = [r for r in done if r["model_penalty_mean"] is not None]
        axes[1].plot([r["beta"] for r in pen], [r["model_penalty_mean"] for r in pen], marker="o")
    axes[0].set_ylabel("final normalized score" if metric == "normalized_score_mean" else "final return")
    axes[1].set_ylabel("mean model-data penalty")
    positive = [r["beta"] for r in rows if r["beta"] > 0]
    for ax in axes:
        if positive and len(positive) < len(rows):   # β = 0 (no penalty) in the sweep: linear around 0
            ax.set_xscale("symlog", linthresh=min(positive))
        else:
            ax.set_xscale("log")
        ax.set_xlabel("β (library units)")
    fig.suptitle(f"ScorePen-MORL β sweep, {args.task}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "beta_sweep.png", dpi=100)
    plt.close(fig)


def beta_sweep(args: BetaSweepArgs) -> dict:
    from pyscorepen.suite import run_suite
    from pyscorepen.validation import check_ranges, output_dir_problems, raise_problems
    check_ranges(args)
    raise_problems(output_dir_problems(args.out))
    if not args.betas or len({algo_name(b) for b in args.betas}) != len(args.betas) or not args.seeds:
        raise PyScorePenError(f"--betas must be distinct values and --seeds not empty (got --betas "
                              f"{' '.join(map(str, args.betas))} --seeds {' '.join(map(str, args.seeds))})")
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.pretrained_from or pretrain_shared(args)
    config = suite_config(args, pretrained)
    result = run_suite(config, defaults=sweep_defaults(args.betas))
    rows = sweep_rows(args, config)
    chosen, why = select_beta(rows)
    write_results(args, rows, chosen, why)
    return {"rows": rows, "chosen": chosen, "why": why, "failed": result["failed"]}


def main(argv: list[str] | None = None) -> int:
    import tyro

    def go(argv: list[str]) -> int:
        args = tyro.cli(BetaSweepArgs, args=argv, description=(__doc__ or "") + DEBUG_HELP)
        result = beta_sweep(args)
        print((args.out / "beta_sweep.md").read_text())
        return 1 if result["failed"] else 0
    return cli_main(go, argv)


if __name__ == "__main__":
    sys.exit(main())
