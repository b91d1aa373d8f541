"""The model-based offline RL training loop shared by every algorithm.

ScorePen-MORL Algorithm 1 / MOPO Algorithm 2:
  1. train the dynamics ensemble on D (holdout, elites);
  2. train the score model on D (Eq. 10) and freeze it — only if a penalty needs it;
  3. repeat: every ``rollout.freq`` steps, branch h-step rollouts of pi from dataset states
     into D_model, storing each transition's penalty; update SAC on batches drawn from
     D (``real_ratio``) and D_model, the target lowered by the stored penalty (Eq. 20).

A run lives in one folder (see :mod:`pyscorepen.runs`); an interrupted run resumes from its
last checkpoint when started again with the same ``--out``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pyscorepen import rng, runs
from pyscorepen.algos import ALGORITHMS, COMBO, SAC
from pyscorepen.config import TrainConfig
from pyscorepen.data import Batch, ReplayBuffer
from pyscorepen.errors import DivergenceError, TrainingInterrupted
from pyscorepen.models.dynamics import EnsembleDynamics, rollout
from pyscorepen.evaluation import EvalResult, evaluate_policy
from pyscorepen.penalties import PENALTIES, is_target_penalty
from pyscorepen.models.score import ScoreModel
from pyscorepen.tasks import Task

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: TrainConfig, task: Task, run_dir: Path):
        self.config, self.task, self.run_dir = config, task, Path(run_dir)
        self.algorithm = ALGORITHMS[config.algo]
        self.device = torch.device(config.device)
        seed_everything(config.seed)
        data = task.dataset.to(self.device)
        self.dataset = data
        env = task.make_env()
        low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(env.action_space.high, dtype=torch.float32)
        env.close()

        names = config.penalties if config.penalties is not None else self.algorithm.penalties
        unknown = [n for n in names if n not in PENALTIES]
        if unknown:
            raise ValueError(f"unknown penalties {unknown}; available: {sorted(PENALTIES)}")
        coefs = config.penalty_coefs()
        self.dynamics = EnsembleDynamics(data.obs_dim, data.action_dim, config.dynamics).to(self.device)
        context = {"dynamics": self.dynamics, "dataset": data, "config": config}
        plugins = [PENALTIES[n](coefs.get(n, 1.0), **context) for n in names]
        self.rollout_penalties = [p for p in plugins if not is_target_penalty(p)]
        target_penalties = [p for p in plugins if is_target_penalty(p)]
        if plugins and not self.algorithm.uses_model:
            raise ValueError(f"penalties {list(names)} need model rollouts; algo '{config.algo}' has none")

        needs_score = any(p.requires_score for p in self.rollout_penalties)
        self.score = (ScoreModel(data.obs_dim + data.action_dim, config.score).to(self.device)
                      if needs_score else None)
        agent_kwargs = {"combo": config.combo} if issubclass(self.algorithm.agent_cls, COMBO) else {}
        agent_config = getattr(config, self.algorithm.config_field)
        if issubclass(self.algorithm.agent_cls, SAC):   # the horizon of --sac.actor-lr-cosine
            agent_kwargs["total_steps"] = config.steps
        self.agent = self.algorithm.agent_cls(data.obs_dim, data.action_dim, agent_config, low, high, self.device,
                                              target_penalties=target_penalties, **agent_kwargs)
        if hasattr(self.agent, "prepare"):   # one look at the offline data (IQL's reward scale)
            self.agent.prepare(data)
        r = config.rollout
        self.model_buffer = ReplayBuffer(r.batch_size * r.length * r.retain_rounds, data.obs_dim,
                                         data.action_dim, self.device)
        self.real_ratio = self.algorithm.real_ratio if config.real_ratio is None else config.real_ratio
        self.step = 0
        self.score_params = None
        self.running: dict[str, float] = {}        # running means of the update statistics (logged)
        # wall time of policy learning: what earlier processes of this run saved in their
        # checkpoints, plus this process's since its start of policy learning (set in _train)
        self.seconds_before, self.segment_start = 0.0, time.perf_counter()
        self.last_rollout: dict[str, float] = {}   # statistics of the latest rollout round (logged)
        self.interrupt = runs.GracefulInterrupt()  # replaced by the active one in train()
        self.tb = None                             # TensorBoard sink while train() runs (--tensorboard)

    # --------------------------------------------------------------------------- pretraining
    def fingerprint(self, kind: str) -> dict:
        """What the saved ``kind`` model ('dynamics' or 'score') depends on (see :func:`runs.model_fingerprint`)."""
        if not hasattr(self, "_identity"):
            self._identity = runs.dataset_identity(self.task)
        config = self.config.dynamics if kind == "dynamics" else self.config.score
        return runs.model_fingerprint(kind, self._identity, config)

    def needed_models(self) -> dict[str, str]:
        """{file name: kind} of the pretrained models this run uses."""
        needed = {runs.DYNAMICS: "dynamics"} if self.algorithm.uses_model else {}
        if self.score is not None:
            needed[runs.SCORE] = "score"
        return needed

    def check_saved_models(self) -> None:
        """Before anything is written: the run folder's own models and those of ``--pretrained-from``
        must be readable and trained on this data with this model config (fingerprints)."""
        source = Path(self.config.pretrained_from) if self.config.pretrained_from else None
        if source is not None and not source.is_dir():
            raise runs.RunFileError(f"--pretrained-from {source}: no such run folder")
        found_in_source = 0
        for name, kind in self.needed_models().items():
            own = self.run_dir / name
            if own.exists():
                runs.load_model(own, f"the {kind} model", self.fingerprint(kind),
                                hint=f"Delete {own} to retrain it.")
            elif source is not None and (source / name).exists():
                runs.load_model(source / name, f"the {kind} model of --pretrained-from", self.fingerprint(kind),
                                hint="Use a run of the same task and model options, or drop --pretrained-from.")
                found_in_source += 1
        if source is not None and self.needed_models() and not found_in_source and not any(
                (self.run_dir / n).exists() for n in self.needed_models()):
            raise runs.RunFileError(f"--pretrained-from {source}: holds none of "
                                    f"{', '.join(self.needed_models())}, so there is nothing to reuse")

    def pretrain(self) -> dict[str, float]:
        """Dynamics ensemble and score model, each trained once and saved in the run folder.

        Each fit checkpoints itself (``dynamics-fit-<epoch>.pt`` every
        ``dynamics_checkpoint_interval`` epochs, ``score-fit-<step>.pt`` every
        ``score_checkpoint_interval`` steps, and on SIGINT/SIGTERM) and resumes from there; each
        starts from its own seed (:func:`pyscorepen.rng.stage_seed`), so a resumed or reloaded
        stage gives bit-identical models. Returns the statistics of pretrain.json.
        """
        cfg = self.config
        info = self._read_pretrain_stats()
        if cfg.pretrained_from:
            for name in self.needed_models():   # checked by check_saved_models before
                src = Path(cfg.pretrained_from) / name
                if src.exists() and not (self.run_dir / name).exists():
                    runs.atomic_write(self.run_dir / name, lambda f: f.write(src.read_bytes()))
        if self.algorithm.uses_model:
            info.update(self._pretrain_stage("dynamics", self.dynamics, runs.DYNAMICS, runs.DYNAMICS_FIT,
                                             cfg.dynamics_checkpoint_interval, "on_epoch", "dynamics_epoch",
                                             stop=lambda: self.interrupt.requested))
        if self.score is not None:
            info.update(self._pretrain_stage("score", self.score, runs.SCORE, runs.SCORE_FIT,
                                             cfg.score_checkpoint_interval, "on_step", "score_step"))
            self.freeze_score()
        return info

    def freeze_score(self) -> None:
        """Freeze the trained score model and build the rollout's penalty parameters: the fused
        rollout op normalizes (s, a) with the dynamics' statistics, so the score net's first layer
        is adapted to them (:meth:`pyscorepen.models.score.ScoreModel.penalty_params`)."""
        self.score.requires_grad_(False)
        if self.algorithm.uses_model:
            self.score_params = self.score.penalty_params(self.dynamics.input_mean, self.dynamics.input_std)
        else:
            self.score_params = self.score.penalty_params()

    def _pretrain_stage(self, stage: str, model, final_name: str, prefix: str, interval: int,
                        hook_arg: str, point: str, **fit_kwargs) -> dict[str, float]:
        """Load ``final_name`` if it exists; else fit ``model`` (resuming from the newest good
        ``<prefix>-<i>.pt``), save it atomically and record its statistics in pretrain.json."""
        path = self.run_dir / final_name
        if path.exists():
            self.load_pretrained(stage, model, path)
            runs.remove_checkpoints(self.run_dir, prefix)
            return {}
        fingerprint = self.fingerprint(stage)
        resume = runs.load_latest_checkpoint(self.run_dir, model.FIT_STATE_KEYS, prefix, map_location=self.device)
        if resume is None:
            rng.seed_all(rng.stage_seed(self.config.seed, stage))
        else:
            index = resume.get("epoch", resume.get("step"))
            # a fit state records what it was fitted on (older ones do not): never continue it on other data
            changes = runs.config_changes(resume["fingerprint"], fingerprint) if "fingerprint" in resume else []
            if changes:
                raise runs.RunFileError(
                    f"{self.run_dir / f'{prefix}-{index}.pt'} is a {stage} fit of other data or another model "
                    f"config: {'; '.join(changes[:8])} (saved → this run). Delete the {prefix}-*.pt files to "
                    "start this fit over.")
            log.info("resuming the %s fit from %s-%d.pt", stage, prefix, index)

        def on_progress(index: int, state_fn) -> None:
            runs.fault_injection_point(point, index)
            if index % interval == 0 or self.interrupt.requested:
                runs.save_checkpoint({**state_fn(), "fingerprint": fingerprint}, self.run_dir, index,
                                     self.config.keep_checkpoints, prefix)
            if self.interrupt.requested:
                raise TrainingInterrupted(self.interrupt.signum, f"{stage} pretraining ({prefix}-{index}.pt)",
                                          self.run_dir)

        try:
            stats = model.fit(self.dataset, progress=self.config.progress, resume=resume,
                              **{hook_arg: on_progress}, **fit_kwargs)
        except DivergenceError as err:
            debug = runs.save_debug_checkpoint({"stage": stage, "model": model.state_dict()}, self.run_dir, stage)
            raise DivergenceError(f"{err}. The model at that point is in {debug} (for debugging; never resumed "
                                  "from).") from None
        self.save_pretrained(stage, model, path)
        runs.remove_checkpoints(self.run_dir, prefix)
        log.info("%s: %s", stage, stats)
        merged = {**self._read_pretrain_stats(), **stats}
        runs.write_json(self.run_dir / runs.PRETRAIN, merged)
        return stats

    def load_pretrained(self, kind: str, model, path: Path) -> None:
        """``dynamics.pt`` / ``score.pt`` into ``model``, refused if its fingerprint differs."""
        hint = f"Delete {path} to retrain it."
        state = runs.load_model(path, f"the {kind} model", self.fingerprint(kind), map_location=self.device, hint=hint)
        runs.load_state(model, state, path, f"the {kind} model", hint)

    def save_pretrained(self, kind: str, model, path: Path) -> None:
        runs.save_model(path, model.state_dict(), self.fingerprint(kind))

    def _read_pretrain_stats(self) -> dict[str, float]:
        path = self.run_dir / runs.PRETRAIN
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    # --------------------------------------------------------------------------- loop pieces
    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.actor(obs, with_log_prob=False)[0]

    def rollout_round(self) -> dict[str, float]:
        cfg = self.config.rollout
        idx = torch.randint(len(self.dataset), (cfg.batch_size,), device=self.device)
        t0 = time.perf_counter()
        stats = rollout(self.dynamics, self.policy, self.dataset.obs[idx], cfg.length, self.model_buffer,
                        penalties=self.rollout_penalties, termination_fn=self.task.termination_fn,
                        score_params=self.score_params, chunk_size=cfg.chunk_size)
        stats["rollout/transitions_per_s"] = stats["rollout/transitions"] / (time.perf_counter() - t0)
        return stats

    def sample_batch(self) -> Batch:
        B = self.config.batch_size
        if not self.algorithm.uses_model:
            return self.dataset.sample(B)
        n_real = int(round(B * self.real_ratio))
        return Batch.cat([self.dataset.sample(n_real), self.model_buffer.sample(B - n_real)])

    def evaluate(self, episodes: int, keep_trajectories: bool = False) -> EvalResult:
        act = lambda obs: self.agent.act(obs.to(self.device), deterministic=True)
        return evaluate_policy(act, self.task.make_env, episodes, seed=10_000 * (self.config.seed + 1),
                               keep_trajectories=keep_trajectories)

    # --------------------------------------------------------------------------- checkpoints
    CHECKPOINT_KEYS = ("step", "agent", "model_buffer", "rng", "logging")

    def training_state(self) -> dict:
        """Everything policy learning needs to continue bit-identically, metrics included."""
        return {"step": self.step, "agent": self.agent.state_dict(), "model_buffer": self.model_buffer.state_dict(),
                "rng": rng.get_rng_state(), "logging": {"running": dict(self.running),
                                                        "last_rollout": dict(self.last_rollout),
                                                        "train_seconds": self.train_seconds()}}

    def train_seconds(self) -> float:
        """Wall time of policy learning over every process that worked on this run, each counted up
        to its last checkpoint (the steps after it were redone, and the redo is counted)."""
        return self.seconds_before + time.perf_counter() - self.segment_start

    def save_checkpoint(self) -> Path:
        return runs.save_checkpoint(self.training_state(), self.run_dir, self.step, self.config.keep_checkpoints)

    def load_checkpoint(self, quarantine: bool = True) -> bool:
        """Load the newest good ``checkpoint-<step>.pt`` (older ones are fallbacks); False if none.
        ``quarantine``: move bad ones aside (``*.pt.corrupt``); False for read-only tools."""
        state = runs.load_latest_checkpoint(self.run_dir, self.CHECKPOINT_KEYS, map_location=self.device,
                                            quarantine=quarantine)
        legacy = self.run_dir / "checkpoint.pt"     # written by versions before the rotation
        if state is None and legacy.exists():
            state = runs.load_torch_file(legacy, "the training checkpoint", map_location=self.device,
                                         weights_only=False, hint=f"Delete {legacy} to restart policy learning.")
            state.update(rng={"torch": state["torch_rng"], "numpy": state["numpy_rng"]},
                         logging={"running": {}, "last_rollout": {}})
        if state is None:
            return False
        self.step = state["step"]
        self.agent.load_state_dict(state["agent"])
        self.model_buffer.load_state_dict(state["model_buffer"])
        rng.set_rng_state(state["rng"])
        self.running, self.last_rollout = dict(state["logging"]["running"]), dict(state["logging"]["last_rollout"])
        # checkpoints of versions before it was saved: counted from this restart
        self.seconds_before = float(state["logging"].get("train_seconds", 0.0))
        return True

    def check_finite(self, values: dict, what: str, limit: float = float("inf")) -> None:
        """Divergence guard: stop at the first NaN/inf (or value beyond +-``limit``), keeping the
        state in debug-<step>.pt."""
        bad = runs.first_nonfinite(values, limit)
        if bad is None:
            return
        debug = runs.save_debug_checkpoint(self.training_state(), self.run_dir, self.step)
        good = runs.checkpoint_files(self.run_dir)
        raise DivergenceError(
            f"training diverged at step {self.step}: {what} '{bad[0]}' is {bad[1]}"
            f"{'' if not math.isfinite(limit) or not math.isfinite(bad[1]) else f' (beyond --divergence-limit {limit:g})'}"
            f". The state at that step is in "
            f"{debug} (for debugging; never resumed from); the last good checkpoint is "
            f"{good[0][1].name if good else 'none'}. Lower the learning rates (--sac.actor-lr, --sac.critic-lr) "
            "or the penalty coefficients (--beta, --mopo-lambda) and start a new run with another --out.")

    # --------------------------------------------------------------------------- main loop
    def train(self) -> dict:
        """Pretrain, then learn the policy; SIGINT/SIGTERM checkpoint and raise TrainingInterrupted."""
        with runs.GracefulInterrupt() as self.interrupt:
            try:
                return self._train()
            finally:
                if self.tb is not None:
                    self.tb.close()
                    self.tb = None

    def _train(self) -> dict:
        cfg = self.config
        runs.remove_stale_temps(self.run_dir)
        pre = self.pretrain()
        resumed = self.load_checkpoint()
        if resumed:
            runs.truncate_metrics(self.run_dir, self.step)
            log.info("resuming %s from %s-%d.pt (step %d)", self.run_dir, runs.CHECKPOINT_PREFIX, self.step, self.step)
        else:
            rng.seed_all(rng.stage_seed(cfg.seed, "policy"))
            runs.truncate_metrics(self.run_dir, 0)
        if cfg.tensorboard:   # optional scalars sink (pyscorepen.tensorboard_log)
            from pyscorepen.tensorboard_log import TensorBoardLog
            self.tb = TensorBoardLog(self.run_dir, resume_step=self.step if resumed else None)
        self.segment_start, t_updates, updates = time.perf_counter(), 0.0, 0
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algo}", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
        while self.step < cfg.steps:
            if self.algorithm.uses_model and (self.step % cfg.rollout.freq == 0 or len(self.model_buffer) == 0):
                self.last_rollout = self.rollout_round()
                self.check_finite(self.last_rollout, "the model rollout statistic", cfg.divergence_limit)
            t0 = time.perf_counter()
            try:
                info = self.agent.update(self.sample_batch())
            except RuntimeError as err:   # a fused op refuses an overflowing value: the run has diverged
                if "overflow" not in str(err):
                    raise
                info = {"update (" + str(err).strip().splitlines()[0][:120] + ")": float("inf")}
            t_updates += time.perf_counter() - t0
            updates += 1
            self.step += 1
            self.check_finite(info, "the training statistic", cfg.divergence_limit)
            for k, v in info.items():   # exponential running mean for logging
                self.running[k] = v if k not in self.running else 0.99 * self.running[k] + 0.01 * v
            bar.update(1)
            saved = False
            if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                # an agent without a policy (CDSA) logs its losses only
                result = self.return_stats(self.evaluate(cfg.eval_episodes)) if self.algorithm.has_policy else {}
                row = {"step": self.step, **result, **self.running, **self.last_rollout,
                       **({} if self.step > cfg.eval_interval else pre),
                       "updates_per_s": updates / max(t_updates, 1e-9), "train_seconds": self.train_seconds()}
                self.check_finite(row, "the logged value")
                runs.append_metrics(self.run_dir, row)
                if self.tb is not None:
                    self.tb.write(row)
                self.save_checkpoint()
                saved = True
                if result:
                    bar.set_postfix(ret=f"{row['return_mean']:.2f}", q=f"{self.running.get('q_mean', 0):.1f}")
                else:
                    bar.set_postfix({k.removeprefix("loss/"): f"{v:.3g}" for k, v in self.running.items()})
            runs.fault_injection_point("policy_step", self.step)
            if self.interrupt.requested and self.step < cfg.steps:
                path = self.run_dir / f"{runs.CHECKPOINT_PREFIX}-{self.step}.pt" if saved else self.save_checkpoint()
                raise TrainingInterrupted(self.interrupt.signum, f"policy training ({path.name})", self.run_dir)
        bar.close()
        final = self.evaluate(cfg.eval_episodes, keep_trajectories=True) if self.algorithm.has_policy else None
        summary = {"algo": cfg.algo, "task": cfg.task, "seed": cfg.seed, "steps": self.step,
                   **(self.return_stats(final) if final is not None else self.running), **self.behaviour_stats(),
                   "train_seconds": self.train_seconds(), "last_process_train_seconds": time.perf_counter() - self.segment_start}
        self.check_finite(summary, "the final evaluation")
        runs.atomic_torch_save(self.agent.state_dict(), self.run_dir / runs.POLICY)
        if final is not None:
            self.write_diagnostics(final)
            self.make_plots(final)
        runs.write_summary(self.run_dir, summary)   # last: a folder with summary.json is complete
        return summary

    def return_stats(self, result: EvalResult) -> dict[str, float]:
        return runs.summarize(result, self.task)

    def write_diagnostics(self, final: EvalResult) -> None:
        """Final-evaluation returns and a penalty sample for ``python -m pyscorepen.report``."""
        from pyscorepen import diagnostics
        diagnostics.write_json(self.run_dir / diagnostics.EVAL_RETURNS, diagnostics.eval_returns(final))
        diagnostics.write_json(self.run_dir / diagnostics.PENALTY_SAMPLE, diagnostics.penalty_sample(self))

    def behaviour_stats(self) -> dict[str, float | None]:
        """The behaviour policy's score: mean return of the dataset's episodes, normalized with
        the task's reference scores (None for tasks without them, e.g. the cliff task)."""
        ret = self.task.info.get("dataset_return_mean")
        return {"behaviour_return_mean": ret,
                "behaviour_normalized_score": None if ret is None else self.task.normalized_score(ret)}

    def make_plots(self, final: EvalResult) -> None:
        from pyscorepen import plots
        plots.learning_curve(self.run_dir)
        if self.task.name == "cliff":
            plots.cliff_penalty_maps(self, final.trajectories, self.run_dir / runs.HEATMAP)
