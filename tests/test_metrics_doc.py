"""docs/metrics.md lists every key a run writes (metrics.jsonl, summary.json, pretrain.json), and
nothing it never writes: short real runs of every algorithm and penalty plug-in are checked
against its tables."""
import json
import re
from pathlib import Path

import pytest

from pyscorepen import runs
from pyscorepen.config import TrainConfig, apply_overrides
from pyscorepen.train import run
from tests.test_algorithms import TINY

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
PLACEHOLDERS = {"<p>": r"[0-9]+(?:_[0-9]+)?", "<name>": r"[a-z_]+"}

# every algorithm, and every penalty plug-in (score, uncertainty and count stored, mobile at target time)
RUNS = {"scorepen-all-penalties": ("scorepen", {"penalties": ("score", "uncertainty", "count", "mobile")}),
        "combo": ("combo", {}), "sac": ("sac", {}), "mopo": ("mopo", {})}


def documented_keys() -> list[str]:
    keys = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert len(keys) > 30, "could not parse docs/metrics.md"
    return keys


def pattern(key: str) -> re.Pattern:
    text = re.escape(key)
    for placeholder, regex in PLACEHOLDERS.items():
        text = text.replace(re.escape(placeholder), regex)
    return re.compile(text + r"\Z")


@pytest.fixture(scope="module")
def written_keys(tmp_path_factory) -> dict[str, set[str]]:
    """{file: keys} over short real runs of every algorithm on the cliff task."""
    root = tmp_path_factory.mktemp("metrics")
    keys: dict[str, set[str]] = {runs.METRICS: set(), runs.SUMMARY: set(), runs.PRETRAIN: set()}
    for name, (algo, extra) in RUNS.items():
        out = root / name
        run(apply_overrides(TrainConfig(algo=algo, out=str(out)), {**TINY, **extra}))
        for line in (out / runs.METRICS).read_text().splitlines():
            keys[runs.METRICS] |= set(json.loads(line))
        keys[runs.SUMMARY] |= set(json.loads((out / runs.SUMMARY).read_text()))
        if (out / runs.PRETRAIN).exists():
            keys[runs.PRETRAIN] |= set(json.loads((out / runs.PRETRAIN).read_text()))
    return keys


def test_every_written_key_is_documented(written_keys):
    patterns = [pattern(k) for k in documented_keys()]
    for file, keys in written_keys.items():
        missing = sorted(k for k in keys if not any(p.match(k) for p in patterns))
        assert not missing, f"{file} keys missing from docs/metrics.md: {missing}"
    assert {"rollout/raw_score_mean", "rollout/raw_count_mean", "penalty/mobile", "combo/q_gap",
            "var_5"} <= written_keys[runs.METRICS]


def test_every_documented_key_is_written(written_keys):
    everything = set().union(*written_keys.values())
    stale = [k for k in documented_keys() if not any(pattern(k).match(w) for w in everything)]
    assert not stale, f"docs/metrics.md documents keys no run writes: {stale}"
