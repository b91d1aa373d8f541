"""``python -m pyscorepen.evaluate RUN_DIR [--episodes K]``: re-evaluate a saved run.

Rebuilds the task and agent from ``RUN_DIR/config.json``, loads ``policy.pt`` (or the
newest good ``checkpoint-<step>.pt`` of an unfinished run) and prints the same summary as training.

With ``--cdsa CDSA_RUN [--k1 K1 --k2 K2 --iterations n]`` the run's policy is evaluated with and
without CDSA's test-time action correction (CDSA Algorithm 2, Eq. 10) on the same initial states:
return, normalized score and the VaR curve of both, written with a plot to ``--out`` (default
``CDSA_RUN/corrected/<run>-k1_..-k2_..-n..``). K1, K2 default to the per-dataset values of
configs/defaults.toml (CDSA Table 2), stored in the CDSA run's config.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from pyscorepen import runs
from pyscorepen.config import TrainConfig
from pyscorepen.errors import DEBUG_HELP, DivergenceError, PyScorePenError, cli_main


@dataclass
class EvaluateArgs:
    run_dir: tyro.conf.Positional[Path]
    """A run folder written by ``python -m pyscorepen.train``."""
    episodes: int = 10
    """Evaluation episodes. Range: [1, inf)."""
    seed: int | None = None
    """Evaluation seed (default: the run's own evaluation seed). Range: [0, 4294967295]."""
    write: bool = False
    """Also overwrite the run's summary.json with this evaluation."""
    cdsa: Path | None = None
    """A ``--algo cdsa`` run folder: evaluate RUN_DIR's policy with and without CDSA's correction."""
    k1: float | None = None
    """CDSA K1, the weight of g(s, a) (default: the CDSA run's, from CDSA Table 2 per dataset). Range: [0, inf)."""
    k2: float | None = None
    """CDSA K2, the weight of I(s, s + h(s, a)) (default: the CDSA run's). Range: [0, inf)."""
    iterations: int | None = None
    """Correction iterations n (default: the CDSA run's, 1). Range: [0, inf)."""
    out: Path | None = None
    """Folder for the correction's summary.json and var_curve.png."""


def load_trainer(run_dir: Path):
    """A :class:`Trainer` rebuilt from a run folder, with its final (or latest) agent loaded."""
    from pyscorepen.tasks import make_task
    from pyscorepen.trainer import Trainer
    from pyscorepen.validation import validate_task, validate_train_config
    cfg_path = Path(run_dir) / runs.CONFIG
    if not Path(run_dir).is_dir():
        raise PyScorePenError(f"{run_dir} is not a run folder (no such folder)")
    if not cfg_path.exists():
        raise PyScorePenError(f"{run_dir} is not a run folder (no {runs.CONFIG})")
    try:
        config = TrainConfig.from_dict(runs.read_json(cfg_path, "the run's config"))
    except TypeError as err:   # a JSON value of the wrong shape
        raise runs.RunFileError(f"{cfg_path} (the run's config) is not a pyscorepen config: {err}") from err
    config.progress = False
    config.out = config.pretrained_from = None   # only read here: need not be writable / still exist
    validate_train_config(config)
    task = make_task(config.task, cliff=config.cliff, ref_min=config.ref_min, ref_max=config.ref_max,
                     drop_invalid_episodes=config.drop_invalid_episodes, risky=config.risky)
    validate_task(config, task)
    trainer = Trainer(config, task, Path(run_dir))
    policy = Path(run_dir) / runs.POLICY
    if policy.exists():
        hint = f"Delete it to evaluate the latest {runs.CHECKPOINT} instead (rerunning train rewrites it)."
        state = runs.load_torch_file(policy, "the final agent", map_location=trainer.device, hint=hint)
        runs.load_state(trainer.agent, state, policy, "the final agent", hint)
        trainer.step = trainer.agent.num_updates
    elif not trainer.load_checkpoint(quarantine=False):     # read-only: a bad one is not moved
        raise PyScorePenError(f"{run_dir} has neither {runs.POLICY} nor a readable {runs.CHECKPOINT}")
    return trainer


def evaluate_run(args: EvaluateArgs) -> dict:
    if args.cdsa is not None:
        from pyscorepen.correction import evaluate_correction
        return evaluate_correction(args.run_dir, args.cdsa, args.k1, args.k2, args.iterations, args.episodes,
                                   seed=10_000 if args.seed is None else args.seed, out=args.out)
    trainer = load_trainer(args.run_dir)
    if not trainer.algorithm.has_policy:
        raise PyScorePenError(f"{args.run_dir} is a CDSA run: it corrects other policies. Evaluate one with "
                              f"python -m pyscorepen.evaluate POLICY_RUN --cdsa {args.run_dir}")
    if args.seed is not None:
        trainer.config.seed = args.seed
    result = trainer.evaluate(args.episodes)
    summary = {"algo": trainer.config.algo, "task": trainer.config.task, "seed": trainer.config.seed,
               "steps": trainer.step, **trainer.return_stats(result)}
    bad = runs.first_nonfinite(summary)
    if bad is not None:
        raise DivergenceError(f"{args.run_dir}: the evaluation gives {bad[0]} = {bad[1]}; the policy has diverged")
    if args.write:
        runs.write_summary(args.run_dir, summary)
    return summary


def parse_args(argv: list[str]) -> EvaluateArgs:
    from pyscorepen.validation import check_ranges
    args = tyro.cli(EvaluateArgs, args=argv, description=__doc__ + DEBUG_HELP)
    check_ranges(args)
    return args


def main(argv: list[str] | None = None) -> int:
    return cli_main(lambda a: evaluate_run(parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
