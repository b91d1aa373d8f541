"""Run configuration: one dataclass tree, from which the CLI is generated (tyro)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import tyro

from pyscorepen.algos import BCConfig, CDSAConfig, ComboConfig, IQLConfig
from pyscorepen.models.dynamics import DynamicsConfig
from pyscorepen.algos.sac import SACConfig
from pyscorepen.models.score import ScoreConfig
from pyscorepen.tasks.cliff import CliffConfig
from pyscorepen.tasks.risky import RiskyConfig


@dataclass
class RolloutConfig:
    length: int = 5
    """Model rollout horizon h (MOPO Alg. 2). Range: [1, inf)."""
    batch_size: int = 50_000
    """Start states per rollout round: 50k as MBPO, MOPO, COMBO and MOBILE (the authors' MOBILE configs
    and OfflineRL-Kit: ``rollout_batch_size`` 50000). Rounds run in ``chunk_size`` pieces. Range: [1, inf)."""
    freq: int = 1000
    """Gradient steps between rollout rounds. Range: [1, inf)."""
    retain_rounds: int = 5
    """Model-buffer retention window, in rollout rounds (capacity = batch*length*rounds; MOPO/MOBILE
    ``model_retain_epochs`` 5: 1.25M transitions at h = 5). Range: [1, inf)."""
    chunk_size: int = 4096
    """Start states processed together (keeps activations cache-resident on CPU). Range: [1, inf)."""


@dataclass
class TrainConfig:
    algo: Literal["scorepen", "mopo", "combo", "sac", "iql", "bc", "cdsa"] = "scorepen"
    """Algorithm (see pyscorepen.algos)."""
    task: str = "cliff"
    """'cliff', 'risky' (2-D navigation with hazards, CDSA §5.1), a Minari dataset id (mujoco/hopper/medium-v0) or a path to a Minari dataset."""
    seed: int = 0
    """Training seed (network init, sampling, rollouts, evaluation). Range: [0, 4294967295]."""
    steps: int = 20_000
    """Gradient steps of policy learning. Range: [1, inf)."""
    beta: float = 0.01
    """Coefficient of the score penalty ||h(s,a)||^2 (ScorePen Eq. 20). The penalty is in normalized
    (s, a) units, where it scales as 1/sigma^2: 0.01 is the paper's grid value 1 times sigma^2 = 0.01.
    Range: [0, inf)."""
    mopo_lambda: float = 1.0
    """Coefficient lambda of the MOPO uncertainty penalty max_i ||sigma_i||. Range: [0, inf)."""
    mobile_beta: float = 1.0
    """Coefficient of the MOBILE penalty (used when 'mobile' is among the penalties). Range: [0, inf)."""
    mobile_include_reward: bool = False
    """MOBILE penalty as the std over elites of r + gamma Q'(s', a'); False (default): of min Q' alone,
    as both MOBILE references compute it (see pyscorepen.penalties.mobile)."""
    mobile_clamp_target: bool = True
    """With the mobile penalty, clamp the Bellman target at >= 0 as both MOBILE references do. Assumes
    non-negative values; defaults.toml turns it off where returns can be negative (halfcheetah-random)."""
    count_coef: float = 1.0
    """Coefficient of the count penalty 1/sqrt(n(s,a)+1) (Count-MORL; used when 'count' is among the
    penalties). 1.0 is OUR default: no per-dataset value is published in the sources we have.
    Range: [0, inf)."""
    count_hash_bits: int = 16
    """SimHash code length k of the count penalty (OUR default: finer cells give smaller counts).
    Range: [1, 62]."""
    penalties: tuple[str, ...] | None = None
    """Penalty plug-ins; None uses the algorithm's own. E.g. 'score uncertainty' combines two."""
    real_ratio: float | None = None
    """Fraction of real data per batch; None uses the algorithm's default (0.05 MOPO, 0.5 COMBO). Range: [0, 1]."""
    batch_size: int = 256
    """SAC minibatch size. Range: [1, inf)."""
    eval_interval: int = 2000
    """Gradient steps between evaluations (a line in metrics.jsonl and a checkpoint). Range: [1, inf)."""
    eval_episodes: int = 10
    """Episodes per evaluation. Range: [1, inf)."""
    out: str | None = None
    """Run folder; default runs/<algo>-<task>-s<seed>. An existing run folder is resumed."""
    pretrained_from: str | None = None
    """Run folder whose trained dynamics.pt / score.pt are reused (same task), e.g. for sweeps."""
    device: str = "cpu"
    """Torch device."""
    threads: int | None = None
    """Torch intra-op CPU threads (inter-op: 1). None: $OMP_NUM_THREADS if set, else the cores this
    process may use (os.sched_getaffinity); see pyscorepen/threads.py. Range: [1, inf)."""
    progress: bool = True
    """Show progress bars."""
    pretrain_only: bool = False
    """Only train (or resume, or reuse) the dynamics ensemble and the score model into the run folder,
    then stop: the shared models that ``--pretrained-from`` runs reuse (one per dataset)."""
    tensorboard: bool = False
    """Also write every metrics.jsonl row as TensorBoard scalars to <run>/tb/ (pip install -e .[tensorboard])."""
    ref_min: float | None = None
    """Override of the random-policy reference return (normalized score). Range: (-inf, inf)."""
    ref_max: float | None = None
    """Override of the expert reference return (normalized score). Range: (-inf, inf)."""
    keep_checkpoints: int = 2
    """Newest checkpoint-<step>.pt files kept (older ones are deleted); a corrupt newest one falls
    back to the next. Also applies to the pretraining checkpoints. Range: [1, inf)."""
    dynamics_checkpoint_interval: int = 1
    """Dynamics-fit epochs between pretraining checkpoints (dynamics-fit-<epoch>.pt). Range: [1, inf)."""
    score_checkpoint_interval: int = 500
    """Score-fit steps between pretraining checkpoints (score-fit-<step>.pt). Range: [1, inf)."""
    divergence_limit: float = 1e12
    """Divergence guard: a training loss, Q-value, alpha or rollout statistic beyond +-this (or
    NaN/inf anywhere) stops the run with a debug checkpoint. No sane run comes near 1e12; inf
    keeps only the NaN/inf check. Range: (0, inf]."""
    drop_invalid_episodes: bool = False
    """Minari datasets: skip (and list) episodes with NaN/inf or inconsistent fields instead of failing."""
    cliff: Annotated[CliffConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=CliffConfig)
    """Options of the cliff task generator (--goal, --boxes, --dataset-size, ...)."""
    risky: RiskyConfig = field(default_factory=RiskyConfig)
    """Options of the risky navigation task (--risky.hazards, --risky.hazard-prob, ...)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    combo: ComboConfig = field(default_factory=ComboConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    cdsa: CDSAConfig = field(default_factory=CDSAConfig)

    def penalty_coefs(self) -> dict[str, float]:
        return {"score": self.beta, "uncertainty": self.mopo_lambda, "mobile": self.mobile_beta,
                "count": self.count_coef}

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        def build(cls, values):
            kwargs = {}
            for f in cls.__dataclass_fields__.values():
                if f.name not in values:
                    continue
                v = values[f.name]
                sub = _NESTED.get(f.name)
                if sub is not None and isinstance(v, dict) and cls is TrainConfig:
                    v = build(sub, v)
                elif isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
            return cls(**kwargs)
        return build(TrainConfig, d)


_NESTED = {"cliff": CliffConfig, "risky": RiskyConfig, "rollout": RolloutConfig, "dynamics": DynamicsConfig,
           "score": ScoreConfig, "sac": SACConfig, "combo": ComboConfig, "iql": IQLConfig, "bc": BCConfig,
           "cdsa": CDSAConfig}


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """Set dotted fields ({'sac.gamma': 0.9, 'rollout.length': 1}) on a copy of ``config``."""
    from dataclasses import replace
    nested: dict[str, dict] = {}
    top = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if "." in key:
            group, name = key.split(".", 1)
            nested.setdefault(group, {})[name] = tuple(value) if isinstance(value, list) else value
        else:
            top[key] = tuple(value) if isinstance(value, list) else value
    for group, values in nested.items():
        top[group] = replace(getattr(config, group), **values)
    return replace(config, **top)


def defaults_for(algo: str, task: str) -> TrainConfig:
    """TrainConfig with the per-task / per-dataset defaults of ``configs/defaults.toml`` applied."""
    from pyscorepen.configs import dataset_defaults, load_defaults
    table = load_defaults()
    overrides = dict(table.get("algorithm", {}).get(algo, {}))   # per-algorithm defaults (e.g. CDSA's 10k steps)
    overrides.update(table.get("all", {}).get(task, {}))
    overrides.update(dataset_defaults(algo, task, table, algorithm_wide=False))
    return apply_overrides(TrainConfig(algo=algo, task=task), overrides)
