"""configs/published.toml (ScorePen-MORL paper Tables 1 and 2) and issue 10's bars (pyscorepen.published)."""
import pytest

from pyscorepen.published import (BARS, PUBLISHED_FILE, bar_for, bar_result, load_published, published_score,
                                  published_source, published_std)

DATASETS = [f"{env}-{level}" for env in ("halfcheetah", "hopper", "walker2d")
            for level in ("random", "medium", "medium-replay", "medium-expert")]


def test_every_table_has_all_twelve_datasets_and_a_source():
    table = load_published()
    assert set(table["mean"]) == {"bc", "mopo", "combo", "mobile", "scorepen", "scorepen+mobile", "scorepen+count"}
    for algo, scores in table["mean"].items():
        assert sorted(scores) == sorted(DATASETS), algo
        assert "D4RL v2" in table["source"][algo] and "Table" in table["source"][algo]
    for algo, stds in table["std"].items():
        assert sorted(stds) == sorted(DATASETS) and all(s >= 0 for s in stds.values()), algo


@pytest.mark.parametrize("algo, average", [
    # the papers' "Average" rows: a typo in any of the 12 entries would move the mean
    ("bc", 36.5), ("mopo", 70.3), ("combo", 66.8), ("mobile", 80.0), ("scorepen", 82.0),   # Table 1
    ("scorepen+count", 80.4), ("scorepen+mobile", 81.2),                                     # Table 2 (w/ ours)
])
def test_entries_reproduce_the_papers_average_rows(algo, average):
    scores = load_published()["mean"][algo]
    assert round(sum(scores.values()) / len(scores), 1) == average


@pytest.mark.parametrize("algo, average", [("mobile", 1.7), ("scorepen", 1.1), ("scorepen+count", 0.9),
                                           ("scorepen+mobile", 1.2)])
def test_stds_reproduce_the_papers_average_rows(algo, average):
    stds = load_published()["std"][algo]
    assert round(sum(stds.values()) / len(stds), 1) == average


def test_lookup_by_suite_preset_and_task_id():
    assert published_score("mopo", "pyscorepen/halfcheetah/medium-v0") == 73.0
    assert published_score("scorepen", "mujoco/hopper/medium-replay-v0") == 105.8
    assert published_std("scorepen", "mujoco/hopper/medium-replay-v0") == 0.6
    assert published_score("scorepen+mobile", "x/hopper/medium-replay-v0") == 104.3
    assert published_score("mopo", "cliff") is None and published_score("sac", "x/hopper/medium-v0") is None
    assert published_std("mopo", "x/hopper/medium-v0") is None    # Table 1 prints no std for MOPO
    assert "MOBILE paper" in published_source("mopo")


def test_file_ships_as_package_data():
    from pyscorepen.configs import tomllib   # tomli on Python 3.10
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    assert PUBLISHED_FILE.parent.name == "configs" and PUBLISHED_FILE.is_file()
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "**/*.toml" in package_data["pyscorepen"]
    assert "recursive-include pyscorepen *.toml" in (root / "MANIFEST.in").read_text()


def test_bars_per_dataset_level():
    assert set(BARS) == {"medium", "medium-replay"}
    # medium-replay: strictly above the behaviour policy
    assert bar_result("x/hopper/medium-replay-v0", 30.1, 30.0) == "pass"
    assert bar_result("x/hopper/medium-replay-v0", 30.0, 30.0) == "fail"
    # medium: at least 5 points above it
    assert bar_result("pyscorepen/halfcheetah/medium-v0", 45.0, 40.0) == "pass"
    assert bar_result("pyscorepen/halfcheetah/medium-v0", 44.9, 40.0) == "fail"
    # no bar, or no numbers: no verdict
    assert bar_result("x/hopper/random-v0", 99.0, 1.0) == "" and bar_for("x/hopper/medium-expert-v0") is None
    assert bar_result("x/hopper/medium-v0", None, 1.0) == "" and bar_result("cliff", 1.0, 0.0) == ""
    assert bar_for("x/hopper/medium-v0").describe() == "≥ behaviour + 5"
    assert bar_for("x/hopper/medium-replay-v0").describe() == "> behaviour"
