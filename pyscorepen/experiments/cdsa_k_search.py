"""``python -m pyscorepen.experiments.cdsa_k_search RUN --cdsa CDSA_RUN``: grid search of CDSA's (K1, K2).

Evaluates RUN's policy corrected by CDSA (Algorithm 2, Eq. 10) for every (K1, K2, n) of the grid,
and the uncorrected policy once, all on the same initial states, and writes ``k_search.csv``,
``k_search.md`` (sorted by ``--metric``) and ``k_search.png`` (the metric over the K1 x K2 grid).

This is ONLINE tuning: every grid point is scored by rolling the policy out in the real
environment, as the CDSA paper's per-dataset choice of K1, K2 (its Table 2) was. A result picked
this way is tuned on the evaluation environment; report it as such, not as an offline method.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from pyscorepen import runs
from pyscorepen.errors import report


@dataclass
class KSearchArgs:
    run_dir: tyro.conf.Positional[Path]
    """Run folder of the base policy (any algorithm of the library)."""
    cdsa: Path
    """Run folder of ``python -m pyscorepen.train --algo cdsa`` on the same task."""
    k1: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
    """Grid of K1 (weight of g(s, a))."""
    k2: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
    """Grid of K2 (weight of I(s, s + h(s, a)))."""
    iterations: tuple[int, ...] = (1,)
    """Grid of correction iterations n."""
    episodes: int = 10
    """Online evaluation episodes per grid point (the same initial states for all)."""
    seed: int = 10_000
    """Seed of the evaluation episodes."""
    metric: Literal["return_mean", "var_5", "var_10", "var_25"] = "return_mean"
    """Column the table is sorted by and the heatmap shows."""
    out: Path | None = None
    """Output folder (default: CDSA_RUN/k_search/<run name>)."""


def k_search(args: KSearchArgs) -> dict:
    from pyscorepen.algos.cdsa import CorrectedPolicy
    from pyscorepen.correction import load_cdsa, load_policy
    from pyscorepen.evaluation import evaluate_policy
    agent, trainer = load_cdsa(args.cdsa)
    policy, name, _ = load_policy(args.run_dir)
    out = args.out or Path(args.cdsa) / "k_search" / name
    out.mkdir(parents=True, exist_ok=True)

    def score(act) -> dict:
        result = evaluate_policy(act, trainer.task.make_env, args.episodes, seed=args.seed, keep_trajectories=True)
        stats = runs.summarize(result, trainer.task)
        return {k: v for k, v in stats.items() if isinstance(v, (int, float)) and v is not None}

    rows = [{"k1": 0.0, "k2": 0.0, "iterations": 0, **score(policy)}]          # the base policy
    for n in args.iterations:
        for k1 in args.k1:
            for k2 in args.k2:
                if k1 == 0 and k2 == 0:
                    continue                                                   # the identity: same as base
                rows.append({"k1": k1, "k2": k2, "iterations": n,
                             **score(CorrectedPolicy(policy, agent, k1, k2, n))})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "k_search.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    shown = [k for k in ("return_mean", "normalized_score_mean", "var_5", "var_10", "var_25",
                         "hazard_entry_rate", "final_distance_to_goal_mean") if k in keys]
    ranked = sorted(rows, key=lambda r: -r.get(args.metric, float("-inf")))
    lines = [f"CDSA K search (online evaluation, {args.episodes} episodes each): base `{name}`, "
             f"CDSA `{args.cdsa}`, task `{trainer.config.task}`. Row n = 0 is the uncorrected policy.", "",
             "| K1 | K2 | n | " + " | ".join(shown) + " |", "|---" * (3 + len(shown)) + "|"]
    lines += ["| " + " | ".join([f"{r['k1']:g}", f"{r['k2']:g}", str(r["iterations"])] +
                                [f"{r[k]:.3f}" if k in r else "" for k in shown]) + " |" for r in ranked]
    (out / "k_search.md").write_text("\n".join(lines) + "\n")
    heatmap(rows, args, out / "k_search.png")
    best = ranked[0]
    return {"out": str(out), "best": best, "base": rows[0], "grid_points": len(rows) - 1}


def heatmap(rows: list[dict], args: KSearchArgs, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    n = args.iterations[0]
    grid = np.full((len(args.k2), len(args.k1)), np.nan)
    for r in rows:
        if r["iterations"] in (0, n) and r["k1"] in args.k1 and r["k2"] in args.k2:
            grid[args.k2.index(r["k2"]), args.k1.index(r["k1"])] = r.get(args.metric, np.nan)
    fig, ax = plt.subplots(figsize=(1.2 * len(args.k1) + 2, 1.0 * len(args.k2) + 1.5))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(len(args.k1)), [f"{k:g}" for k in args.k1])
    ax.set_yticks(range(len(args.k2)), [f"{k:g}" for k in args.k2])
    ax.set_xlabel("K1"); ax.set_ylabel("K2")
    ax.set_title(f"{args.metric} (n = {n}; K1 = K2 = 0: base)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(KSearchArgs, args=argv, description=__doc__)
    return report(k_search, args)


if __name__ == "__main__":
    sys.exit(main())
