"""Property-based tests (hypothesis): random bad input gives a clean error or a correct result.

* the Minari loader on random corruptions of a real tiny dataset (truncation, flipped bytes,
  wrong dims, NaN/inf, missing keys, wrong lengths), with and without collect's checksums;
* the train config parser on random flag values, against an oracle written here
  independently of the ranges in the docstrings.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyscorepen.errors import PyScorePenError
from pyscorepen.tasks.minari_task import CHECKSUMS_FILE, load_minari_task

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(dataset folder, the loaded original) of a tiny Hopper-v5 dataset written by collect."""
    from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
    root = tmp_path_factory.mktemp("prop_datasets")
    env = _make_env("Hopper-v5")
    episodes = rollout_episodes(env, RandomPolicy(env.action_space, 0), 60, 0, progress=False)
    assert len(episodes) >= 2
    write_dataset("test/hopper/prop-v0", episodes, "Hopper-v5", root, -20.0, 3234.3, 2, "property test")
    folder = root / "test/hopper/prop-v0"
    return folder, load_minari_task(str(folder)).dataset


def same_data(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.obs, b.obs), (a.actions, b.actions), (a.rewards, b.rewards),
                                              (a.next_obs, b.next_obs), (a.terminals, b.terminals)))


def copy_of(folder: Path, tmp: str, keep_checksums: bool) -> Path:
    target = Path(tmp) / "ds"
    shutil.copytree(folder, target)
    if not keep_checksums:
        (target / CHECKSUMS_FILE).unlink()
    return target


byte_corruption = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(["main_data.hdf5", "metadata.json"]), st.floats(0.0, 0.999)),
    st.tuples(st.just("flip"), st.sampled_from(["main_data.hdf5", "metadata.json"]),
              st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)), min_size=1, max_size=4)),
)


def apply_bytes(path: Path, corruption) -> None:
    kind, name, arg = corruption
    target = path / "data" / name
    data = bytearray(target.read_bytes())
    if kind == "truncate":
        data = data[: int(len(data) * arg)]
    else:
        for where, mask in arg:
            data[int(len(data) * where)] ^= mask
    target.write_bytes(bytes(data))


@SETTINGS
@given(corruption=byte_corruption, keep_checksums=st.booleans())
def test_loader_byte_corruption(dataset, corruption, keep_checksums):
    """Truncated or bit-flipped files: a clean error, or (checksummed) exactly the original data.
    Without checksums a flipped data byte cannot be detected; the load must then still be
    well-formed (finite float32 tensors of the env's dims)."""
    folder, original = dataset
    with tempfile.TemporaryDirectory() as tmp:
        path = copy_of(folder, tmp, keep_checksums)
        apply_bytes(path, corruption)
        try:
            task = load_minari_task(str(path))
        except PyScorePenError as err:
            event(f"clean error: {type(err).__name__}")
            assert "\n" not in str(err).strip() and str(path) in str(err) or "test/hopper/prop-v0" in str(err)
            return
        event("loaded")
        data = task.dataset
        if keep_checksums:
            assert same_data(data, original), f"{corruption}: a checksummed dataset loaded different data"
        assert data.obs.shape[1] == 11 and data.actions.shape[1] == 3
        assert all(torch.isfinite(t).all() for t in (data.obs, data.actions, data.rewards, data.next_obs))


semantic_corruption = st.one_of(
    st.tuples(st.just("missing"), st.integers(0, 1), st.sampled_from(FIELDS)),
    st.tuples(st.just("nonfinite"), st.integers(0, 1), st.sampled_from(["observations", "actions", "rewards"]),
              st.floats(0, 0.999), st.sampled_from([math.nan, math.inf, -math.inf])),
    st.tuples(st.just("width"), st.integers(0, 1), st.sampled_from(["observations", "actions"]),
              st.integers(1, 20)),
    st.tuples(st.just("rows"), st.integers(0, 1), st.sampled_from(FIELDS), st.sampled_from([-1, 1])),
)


def apply_semantic(path: Path, corruption) -> bool:
    """Edit the HDF5 file; returns False when the edit is a no-op (same width)."""
    kind, episode, name, *rest = corruption
    with h5py.File(path / "data" / "main_data.hdf5", "r+") as f:
        group = f[f"episode_{episode}"]
        value = group[name][()]
        if kind == "missing":
            del group[name]
            return True
        if kind == "nonfinite":
            where, bad = rest
            flat = value.reshape(-1).astype(np.float64)
            flat[int(len(flat) * where)] = bad
            new = flat.reshape(value.shape).astype(value.dtype)
        elif kind == "width":
            width = rest[0]
            if width == value.shape[1]:
                return False
            new = np.resize(value, (value.shape[0], width)).astype(value.dtype)
        else:
            new = value[:-1] if rest[0] < 0 else np.concatenate([value, value[-1:]])
        del group[name]
        group[name] = new
    return True


@SETTINGS
@given(corruption=semantic_corruption, drop=st.booleans())
def test_loader_semantic_corruption(dataset, corruption, drop):
    """Wrong dims, NaN/inf, missing keys, wrong lengths (no checksums, so the field checks must catch
    them): a clean error naming the episode, or with --drop-invalid-episodes a load without it."""
    folder, original = dataset
    with tempfile.TemporaryDirectory() as tmp:
        path = copy_of(folder, tmp, keep_checksums=False)
        if not apply_semantic(path, corruption):
            return
        try:
            task = load_minari_task(str(path), drop_invalid_episodes=drop)
        except PyScorePenError as err:
            event(f"clean error ({corruption[0]})")
            assert f"episode {corruption[1]}" in str(err) or "no valid episode" in str(err), str(err)
            if not drop and corruption[0] in ("nonfinite", "width"):
                assert "--drop-invalid-episodes" in str(err)
            return
        event(f"loaded, dropped ({corruption[0]})")
        assert drop, f"{corruption}: a corrupt episode was loaded without --drop-invalid-episodes"
        dropped = [d["episode"] for d in task.info["dropped_episodes"]]
        assert dropped == [corruption[1]]
        data = task.dataset
        assert len(data) < len(original)
        assert all(torch.isfinite(t).all() for t in (data.obs, data.actions, data.rewards, data.next_obs))


# ------------------------------------------------------------------------------------ config parser
def _int(lo, hi=math.inf):
    return "int", lambda v: lo <= v <= hi


def _float(lo, hi=math.inf, lo_open=False, hi_open=True):
    def ok(v):
        return (math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))
    return "float", ok


ORACLE = {   # flag -> (type, valid value), written from the meaning of each option
    "--steps": _int(1), "--batch-size": _int(1), "--eval-interval": _int(1), "--eval-episodes": _int(1),
    "--seed": _int(0, 2**32 - 1), "--beta": _float(0), "--mopo-lambda": _float(0),
    "--real-ratio": _float(0, 1, hi_open=False), "--rollout.length": _int(1), "--rollout.freq": _int(1),
    "--rollout.batch-size": _int(1), "--sac.gamma": _float(0, 1), "--sac.tau": _float(0, 1, True, False),
    "--sac.actor-lr": _float(0, lo_open=True), "--dynamics.ensemble-size": _int(1),
    "--dynamics.num-elites": _int(1), "--dynamics.holdout-ratio": _float(0, 1, lo_open=True),
    "--score.train-steps": _int(1), "--combo.temperature": _float(0, lo_open=True), "--dataset-size": _int(1),
    "--max-action": _float(0, lo_open=True),
}

value_text = st.one_of(
    st.sampled_from(["0", "1", "0.0", "1.0", "1.5", "-1", "2", "4294967295", "4294967296"]),   # range edges
    st.integers(-5, 2**33).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["abc", "", "1.5.2", "0x10", "1e3", "-0", "nan", "-inf", "1e309"]),
)


def parse_number(kind: str, text: str):
    """What the flag's type accepts (None: not a number of that kind)."""
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        return None


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(draws=st.dictionaries(st.sampled_from(sorted(ORACLE)),
                             st.tuples(st.booleans(), value_text, st.integers(1, 50), st.floats(0.01, 0.99)),
                             min_size=1, max_size=4))
def test_config_parser_random_values(draws, capsys):
    # half the values are plausible for the flag's type (so that valid configs are drawn too)
    flags = {flag: (str(i) if ORACLE[flag][0] == "int" else repr(x)) if plausible else text
             for flag, (plausible, text, i, x) in draws.items()}
    from pyscorepen.train import parse_config
    from pyscorepen.validation import ConfigError
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*(a for flag, text in flags.items() for a in (flag, text)), "--out", f"{tmp}/run"]
        parsed = {flag: parse_number(ORACLE[flag][0], text) for flag, text in flags.items()}
        valid = all(v is not None and ORACLE[f][1](v) for f, v in parsed.items())
        elites = parsed.get("--dynamics.num-elites", 5)
        members = parsed.get("--dynamics.ensemble-size", 7)
        if valid and elites > members:
            valid = False
        try:
            config = parse_config(argv)
        except SystemExit as exit_:
            event("parse error")
            assert exit_.code == 2
            assert not valid, f"{argv}: refused by the parser, but valid"
            return
        except ConfigError as err:
            event("ConfigError")
            assert not valid, f"{argv}: refused ({err}), but valid"
            assert any(flag in str(err) for flag in flags), str(err)
            return
        finally:
            capsys.readouterr()
            assert not Path(tmp, "run").exists()
        event("accepted")
        assert valid, f"{argv}: accepted, but invalid"
        for flag, value in parsed.items():
            group, _, name = flag[2:].replace("-", "_").rpartition(".")
            owner = getattr(config, group) if group else config
            if not hasattr(owner, name):
                owner = config.cliff
            assert getattr(owner, name) == value, flag


EDGES = ("0", "1", "-1", "0.5", "1.5", "nan", "inf", "4294967296")


@pytest.mark.parametrize("flag", sorted(ORACLE))
def test_config_parser_range_edges(flag, tmp_path, capsys):
    """Each flag at the values where ranges usually end: accepted exactly when the oracle says so."""
    from pyscorepen.train import parse_config
    from pyscorepen.validation import ConfigError
    kind, ok = ORACLE[flag]
    for text in EDGES:
        value = parse_number(kind, text)
        valid = value is not None and ok(value)
        if valid and "num-elites" in flag or "ensemble-size" in flag:   # elites <= members (default 5 of 7)
            valid = valid and (value <= 7 if "num-elites" in flag else value >= 5)
        try:
            parse_config([flag, text, "--out", str(tmp_path / "run")])
            accepted = True
        except (SystemExit, ConfigError):
            accepted = False
        capsys.readouterr()
        assert accepted == valid, f"{flag} {text}: accepted={accepted}, oracle says valid={valid}"
