"""``python -m pyscorepen.train``: train an offline RL agent and write a run folder.

With no arguments it trains ScorePen-MORL on the built-in cliff-region task (ScorePen §5.1).
Every field of :class:`pyscorepen.config.TrainConfig` is a flag; ``--help`` lists them.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path

import tyro

from pyscorepen import runs
from pyscorepen.config import TrainConfig, defaults_for
from pyscorepen.errors import DEBUG_HELP, PyScorePenError, TrainingInterrupted, cli_main
from pyscorepen.tasks import make_task

log = logging.getLogger("pyscorepen")


IGNORED_ON_RESUME = {"steps", "progress", "eval_interval", "eval_episodes", "device", "out", "tensorboard",
                     "pretrain_only", "threads", "keep_checkpoints", "dynamics_checkpoint_interval",
                     "score_checkpoint_interval", "divergence_limit"}
"""Fields that may change when a run folder is resumed (a larger ``steps`` extends the run)."""


def resolve_run_dir(config: TrainConfig) -> Path:
    return Path(config.out) if config.out else runs.default_run_dir(config.algo, config.task, config.seed)


def check_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """An existing run folder must hold the same config, and at most ``config.steps`` steps."""
    from pyscorepen.validation import ConfigError, output_dir_problems, raise_problems
    raise_problems(output_dir_problems(run_dir))
    cfg_path = run_dir / runs.CONFIG
    if not cfg_path.exists():
        return
    old = TrainConfig.from_dict(runs.read_json(cfg_path, "the run's config")).to_dict()
    new = config.to_dict()
    changes = runs.config_changes(old, new, ignore=IGNORED_ON_RESUME)
    if changes:
        raise ConfigError(
            f"{run_dir} holds a run with a different config: {'; '.join(changes)} (saved → this command). "
            "Use another --out, or delete the folder to start over.")
    done = runs.trained_steps(run_dir)
    if config.steps < done:
        raise ConfigError(
            f"{run_dir} has already trained {done} steps; --steps {config.steps} would make its config.json "
            f"disagree with its results. A run can only be extended: pass --steps {done} or more, or use "
            "another --out.")


def prepare_run_dir(config: TrainConfig) -> Path:
    """Create the run folder and write config.json (after every check has passed)."""
    run_dir = resolve_run_dir(config)
    check_run_dir(config, run_dir)
    created = not run_dir.exists()
    new = config.to_dict()
    new["out"] = str(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_json(run_dir / runs.CONFIG, new)      # atomic (temp file, fsync, rename), strict JSON
    except OSError as err:
        try:   # leave nothing behind
            (run_dir / (runs.CONFIG + ".tmp")).unlink(missing_ok=True)
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        except OSError:
            pass
        raise PyScorePenError(f"--out {run_dir}: the run folder is not writable ({err.strerror or err})") from err
    return run_dir


def build(config: TrainConfig):
    """Validate ``config``, load its task and build the :class:`Trainer`: every check that can fail
    happens here, before the run folder is created or touched."""
    from pyscorepen.trainer import Trainer
    from pyscorepen.validation import validate_task, validate_train_config
    validate_train_config(config)
    if config.tensorboard:   # a missing optional package fails before the run folder is touched
        from pyscorepen.tensorboard_log import require
        require()
    task = make_task(config.task, cliff=config.cliff, ref_min=config.ref_min, ref_max=config.ref_max,
                     drop_invalid_episodes=config.drop_invalid_episodes, risky=config.risky)
    validate_task(config, task)
    run_dir = resolve_run_dir(config)
    check_run_dir(config, run_dir)
    trainer = Trainer(config, task, run_dir)
    trainer.check_saved_models()
    return trainer


def run(config: TrainConfig) -> dict:
    """Train according to ``config``; returns the summary (also written to summary.json)."""
    if config.pretrain_only:
        run_dir = pretrain_only(config)
        return {"pretrained": str(run_dir)}
    from pyscorepen.threads import configure_threads
    threads = configure_threads(config.threads)
    trainer = build(config)
    with runs.RunLock(trainer.run_dir):   # one process per run folder
        prepare_run_dir(config)
        log.info("run folder %s | task %s | %d transitions | %d torch threads", trainer.run_dir, trainer.task.name,
                 len(trainer.dataset), threads)
        with keep_cpu_policy(trainer.run_dir):
            return trainer.train()


@contextlib.contextmanager
def keep_cpu_policy(run_dir: Path):
    """A run dispatches as it started. Its first process records the automatic CPU kernel policy
    (:func:`pyscorepen.ops.backend.cpu_policy`: ISA, threads, built-in or calibrated thresholds and
    limits) in ``cpu_policy.json``, and every process of the run pins the recorded ones, so a calibration
    made in between (``python -m pyscorepen.calibrate``) or another ``--threads`` does not change which
    kernels a resumed run runs (kill -9 + resume stays byte-identical). A run folder with trained
    state but no record was started by a version before calibrations: it records the built-in
    tables, which that version ran; a record without limits (a version that calibrated thresholds
    only) pins the built-in limits, for the same reason. Resumed on another ISA, the recorded
    thresholds do not apply: that process uses this machine's policy, and says so."""
    from pyscorepen.ops import backend
    path = run_dir / runs.CPU_POLICY
    current = backend.cpu_policy()
    if not path.exists():
        started_before = any(run_dir.glob("*.pt"))   # checkpoints, models or fits of an older version
        recorded = backend.cpu_policy(builtin=True) if started_before else current
        runs.write_json(path, recorded)
    else:
        recorded = runs.read_json(path, "the run's CPU kernel policy")
    thresholds = recorded.get("thresholds")
    if recorded.get("isa") != current["isa"] or not isinstance(thresholds, dict):
        log.warning("%s was recorded on the %s ISA, this process runs %s: it uses this machine's kernel policy "
                    "(results will differ from an uninterrupted run in the last digits)", path, recorded.get("isa"),
                    current["isa"])
        yield
        return
    limits = recorded.get("limits")
    if not isinstance(limits, dict):
        limits = backend.cpu_policy(builtin=True)["limits"]
    log.info("CPU kernels: ISA %s, %s policy (kept in %s)%s", recorded["isa"], recorded.get("source"), path.name,
             "; python -m pyscorepen.calibrate measures this machine's own" if recorded.get("source") == "built-in"
             and current["source"] == "built-in" else "")
    with backend.pinned_cpu_policy(thresholds, limits):
        yield


def pretrain_only(config: TrainConfig) -> Path:
    """Train (or reuse) the dynamics and score models of ``config`` into its run folder, no policy."""
    from pyscorepen.threads import configure_threads
    configure_threads(config.threads)
    trainer = build(config)
    with runs.RunLock(trainer.run_dir):
        prepare_run_dir(config)
        with keep_cpu_policy(trainer.run_dir), runs.GracefulInterrupt() as trainer.interrupt:
            trainer.pretrain()   # SIGINT/SIGTERM: checkpoint the fit, then stop
    return trainer.run_dir


def initial_defaults(argv: list[str]) -> TrainConfig:
    """Defaults for the --algo/--task on the command line (per-dataset table, see configs/)."""
    import argparse
    from pyscorepen.algos import ALGORITHMS
    from pyscorepen.validation import ConfigError
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default=TrainConfig.algo)
    pre.add_argument("--task", default=TrainConfig.task)
    known, _ = pre.parse_known_args(argv)
    if known.algo not in ALGORITHMS:
        raise ConfigError(f"invalid option(s): --algo {known.algo}: unknown; choose one of {', '.join(ALGORITHMS)}. "
                          "Nothing was written.")
    return defaults_for(known.algo, known.task)


def parse_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig of a train command line, checked (ranges, names, device, --out)."""
    from pyscorepen.validation import validate_train_config
    config = tyro.cli(TrainConfig, args=argv, description=__doc__ + DEBUG_HELP, default=initial_defaults(argv))
    validate_train_config(config)
    return config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    from pyscorepen.allocator import tune_malloc
    tune_malloc()   # this process's steps reuse their buffers instead of faulting them in again
    try:
        return cli_main(lambda args: run(parse_config(args)), argv)
    except TrainingInterrupted as stop:   # SIGINT/SIGTERM: a checkpoint was written
        print(f"{stop}; checkpoint saved in {stop.run_dir}. Resume with: "
              f"python -m pyscorepen.train {shlex.join(argv)}".rstrip(), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:             # before training started: nothing to save
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
