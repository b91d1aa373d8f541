"""``python -m pyscorepen.experiments.risky_nav``: CDSA on the risky navigation task (CDSA §5.1, Figs. 3-5).

For each seed: train BC (and optionally IQL) on the risky task's hazard-free offline data, train
CDSA's g, h, I on the same data, then evaluate each base policy -- and the shortest-path policy, the
paper's "search" baseline (Fig. 3b) -- with and without CDSA's correction on the same initial states.
Finished runs are reused. Writes into ``--out``:

* ``results.md`` / ``results.csv``: hazard-entry rate, return, VaR_5 / VaR_10 per base, mean ± std over seeds;
* ``risky_var.png``: VaR curves (percentiles of the sorted episode returns, CDSA Fig. 4), base vs corrected;
* ``risky_trajectories.png``: base trajectories (maroon) crossing the hazard and the corrected ones
  (black), over the learned state-score field drawn as arrows (the direction of h(s, a) at the
  base policy's action a) and the dataset's states (CDSA Figs. 3 and 5).

K1, K2, n are the same for every base and seed (``--k1 --k2 --iterations``); the defaults were picked
by a small ONLINE search (experiments.cdsa_k_search) on seed 0 with the BC base, as the paper tuned its
K per dataset.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pyscorepen import runs
from pyscorepen.config import defaults_for
from pyscorepen.train import run


@dataclass
class RiskyNavArgs:
    out: Path = Path("runs/risky_nav")
    """Folder of the run folders and the results."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (BC / IQL / CDSA) and evaluation seeds."""
    bases: tuple[str, ...] = ("bc", "straight")
    """Base policies: library algorithms trained here (bc, iql, ...) and/or 'straight' (shortest path)."""
    base_steps: int = 3000
    """Gradient steps of each trained base policy."""
    cdsa_steps: int = 10_000
    """CDSA iterations (Table 3: 10k)."""
    k1: float = 1.0
    """K1 (weight of g)."""
    k2: float = 1.0
    """K2 (weight of I(s, s + h))."""
    iterations: int = 3
    """Correction iterations n."""
    episodes: int = 100
    """Evaluation episodes per (base, seed), the same initial states with and without correction."""
    figures: Path | None = None
    """Also copy the two figures here (e.g. docs/figures)."""
    progress: bool = False
    """Progress bars of the training runs."""


def train_runs(args: RiskyNavArgs, seed: int) -> dict[str, Path]:
    folders = {}
    for algo in [b for b in args.bases if b != "straight"] + ["cdsa"]:
        cfg = replace(defaults_for(algo, "risky"), seed=seed, progress=args.progress,
                      steps=args.cdsa_steps if algo == "cdsa" else args.base_steps,
                      out=str(args.out / f"{algo}-s{seed}"), eval_episodes=10)
        cfg.eval_interval = cfg.steps
        if not (Path(cfg.out) / runs.SUMMARY).exists():
            run(cfg)
        folders[algo] = Path(cfg.out)
    return folders


def experiment(args: RiskyNavArgs) -> list[dict]:
    from pyscorepen.correction import evaluate_correction, load_cdsa
    from pyscorepen.tasks.risky import RiskyConfig, straight_line_policy
    rows, curves, shown = [], {}, {}
    for seed in args.seeds:
        folders = train_runs(args, seed)
        cdsa = load_cdsa(folders["cdsa"])
        for base in args.bases:
            policy = straight_line_policy(RiskyConfig()) if base == "straight" else folders[base]
            s = evaluate_correction(policy, folders["cdsa"], args.k1, args.k2, args.iterations, args.episodes,
                                    seed=10_000 * (seed + 1), out=args.out / f"corrected-{base}-s{seed}",
                                    keep_trajectories=seed == args.seeds[0], cdsa=cdsa)
            for label in ("base", "corrected"):
                r = s[label]
                rows.append({"base": base, "seed": seed, "policy": label, "return_mean": r["return_mean"],
                             "hazard_entry_rate": r["hazard_entry_rate"], "hazard_steps_mean": r["hazard_steps_mean"],
                             "var_5": r["var_5"], "var_10": r["var_10"], "var_50": r["var_50"],
                             "final_distance_to_goal_mean": r["final_distance_to_goal_mean"]})
                curves.setdefault((base, label), []).append(s["var_curve"][label])
            curves["percentiles"] = s["var_curve"]["percentiles"]
            if "trajectories" in s:
                shown[base] = (s["trajectories"], cdsa[0], policy)
    write_results(args, rows, curves)
    trajectory_figure(args, shown, args.out / "risky_trajectories.png")
    if args.figures is not None:
        import shutil
        args.figures.mkdir(parents=True, exist_ok=True)
        for name in ("risky_trajectories.png", "risky_var.png"):
            shutil.copyfile(args.out / name, args.figures / name)
    return rows


def write_results(args: RiskyNavArgs, rows: list[dict], curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ("hazard_entry_rate", "return_mean", "var_5", "var_10", "final_distance_to_goal_mean")
    lines = [f"Risky navigation, {len(args.seeds)} seeds x {args.episodes} episodes, CDSA K1 = {args.k1:g}, "
             f"K2 = {args.k2:g}, n = {args.iterations}; mean ± std over seeds.", "",
             "| base | policy | hazard-entry rate | return | VaR_5 | VaR_10 | final dist. to goal |",
             "|---|---|---|---|---|---|---|"]
    for base in args.bases:
        for label in ("base", "corrected"):
            sel = [r for r in rows if r["base"] == base and r["policy"] == label]
            cells = [f"{np.mean([r[c] for r in sel]):.3f} ± {np.std([r[c] for r in sel]):.3f}" for c in cols]
            lines.append(f"| {base} | {'CDSA(' + base + ')' if label == 'corrected' else base} | " + " | ".join(cells) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(args.bases), figsize=(4.6 * len(args.bases), 3.4), squeeze=False)
    for ax, base in zip(axes[0], args.bases):
        for label, color in (("base", "tab:green"), ("corrected", "tab:blue")):
            c = np.asarray(curves[(base, label)])                         # [seeds, percentiles]
            ax.plot(curves["percentiles"], c.mean(0), "o-", ms=3, color=color,
                    label=base if label == "base" else f"CDSA({base})")
            ax.fill_between(curves["percentiles"], c.min(0), c.max(0), color=color, alpha=0.2)
        ax.set_xlabel("percentile n"); ax.set_ylabel("VaR_n (return)"); ax.legend(fontsize=8)
        ax.set_title(f"{base}: mean over {len(args.seeds)} seeds (band: min-max)", fontsize=9)
    fig.tight_layout(); fig.savefig(args.out / "risky_var.png", dpi=120); plt.close(fig)


@torch.no_grad()
def trajectory_figure(args: RiskyNavArgs, shown: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from pyscorepen.correction import load_policy
    from pyscorepen.tasks.risky import RiskyConfig, generate_dataset
    config = RiskyConfig()
    data = generate_dataset(config)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.4 * len(shown), 3.6), squeeze=False)
    xs, ys = np.linspace(-1.2, 1.2, 25), np.linspace(-0.9, 0.9, 19)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=torch.float32)   # [G, 2]
    for ax, (base, (trajectories, cdsa, policy)) in zip(axes[0], shown.items()):
        act = load_policy(policy)[0]
        field = cdsa.state_score.displacement(grid, act(grid)).numpy()                             # [G, 2]
        field = 0.07 * field / np.maximum(np.linalg.norm(field, axis=-1, keepdims=True), 1e-9)      # directions
        ax.scatter(data.obs[::4, 0], data.obs[::4, 1], s=1, color="0.8", label="dataset states")
        for x, y, r in config.hazard_array():
            ax.add_patch(Circle((x, y), r, color="tab:red", alpha=0.3))
        ax.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], color="tab:blue", alpha=0.7, angles="xy",
                  scale_units="xy", scale=1.0, width=0.003)
        for label, color in (("base", "maroon"), ("corrected", "black")):
            for i, traj in enumerate(trajectories[label][:20]):
                ax.plot(traj[:, 0], traj[:, 1], color=color, lw=0.8, alpha=0.7,
                        label=(base if label == "base" else f"CDSA({base})") if i == 0 else None)
        ax.plot(*config.start, "o", color="tab:blue", ms=7); ax.plot(*config.goal, "*", color="gold", ms=14, mec="k")
        ax.set_xlim(-1.25, 1.25); ax.set_ylim(-0.95, 0.95); ax.set_aspect("equal")
        ax.set_title(f"{base} vs CDSA({base}); arrows: direction of h(s, {base}(s))", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout(); fig.savefig(path, dpi=130); plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import tyro
    args = tyro.cli(RiskyNavArgs, args=argv, description=__doc__)
    args.out.mkdir(parents=True, exist_ok=True)
    experiment(args)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
