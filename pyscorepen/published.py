"""Published D4RL numbers beside ours, and issue 10's bars against the behaviour policy.

* :func:`published_score`: the ScorePen-MORL paper's Table 1 / Table 2 normalized score of a suite
  preset on a dataset type (``configs/published.toml``, each table's source cited there);
* :data:`BARS` / :func:`bar_result`: the one place that says what "beats the behaviour policy"
  means per dataset level (issue 10: every medium-replay dataset: above the behaviour policy's
  normalized score; halfcheetah-medium: at least 5 points above it, here for every medium dataset);
* :data:`COMPARABILITY`: the fixed paragraph the suite's results.md ends with.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pyscorepen.configs import dataset_key, tomllib

PUBLISHED_FILE = Path(__file__).with_name("configs") / "published.toml"

COMPARABILITY = (
    "**What can be compared.** Our numbers come from Gymnasium v5 MuJoCo (the `mujoco` bindings) and "
    "from our own Minari datasets, collected by `python -m pyscorepen.collect` with our own SAC "
    "behaviour policies, after the gradient-step budget stated above. The published numbers (\"paper\", "
    "ScorePen-MORL paper Tables 1 and 2, MOPO as reproduced by the MOBILE paper) are D4RL v2: MuJoCo v3 "
    "through mujoco-py, D4RL's behaviour policies and dataset sizes, and 1M-3M gradient steps. The "
    "dynamics, the data and the budget all differ, so a cell is not expected to match its paper value. "
    "What is comparable: the ranking of the algorithms on one dataset, and each algorithm's gap to the "
    "behaviour policy of its own data (our Behaviour column; the papers print no behaviour score, "
    "their BC column is the nearest published reference)."
)


@dataclass(frozen=True)
class Bar:
    """An issue-10 bar: the algorithm's mean normalized score minus the behaviour policy's must be
    above ``margin`` (``strict``) or at least ``margin``."""
    margin: float
    strict: bool

    def passes(self, score: float, behaviour: float) -> bool:
        gap = score - behaviour
        return gap > self.margin if self.strict else gap >= self.margin

    def describe(self) -> str:
        if self.strict and self.margin == 0:
            return "> behaviour"
        return f"{'>' if self.strict else '≥'} behaviour + {self.margin:g}"


BARS: dict[str, Bar] = {
    "medium-replay": Bar(0.0, strict=True),   # issue 10: "beat the behaviour policy's normalized score"
    "medium": Bar(5.0, strict=False),         # issue 10: halfcheetah-medium "beats it by >= 5 points"
}
"""Issue 10's bars per dataset level (the part of the dataset key after the robot)."""


@lru_cache(maxsize=4)
def load_published(path: str | None = None) -> dict:
    with open(path or PUBLISHED_FILE, "rb") as f:
        return tomllib.load(f)


def published_score(algo: str, task: str, path: str | None = None) -> float | None:
    """The published normalized score of suite preset ``algo`` on ``task``'s dataset type
    (``pyscorepen/hopper/medium-replay-v0`` -> hopper-medium-replay), or None."""
    key = dataset_key(task)
    return load_published(path).get("mean", {}).get(algo, {}).get(key) if key else None


def published_std(algo: str, task: str, path: str | None = None) -> float | None:
    key = dataset_key(task)
    return load_published(path).get("std", {}).get(algo, {}).get(key) if key else None


def published_source(algo: str, path: str | None = None) -> str | None:
    return load_published(path).get("source", {}).get(algo)


def bar_for(task: str) -> Bar | None:
    """The bar of ``task``'s dataset level, or None (no bar for random / expert / other data)."""
    key = dataset_key(task)
    if not key:
        return None
    _, _, level = key.partition("-")
    return BARS.get(level)


def bar_result(task: str, score: float | None, behaviour: float | None) -> str:
    """'pass' / 'fail' for the bar of ``task``'s level; '' where there is no bar or no number."""
    bar = bar_for(task)
    if bar is None or score is None or behaviour is None:
        return ""
    return "pass" if bar.passes(score, behaviour) else "fail"
