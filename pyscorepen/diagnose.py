"""``python -m pyscorepen.diagnose RUN [--out DIR] [--starts N] [--horizon H]``: why did a run fail?

Three views of a run folder (finished, or in progress: its newest checkpoint is used), written to
``DIR/diagnose.json`` (default ``RUN/diagnose/``) with one PNG each:

(a) **Q and penalties over steps** (``q_over_steps.png``, ``penalties_over_steps.png``), from
    ``metrics.jsonl``: ``q_mean`` against the bounds ``r_min/(1-γ)`` and ``r_max/(1-γ)`` of the
    dataset's rewards (a Q outside them is over- or under-estimated: diverging or exploited), the
    critic loss, and every penalty statistic (``penalty/*``, ``rollout/*penalty*``).
(b) **Penalty on real vs model data** (``penalty_real_vs_model.png``), from ``penalty_sample.json``
    (or computed from the checkpoint's model buffer when the run has not finished): per penalty
    component, summary statistics of both sides, P(model > real) and overlaid histograms. A
    penalty that separates the data support from model excursions has P(model > real) well above 0.5.
(c) **Model error along rollouts** (``model_error.png``): from ``--starts`` dataset states, the
    run's policy is rolled through the learned dynamics ensemble for ``--horizon`` steps, exactly as
    training rollouts are (a ~ π(ŝ) sampled, one random elite per row and step, the Gaussian sample
    of its output; :meth:`EnsembleDynamics.step`); the *same actions* are replayed in the true
    simulator from the same start states (:func:`pyscorepen.tasks.sim_state.set_state_from_obs`).
    Per step k = 1..H: mean and median of ||ŝ_k − s_k|| in units of the dataset's per-dimension
    state std (compounding error), of the one-step error ||f̂(s_{k-1}, a_k) − s_k|| from the *true*
    previous state, and of |r̂_k − r_k|; the fraction of true episodes (and of model rollouts, by the
    task's termination function) terminated by step k; the mean signed reward bias r̂_k − r_k
    (> 0: the model promises more than the simulator gives, what an exploiting policy seeks). A row
    stops at the first termination on either side; ``active`` counts the rows behind each step.

Read-only: nothing in the run folder changes except the default output folder RUN/diagnose (a
corrupt checkpoint is not moved aside).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from pyscorepen import runs
from pyscorepen.errors import DEBUG_HELP, PyScorePenError, cli_main

DIAGNOSE_JSON = "diagnose.json"
Q_KEYS = ("q_mean", "loss/critic", "alpha", "combo/q_gap")
SCORE_KEYS = ("normalized_score_mean", "return_mean")


@dataclass
class DiagnoseArgs:
    run_dir: tyro.conf.Positional[Path]
    """A run folder written by ``python -m pyscorepen.train`` (finished or in progress)."""
    out: Path | None = None
    """Folder for diagnose.json and the PNGs (default: RUN/diagnose)."""
    starts: int = 200
    """Dataset start states of the model-error rollouts. Range: [1, inf)."""
    horizon: int | None = None
    """Steps of the model-error rollouts (default: the run's rollout.length, at least 10). Range: [1, inf)."""
    seed: int = 0
    """Seed of the start states, the policy's actions and the model's samples. Range: [0, 4294967295]."""
    skip_model_error: bool = False
    """Only (a) and (b): no model or simulator rollouts (no need for the dataset or dynamics.pt)."""


# ------------------------------------------------------------------------------ (a) metrics over steps
def metric_series(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{key: {"steps": [...], "values": [...]}} of the Q, score and penalty keys of metrics.jsonl rows."""
    keys = sorted({k for r in rows for k in r if k in Q_KEYS or k in SCORE_KEYS or k.startswith("penalty/")
                   or k.startswith("rollout/raw_") or k in ("rollout/penalty_mean", "rollout/reward_mean")})
    out = {}
    for key in keys:
        pairs = [(r["step"], float(r[key])) for r in rows if "step" in r and isinstance(r.get(key), (int, float))
                 and math.isfinite(float(r[key]))]
        if pairs:
            out[key] = {"steps": [p[0] for p in pairs], "values": [p[1] for p in pairs]}
    return out


def q_findings(series: dict, q_low: float | None, q_high: float | None) -> dict:
    """Summary of q_mean: first, last, min, max, and whether it leaves [q_low, q_high]."""
    q = series.get("q_mean")
    if q is None:
        return {}
    values = np.asarray(q["values"])
    out = {"first": float(values[0]), "last": float(values[-1]), "min": float(values.min()),
           "max": float(values.max()), "bound_low": q_low, "bound_high": q_high}
    if q_high is not None:
        above = [s for s, v in zip(q["steps"], values) if v > q_high]
        out["first_step_above_bound"] = above[0] if above else None
        out["above_bound_at_end"] = bool(values[-1] > q_high)
    if q_low is not None:
        out["below_bound_at_end"] = bool(values[-1] < q_low)
    return out


# ------------------------------------------------------------------------------ (b) real vs model penalty
def describe(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def prob_greater(a, b) -> float:
    """P(A > B) + P(A = B)/2 for independent draws of the two samples (the AUC of separating them)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if a.size == 0 or b.size == 0:
        return float("nan")
    below = np.searchsorted(b, a, side="left")            # b < a
    equal = np.searchsorted(b, a, side="right") - below   # b == a
    return float((below + 0.5 * equal).sum() / (a.size * b.size))


def penalty_comparison(sample: dict) -> dict:
    """Per component of a penalty sample: stats of real and model data and P(model > real)."""
    out = {}
    for name in sorted(set(sample.get("model", {})) & set(sample.get("real", {}))):
        model, real = sample["model"][name], sample["real"][name]
        out[name] = {"model": describe(model), "real": describe(real), "p_model_above_real": prob_greater(model, real)}
        if out[name]["model"]["n"] and out[name]["real"]["n"] and out[name]["real"]["median"] > 0:
            out[name]["median_ratio_model_to_real"] = out[name]["model"]["median"] / out[name]["real"]["median"]
    return out


# ------------------------------------------------------------------------------ (c) model error along rollouts
@torch.no_grad()
def model_error(trainer, starts: int, horizon: int, seed: int = 0) -> dict:
    """Model rollouts of the trainer's policy vs the true simulator from the same states (module doc, (c))."""
    from pyscorepen.tasks.sim_state import set_state_from_obs
    data, device = trainer.dataset, trainer.device
    env = trainer.task.make_env()
    state_std = data.obs.std(0).clamp_min(1e-6).cpu().numpy().astype(np.float64)          # [S]
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        idx = torch.randint(len(data), (starts,), generator=gen, device=device)
        model_obs = [data.obs[idx]]                                                         # [N, S] per step
        actions, model_rewards, model_done = [], [], []
        never = torch.zeros(starts, dtype=torch.bool, device=device)                        # [N]
        for _ in range(horizon):     # as trainer.rollout_round: a ~ pi(s_hat), one random elite per row
            a = trainer.policy(model_obs[-1])                                               # [N, A]
            out = trainer.dynamics.step(model_obs[-1], a, generator=gen)
            done = (trainer.task.termination_fn(model_obs[-1], a, out.next_obs)
                    if trainer.task.termination_fn is not None else never)
            actions.append(a)
            model_obs.append(out.next_obs)
            model_rewards.append(out.rewards)
            model_done.append(done.to(torch.bool))
        hat_s = torch.stack(model_obs).cpu().numpy().astype(np.float64)                    # [H+1, N, S]
        acts = torch.stack(actions).cpu().numpy()                                           # [H, N, A]
        hat_r = torch.stack(model_rewards).cpu().numpy().astype(np.float64)                # [H, N]
        hat_done = torch.stack(model_done).cpu().numpy()                                    # [H, N]

        # the same actions in the true simulator, from the same start states
        true_s = np.full_like(hat_s, np.nan)
        true_r = np.full_like(hat_r, np.nan)
        true_done = np.zeros_like(hat_done)
        roundtrip = 0.0
        for i in range(starts):
            env.reset(seed=seed + i)
            back = set_state_from_obs(env, hat_s[0, i])
            roundtrip = max(roundtrip, float(np.abs(back - hat_s[0, i]).max()))
            true_s[0, i] = back
            for k in range(horizon):
                obs, reward, terminated, truncated, _ = env.step(acts[k, i])
                true_s[k + 1, i], true_r[k, i] = obs, reward
                if terminated:
                    true_done[k:, i] = True
                    break
                if truncated:   # a time limit inside H: the rest of the row is unknown
                    break
        env.close()

        # one-step error: the model from the TRUE previous state with the same action (same sampling)
        prev = torch.as_tensor(true_s[:-1].reshape(-1, true_s.shape[-1]), dtype=torch.float32, device=device)
        valid = torch.isfinite(prev).all(-1)
        one_step = np.full((horizon * starts, true_s.shape[-1]), np.nan)
        if valid.any():
            a_flat = torch.as_tensor(acts.reshape(-1, acts.shape[-1]), dtype=torch.float32, device=device)
            step = trainer.dynamics.step(prev[valid], a_flat[valid], generator=gen)
            one_step[valid.cpu().numpy()] = step.next_obs.cpu().numpy()
        one_step = one_step.reshape(horizon, starts, -1)                                    # [H, N, S]

    # a row counts at step k while neither side terminated before k and the simulator produced s_k
    ended_before = np.zeros((horizon, starts), dtype=bool)
    for k in range(1, horizon):
        ended_before[k] = ended_before[k - 1] | hat_done[k - 1] | true_done[k - 1]
    active = ~ended_before & np.isfinite(true_s[1:]).all(-1)                               # [H, N]
    state_err = np.linalg.norm((hat_s[1:] - true_s[1:]) / state_std, axis=-1)               # [H, N]
    one_err = np.linalg.norm((one_step - true_s[1:]) / state_std, axis=-1)                  # [H, N]
    reward_err = np.abs(hat_r - true_r)                                                     # [H, N]

    def per_step(err: np.ndarray, stat) -> list[float | None]:
        return [float(stat(err[k][active[k]])) if active[k].any() else None for k in range(horizon)]

    return {
        "starts": starts, "horizon": horizon, "seed": seed,
        "state_roundtrip_max_abs_error": roundtrip,
        "steps": list(range(1, horizon + 1)),
        "active": [int(a) for a in active.sum(1)],
        "state_error_mean": per_step(state_err, np.mean), "state_error_median": per_step(state_err, np.median),
        "one_step_state_error_mean": per_step(one_err, np.mean),
        "one_step_state_error_median": per_step(one_err, np.median),
        "reward_error_mean": per_step(reward_err, np.mean), "reward_error_median": per_step(reward_err, np.median),
        "reward_bias_mean": per_step(hat_r - true_r, np.mean),
        "true_reward_mean": per_step(true_r, np.mean), "model_reward_mean": per_step(hat_r, np.mean),
        "true_terminated_fraction": [float(true_done[k].mean()) for k in range(horizon)],
        "model_terminated_fraction": [float(np.logical_or.accumulate(hat_done[: k + 1], axis=0)[-1].mean())
                                      for k in range(horizon)],
        "units": "state errors: Euclidean norm of the per-dimension error divided by the dataset's state std; "
                 "reward errors: reward units",
    }


# ------------------------------------------------------------------------------ loading
def load_for_diagnosis(run_dir: Path):
    """A :class:`Trainer` of the run with its agent (final or latest checkpoint), its dynamics
    ensemble and (if it has one) its score model loaded, read-only."""
    from pyscorepen.evaluate import load_trainer
    trainer = load_trainer(run_dir)
    if not trainer.algorithm.uses_model:
        raise PyScorePenError(f"{run_dir}: algorithm '{trainer.config.algo}' trains no dynamics model; "
                              "there is no model error to measure (use --skip-model-error).")
    path = Path(run_dir) / runs.DYNAMICS
    if not path.exists():
        raise PyScorePenError(f"{run_dir} has no {runs.DYNAMICS} (pretraining not finished?); "
                              "use --skip-model-error for the metrics and penalty views.")
    trainer.load_pretrained("dynamics", trainer.dynamics, path)
    if trainer.score is not None and (Path(run_dir) / runs.SCORE).exists():
        trainer.load_pretrained("score", trainer.score, Path(run_dir) / runs.SCORE)
        trainer.freeze_score()
    return trainer


# ------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_q(series: dict, q: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if "q_mean" in series:
        axes[0].plot(series["q_mean"]["steps"], series["q_mean"]["values"], label="q_mean")
        for key, style, name in (("bound_high", "--", "r_max"), ("bound_low", ":", "r_min")):
            if q.get(key) is not None:
                axes[0].axhline(q[key], color="gray", ls=style, label=f"{name}/(1-γ) of the data")
    if "loss/critic" in series:
        ax = axes[0].twinx()
        ax.plot(series["loss/critic"]["steps"], series["loss/critic"]["values"], color="C3", alpha=0.6,
                label="loss/critic")
        ax.set_ylabel("critic loss")
        ax.legend(loc="lower right", fontsize=7)
    axes[0].set_xlabel("gradient steps")
    axes[0].set_ylabel("Q")
    axes[0].legend(loc="upper left", fontsize=7)
    score = "normalized_score_mean" if "normalized_score_mean" in series else "return_mean"
    if score in series:
        axes[1].plot(series[score]["steps"], series[score]["values"])
    axes[1].set_xlabel("gradient steps")
    axes[1].set_ylabel(score)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_penalties_over_steps(series: dict, path: Path) -> bool:
    keys = [k for k in series if k.startswith(("penalty/", "rollout/raw_")) or k == "rollout/penalty_mean"]
    if not keys:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        ax.plot(series[key]["steps"], series[key]["values"], label=key)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("penalty")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_penalty_hist(sample: dict, comparison: dict, path: Path) -> bool:
    names = list(comparison)
    if not names:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        model, real = np.asarray(sample["model"][name]), np.asarray(sample["real"][name])
        both = np.concatenate([model, real])
        bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 50)
        ax.hist(real, bins=bins, alpha=0.6, label=f"real (median {np.median(real):.3g})", density=True)
        ax.hist(model, bins=bins, alpha=0.6, label=f"model (median {np.median(model):.3g})", density=True)
        ax.set_title(f"{name}: P(model > real) = {comparison[name]['p_model_above_real']:.2f}", fontsize=9)
        ax.set_xlabel("penalty")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_model_error(err: dict, path: Path) -> None:
    plt = _plt()
    steps = err["steps"]
    nan = lambda xs: [np.nan if x is None else x for x in xs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key, label in (("state_error", "along the model rollout"), ("one_step_state_error", "one step from s_true")):
        axes[0].plot(steps, nan(err[f"{key}_mean"]), marker="o", label=f"mean, {label}")
        axes[0].plot(steps, nan(err[f"{key}_median"]), marker="x", ls="--", label=f"median, {label}")
    axes[0].set_ylabel("||ŝ_k − s_k|| / state std")
    axes[1].plot(steps, nan(err["reward_error_mean"]), marker="o", label="mean")
    axes[1].plot(steps, nan(err["reward_error_median"]), marker="x", ls="--", label="median")
    axes[1].set_ylabel("|r̂_k − r_k|")
    axes[2].plot(steps, err["true_terminated_fraction"], marker="o", label="true simulator")
    axes[2].plot(steps, err["model_terminated_fraction"], marker="x", ls="--", label="model (termination fn)")
    axes[2].set_ylabel("terminated by step k")
    for ax in axes:
        ax.set_xlabel("rollout step k")
        ax.legend(fontsize=7)
    fig.suptitle(f"{err['starts']} dataset starts, policy actions replayed in the simulator", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ CLI
def reward_bounds(trainer=None) -> tuple[float | None, float | None]:
    """r_min/(1-γ), r_max/(1-γ) of the dataset's rewards (needs the dataset: the trainer's)."""
    if trainer is None:
        return None, None
    gamma = float(trainer.config.sac.gamma)
    rewards = trainer.dataset.rewards
    return float(rewards.min()) / (1 - gamma), float(rewards.max()) / (1 - gamma)


def diagnose(args: DiagnoseArgs) -> dict:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir() or not (run_dir / runs.CONFIG).exists():
        raise PyScorePenError(f"{run_dir} is not a run folder (no {runs.CONFIG})")
    from pyscorepen.validation import check_ranges, output_dir_problems, raise_problems
    check_ranges(args)
    out = Path(args.out) if args.out is not None else run_dir / "diagnose"
    raise_problems(output_dir_problems(out))
    out.mkdir(parents=True, exist_ok=True)
    trainer = None if args.skip_model_error else load_for_diagnosis(run_dir)
    config = runs.read_json(run_dir / runs.CONFIG, "the run's config")
    rows = runs.read_metrics(run_dir)
    series = metric_series(rows)
    q_low, q_high = reward_bounds(trainer)
    result: dict = {"run": str(run_dir), "algo": config.get("algo"), "task": config.get("task"),
                    "step": rows[-1].get("step") if rows else None, "metrics": series,
                    "q": q_findings(series, q_low, q_high), "figures": []}
    plot_q(series, result["q"], out / "q_over_steps.png")
    result["figures"].append("q_over_steps.png")
    if plot_penalties_over_steps(series, out / "penalties_over_steps.png"):
        result["figures"].append("penalties_over_steps.png")

    sample_path = run_dir / runs.PENALTY_SAMPLE
    if sample_path.exists():
        sample, source = runs.read_json(sample_path, "the penalty sample"), runs.PENALTY_SAMPLE
    elif trainer is not None and len(trainer.model_buffer):
        from pyscorepen.diagnostics import penalty_sample
        sample, source = penalty_sample(trainer), f"computed from the checkpoint's model buffer (step {trainer.step})"
    else:
        sample, source = {}, None
    comparison = penalty_comparison(sample)
    result["penalty_real_vs_model"] = {"source": source, "components": comparison}
    if plot_penalty_hist(sample, comparison, out / "penalty_real_vs_model.png"):
        result["figures"].append("penalty_real_vs_model.png")

    if trainer is not None:
        horizon = args.horizon if args.horizon is not None else max(trainer.config.rollout.length, 10)
        result["model_error"] = model_error(trainer, args.starts, horizon, args.seed)
        result["model_error"]["training_rollout_length"] = trainer.config.rollout.length
        result["model_error"]["policy_step"] = trainer.step
        plot_model_error(result["model_error"], out / "model_error.png")
        result["figures"].append("model_error.png")
    result["findings"] = findings(result)
    from pyscorepen.diagnostics import write_json
    write_json(out / DIAGNOSE_JSON, result)
    for line in result["findings"]:
        print(f"[diagnose] {line}", file=sys.stderr)
    print(f"[diagnose] wrote {out / DIAGNOSE_JSON} and {', '.join(result['figures'])}", file=sys.stderr)
    return {"out": str(out), "findings": result["findings"]}


def findings(result: dict) -> list[str]:
    """Plain statements of what the numbers show (no verdict beyond them)."""
    lines = []
    q = result.get("q", {})
    if q:
        text = f"q_mean: first {q['first']:.3g}, last {q['last']:.3g}, max {q['max']:.3g}"
        if q.get("bound_high") is not None:
            text += f"; the data's r_max/(1-γ) = {q['bound_high']:.3g}"
            if q.get("first_step_above_bound") is not None:
                text += (f", exceeded from step {q['first_step_above_bound']} "
                         "(over-estimation: Q diverges or exploits the model)")
        lines.append(text)
    for name, comp in result.get("penalty_real_vs_model", {}).get("components", {}).items():
        if comp["model"].get("n") and comp["real"].get("n"):
            lines.append(f"penalty {name}: median model {comp['model']['median']:.3g} vs real "
                         f"{comp['real']['median']:.3g}, P(model > real) = {comp['p_model_above_real']:.2f}")
    err = result.get("model_error")
    if err:
        k = err["training_rollout_length"]
        at = lambda key, i: err[key][i - 1] if 0 < i <= len(err[key]) else None
        for i in sorted({1, min(k, err["horizon"]), err["horizon"]}):
            s, r = at("state_error_median", i), at("reward_error_median", i)
            if s is not None:
                lines.append(f"model error at step {i}: median state error {s:.3g} state stds "
                             f"(one-step {at('one_step_state_error_median', i):.3g}), median |Δr| {r:.3g}, "
                             f"mean r̂ − r {at('reward_bias_mean', i):+.3g}, "
                             f"{err['active'][i - 1]} rows; true episodes terminated: "
                             f"{100 * err['true_terminated_fraction'][i - 1]:.0f}%")
    return lines


def parse_args(argv: list[str]) -> DiagnoseArgs:
    return tyro.cli(DiagnoseArgs, args=argv, description=(__doc__ or "") + DEBUG_HELP)


def main(argv: list[str] | None = None) -> int:
    def go(argv: list[str]) -> int:
        diagnose(parse_args(argv))
        return 0
    return cli_main(go, argv)


if __name__ == "__main__":
    sys.exit(main())
