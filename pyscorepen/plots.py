"""Plots written into run folders: learning curves and the cliff penalty heatmaps (ScorePen Fig. 2c-e)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pyscorepen import runs  # noqa: E402


def learning_curve(run_dir: Path) -> None:
    rows = runs.read_metrics(run_dir)
    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    key = "normalized_score" if rows[0].get("normalized_score_mean") is not None else "return"
    mean = np.array([r[f"{key}_mean"] for r in rows])
    std = np.array([r[f"{key}_std"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(steps, mean)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("gradient step")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(Path(run_dir) / runs.CURVE, dpi=120)
    plt.close(fig)


@torch.no_grad()
def penalty_fields(trainer, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Raw penalties on states ``grid`` [G, 2] with the trained policy's deterministic action."""
    obs = torch.as_tensor(grid, dtype=torch.float32, device=trainer.device)
    actions = trainer.agent.act(obs, deterministic=True)
    fields = {}
    if trainer.score is not None:
        fields["score  ||h(s,a)||^2"] = trainer.score.penalty(obs, actions)
    if trainer.algorithm.uses_model:
        _, std = trainer.dynamics.predict(obs, actions)                        # [E, G, S+1]
        fields["MOPO  max_i ||sigma_i(s,a)||"] = std.norm(dim=-1).amax(0)
    return {k: v.cpu().numpy() for k, v in fields.items()}


def cliff_penalty_maps(trainer, trajectories: list[np.ndarray], path: Path, resolution: int = 121) -> None:
    """Penalty heatmap(s) over the plane, data region outlined, goal and eval trajectories drawn."""
    boxes = np.asarray(trainer.task.info["boxes"])
    goal = np.asarray(trainer.task.info["goal"])
    lo, hi = boxes[:, :2].min(0) - 0.5, boxes[:, 2:].max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    fields = penalty_fields(trainer, grid)
    if not fields:
        fields = {"(no penalty)": np.zeros(len(grid))}
    fig, axes = plt.subplots(1, len(fields), figsize=(5.2 * len(fields), 4.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], fields.items()):
        v = values.reshape(resolution, resolution)
        positive = v[v > 0]
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max()) if positive.size else None
        im = ax.imshow(np.maximum(v, 1e-12) if norm else v, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                       norm=norm, cmap="viridis", aspect="equal")
        fig.colorbar(im, ax=ax, fraction=0.046)
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5, ls="--"))
        for traj in trajectories:
            ax.plot(traj[:, 0], traj[:, 1], color="tab:red", lw=1, alpha=0.8)
            ax.plot(traj[-1, 0], traj[-1, 1], "o", color="tab:red", ms=3)
        ax.plot(*goal, marker="*", color="gold", ms=14, mec="black")
        ax.set_title(f"{trainer.config.algo}: {name}", fontsize=9)
        ax.set_xlabel("x"); ax.set_ylabel("y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
