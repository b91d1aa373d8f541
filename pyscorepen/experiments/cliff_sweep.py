"""``python -m pyscorepen.experiments.cliff_sweep``: ScorePen Fig. 2b on the cliff task.

Sweeps the penalty coefficient of ScorePen-MORL and MOPO over the paper's grid
beta in {0.25, 0.5, ..., 2} (each algorithm's coefficient is the grid value times its
``*_unit``; ScorePen's penalty ||h||^2 is in normalized units of size ~1/sigma^2, hence
the default unit sigma^2 = 0.01), for several seeds. The dynamics ensemble and score model
are trained once per seed and shared by all coefficients. Finished runs are skipped, so an
interrupted sweep continues where it stopped. Writes ``sweep.csv``, ``sweep.md`` and
``sweep.png`` (return and final distance to the goal vs beta) into ``--out``.
"""
from __future__ import annotations

import csv
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pyscorepen import runs
from pyscorepen.config import TrainConfig, defaults_for
from pyscorepen.errors import DEBUG_HELP, TrainingInterrupted, cli_main
from pyscorepen.train import pretrain_only, run


@dataclass
class SweepArgs:
    out: Path = Path("runs/cliff_sweep")
    """Folder holding one run folder per (algo, beta, seed) and the aggregated results."""
    grid: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    """The paper's grid of penalty coefficients (Fig. 2b). Range: [0, inf), each value."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds. Range: [0, 4294967295], each value."""
    algos: tuple[str, ...] = ("scorepen", "mopo")
    """Algorithms compared."""
    scorepen_unit: float = 0.01
    """ScorePen beta = grid value * this (sigma_min^2 of the score model). Range: [0, inf)."""
    mopo_unit: float = 1.0
    """MOPO lambda = grid value * this. Range: [0, inf)."""
    steps: int = 20_000
    """Gradient steps per run. Range: [1, inf)."""
    eval_episodes: int = 10
    """Episodes of the final evaluation. Range: [1, inf)."""


def run_configs(args: SweepArgs, base: TrainConfig) -> list[tuple[str, float, float, TrainConfig]]:
    """(algo, grid value, coefficient, config) of every run of the sweep."""
    out = []
    for seed in args.seeds:
        for algo in args.algos:
            for value in args.grid:
                coef = value * (args.scorepen_unit if algo == "scorepen" else args.mopo_unit)
                cfg = replace(base, algo=algo, seed=seed, steps=args.steps, eval_episodes=args.eval_episodes,
                              out=str(args.out / f"{algo}-beta{value:g}-s{seed}"),
                              pretrained_from=str(args.out / f"pretrained-s{seed}"),
                              **({"beta": coef} if algo == "scorepen" else {"mopo_lambda": coef}))
                out.append((algo, value, coef, cfg))
    return out


def validate(args: SweepArgs, base: TrainConfig) -> None:
    """Every run's config, before the sweep writes anything (the shared folders do not exist yet)."""
    from pyscorepen.validation import check_ranges, output_dir_problems, raise_problems, validate_train_config
    check_ranges(args)
    raise_problems(output_dir_problems(args.out))
    for _, _, _, cfg in run_configs(args, base):
        validate_train_config(replace(cfg, pretrained_from=None))


def sweep(args: SweepArgs, base: TrainConfig | None = None) -> list[dict]:
    base = base or defaults_for("scorepen", "cliff")
    validate(args, base)
    for seed in args.seeds:   # dynamics + score, trained once per seed and shared by its runs
        shared = args.out / f"pretrained-s{seed}"
        if not ((shared / runs.DYNAMICS).exists() and (shared / runs.SCORE).exists()):
            pretrain_only(replace(base, algo="scorepen", seed=seed, out=str(shared), pretrained_from=None))
    rows = []
    for algo, value, coef, cfg in run_configs(args, base):
        summary_path = Path(cfg.out) / runs.SUMMARY
        summary = runs.read_json(summary_path, "the run summary") if summary_path.exists() else run(cfg)
        rows.append({"algo": algo, "beta": value, "coef": coef, "seed": cfg.seed, **{
            k: summary[k] for k in ("return_mean", "normalized_score_mean", "final_distance_to_goal_mean")}})
    write_results(args, rows)
    return rows


def write_results(args: SweepArgs, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| algo | beta (grid) | coef | return | normalized | final dist. to goal |", "|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for algo in args.algos:
        sel = [r for r in rows if r["algo"] == algo]
        betas = sorted({r["beta"] for r in sel})
        stats = []
        for b in betas:
            rs = [r for r in sel if r["beta"] == b]
            ret = np.array([r["return_mean"] for r in rs]); dist = np.array([r["final_distance_to_goal_mean"] for r in rs])
            norm = np.array([r["normalized_score_mean"] for r in rs])
            stats.append((ret.mean(), ret.std(), dist.mean(), dist.std()))
            lines.append(f"| {algo} | {b:g} | {rs[0]['coef']:g} | {ret.mean():.2f} ± {ret.std():.2f} | "
                         f"{norm.mean():.1f} ± {norm.std():.1f} | {dist.mean():.3f} ± {dist.std():.3f} |")
        s = np.array(stats)
        axes[0].errorbar(betas, s[:, 0], yerr=s[:, 1], marker="o", capsize=3, label=algo)
        axes[1].errorbar(betas, s[:, 2], yerr=s[:, 3], marker="o", capsize=3, label=algo)
    axes[0].set_ylabel("return"); axes[1].set_ylabel("final distance to goal")
    for ax in axes:
        ax.set_xlabel("penalty coefficient (paper grid)"); ax.legend()
    fig.tight_layout(); fig.savefig(args.out / "sweep.png", dpi=120); plt.close(fig)
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import tyro

    def go(argv: list[str]) -> int:
        args = tyro.cli(SweepArgs, args=argv, description=__doc__ + DEBUG_HELP)
        try:
            sweep(args)
        except TrainingInterrupted as stop:   # the current run checkpointed; finished runs are kept
            print(f"{stop}; checkpoint saved in {stop.run_dir}. Resume with: "
                  f"python -m pyscorepen.experiments.cliff_sweep {shlex.join(argv)}".rstrip(), file=sys.stderr)
            return stop.exit_code
        print((args.out / "sweep.md").read_text())
        return 0
    return cli_main(go, argv)


if __name__ == "__main__":
    sys.exit(main())
