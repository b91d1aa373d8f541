"""``python -m pyscorepen.train``: train an offline RL agent and write a run folder.

With no arguments it trains ScorePen-MORL on the built-in cliff-region task (ScorePen §5.1).
Every field of :class:`pyscorepen.config.TrainConfig` is a flag; ``--help`` lists them.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import tyro

from pyscorepen import runs
from pyscorepen.config import TrainConfig, defaults_for
from pyscorepen.errors import PyScorePenError, report
from pyscorepen.tasks import make_task

log = logging.getLogger("pyscorepen")


def prepare_run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.out) if config.out else runs.default_run_dir(config.algo, config.task, config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / runs.CONFIG
    new = config.to_dict()
    new["out"] = str(run_dir)
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        ignore = {"steps", "progress", "eval_interval", "eval_episodes", "device", "out", "tensorboard"}
        # a field the old run's config lacks did not exist when it was made (e.g. a later algorithm's group)
        diff = {k for k in new if k not in ignore and k in old and json.dumps(old[k]) != json.dumps(new[k])}
        if diff:
            raise PyScorePenError(
                f"{run_dir} holds a run with a different config ({', '.join(sorted(diff))}). "
                "Use another --out, or delete the folder to start over.")
    cfg_path.write_text(json.dumps(new, indent=2) + "\n")
    return run_dir


def run(config: TrainConfig) -> dict:
    """Train according to ``config``; returns the summary (also written to summary.json)."""
    from pyscorepen.trainer import Trainer
    if config.tensorboard:   # a missing optional package fails before the run folder is touched
        from pyscorepen.tensorboard_log import require
        require()
    # the task first: a missing or corrupt dataset must not leave a half-made run folder behind
    task = make_task(config.task, cliff=config.cliff, ref_min=config.ref_min, ref_max=config.ref_max,
                     drop_invalid_episodes=config.drop_invalid_episodes, risky=config.risky)
    run_dir = prepare_run_dir(config)
    log.info("run folder %s | task %s | %d transitions", run_dir, task.name, len(task.dataset))
    return Trainer(config, task, run_dir).train()


def initial_defaults(argv: list[str]) -> TrainConfig:
    """Defaults for the --algo/--task on the command line (per-dataset table, see configs/)."""
    import argparse
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default=TrainConfig.algo)
    pre.add_argument("--task", default=TrainConfig.task)
    known, _ = pre.parse_known_args(argv)
    return defaults_for(known.algo, known.task)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    config = tyro.cli(TrainConfig, args=argv, description=__doc__, default=initial_defaults(argv))
    return report(run, config)


if __name__ == "__main__":
    sys.exit(main())
