"""Runs every row of docs/bad_inputs.md: exit status, message, and nothing written on refusal.

The table is the specification: this test parses it, so the documentation cannot drift from
the code. Rows run in-process (``main(argv)`` of each entry point) to stay fast.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import shlex
import shutil
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pyscorepen.tasks.minari_task import CHECKSUMS_FILE

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`([^`]+)`\s*\|(.*)\|\s*(\d+)\s*\|\s*`([^`]+)`\s*\|\s*$")
TINY = re.search(r"^Tiny options: `([^`]+)`", DOC.read_text(), re.M).group(1).split()


def table() -> list[tuple[int, str, str, int, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2), m.group(3).strip(), int(m.group(4)), m.group(5)))
    return rows


CASES = table()


def test_table_is_complete():
    """Every case the issue lists (and more) is in the table, numbered 1..n."""
    assert [c[0] for c in CASES] == list(range(1, len(CASES) + 1))
    commands = " ".join(c[1] for c in CASES)
    for needle in ("--algo foo", "--penalties foo", "--dynamics.num-elites 10", "--rollout.length 0",
                   "--goal 100 100", "--beta -1", "--beta nan", "--sac.gamma 1.5", "--batch-size 0", "--steps 0",
                   "--steps -5", "--eval-interval 0", "--rollout.freq 0", "--eval-episodes 0", "--device cuda",
                   "--pretrained-from {tmp}/missing", "collect --env-id Foo-v5", "--debug"):
        assert needle in commands, needle
    setups = " ".join(c[2] for c in CASES)
    for needle in ("truncated HDF5", "truncated newest `checkpoint-4.pt`", "truncated `policy.pt`", "truncated `dynamics.pt`",
                   "cut `config.json`", "cut last `metrics.jsonl` line", "a file", "read-only"):
        assert needle in setups, needle


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    import os
    from pyscorepen.train import main
    folder = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(folder)   # `--out run`, as the rows use it (relative to the test folder), is stored in config.json
    try:
        assert main([*TINY, "--out", "run"]) == 0
    finally:
        os.chdir(cwd)
    return folder / "run"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from pyscorepen.collect import RandomPolicy, _make_env, rollout_episodes, write_dataset
    root = tmp_path_factory.mktemp("datasets")
    env = _make_env("Hopper-v5")
    episodes = rollout_episodes(env, RandomPolicy(env.action_space, 0), 80, 0, progress=False)
    write_dataset("test/hopper/tiny-v0", episodes, "Hopper-v5", root, -20.0, 3234.3, 2, "bad-inputs test")
    return root / "test/hopper/tiny-v0"


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _h5(data: Path, edit) -> None:
    (data / CHECKSUMS_FILE).unlink()
    with h5py.File(data / "data" / "main_data.hdf5", "r+") as f:
        edit(f)


def _narrow(f) -> None:
    for name in list(f):
        obs = f[name]["observations"][:, :10]
        del f[name]["observations"]
        f[name]["observations"] = obs


def _nan_reward(f) -> None:
    f["episode_0"]["rewards"][0] = np.nan


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _hdf5(ctx) -> Path:
    return ctx["data"] / "data" / "main_data.hdf5"


SETUPS = {
    "": lambda ctx: None,
    "finished run": lambda ctx: None,
    "no CUDA": lambda ctx: torch.cuda.is_available() and pytest.skip("this machine has CUDA"),
    "a file `{tmp}/afile`": lambda ctx: (ctx["tmp"] / "afile").write_text("not a folder\n"),
    "a read-only folder": lambda ctx: Path("/sys/fs").is_dir() or pytest.skip("no /sys/fs on this system"),
    "truncated `dynamics.pt`": lambda ctx: _cut(ctx["run"] / "dynamics.pt"),
    "truncated newest `checkpoint-4.pt`": lambda ctx: _cut(ctx["run"] / "checkpoint-4.pt"),
    "every `checkpoint-<step>.pt` truncated": lambda ctx: [_cut(p) for p in ctx["run"].glob("checkpoint-*.pt")],
    "truncated `policy.pt`": lambda ctx: _cut(ctx["run"] / "policy.pt"),
    "truncated `checkpoint-4.pt`, no `policy.pt`": lambda ctx: (_cut(ctx["run"] / "checkpoint-4.pt"),
                                                                (ctx["run"] / "policy.pt").unlink()),
    "every `checkpoint-<step>.pt` truncated, no `policy.pt`": lambda ctx: (
        [_cut(p) for p in ctx["run"].glob("checkpoint-*.pt")], (ctx["run"] / "policy.pt").unlink()),
    "cut `config.json`": lambda ctx: _cut(ctx["run"] / "config.json"),
    "cut `summary.json`": lambda ctx: _cut(ctx["run"] / "summary.json"),
    "cut last `metrics.jsonl` line": lambda ctx: _cut(ctx["run"] / "metrics.jsonl", 0.98),
    "truncated HDF5": lambda ctx: _cut(_hdf5(ctx)),
    "one HDF5 byte flipped": lambda ctx: _flip(_hdf5(ctx)),
    "truncated HDF5, no checksums": lambda ctx: ((ctx["data"] / CHECKSUMS_FILE).unlink(), _cut(_hdf5(ctx))),
    "HDF5 key deleted, no checksums": lambda ctx: _h5(ctx["data"], lambda f: f["episode_0"].__delitem__("actions")),
    "observations 10 wide, no checksums": lambda ctx: _h5(ctx["data"], _narrow),
    "a NaN reward, no checksums": lambda ctx: _h5(ctx["data"], _nan_reward),
}


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: content hash} of every file and folder under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def invoke(command: str, argv: list[str]) -> tuple[int, str]:
    """Run ``python -m pyscorepen.<command> argv`` in-process: (exit status, traceback text if any)."""
    main = importlib.import_module(f"pyscorepen.{command}").main
    try:
        return main(argv), ""
    except SystemExit as exit_:
        return int(exit_.code or 0), ""
    except Exception:  # noqa: BLE001 - what an uncaught exception gives a real process: status 1
        return 1, traceback.format_exc()


@pytest.mark.parametrize("number,command,setup,status,message", CASES, ids=[f"case{c[0]}" for c in CASES])
def test_bad_input(number, command, setup, status, message, tmp_path, monkeypatch, capsys, caplog,
                   request):
    assert setup in SETUPS, f"case {number}: unknown setup {setup!r}; add it to SETUPS"
    monkeypatch.chdir(tmp_path)      # a command that wrongly writes runs/... writes it here
    ctx = {"tmp": tmp_path}
    if "{run}" in command:
        ctx["run"] = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("finished_run"), ctx["run"])
    if "{data}" in command:
        ctx["data"] = tmp_path / "data"
        shutil.copytree(request.getfixturevalue("tiny_dataset"), ctx["data"])
    SETUPS[setup](ctx)
    words = shlex.split(command.format(out=tmp_path / "out", run="run", data=ctx.get("data"), tmp=tmp_path))
    module, argv = words[0], words[1:]
    if module == "train":
        argv = TINY + argv
    before = snapshot(tmp_path)
    caplog.set_level(logging.INFO)
    code, trace = invoke(module, argv)
    captured = capsys.readouterr()
    text = captured.err + captured.out + caplog.text + trace
    assert code == status, f"case {number}: exit {code}, expected {status}\n{text[-3000:]}"
    assert message in text, f"case {number}: {message!r} not in the output:\n{text[-3000:]}"
    if status == 1:
        return
    assert "Traceback" not in text, f"case {number}: a traceback was printed\n{text[-3000:]}"
    if status == 0 and "run" in ctx:    # recovered: the run folder is whole again
        summary = json.loads((ctx["run"] / "summary.json").read_text())
        rows = [json.loads(line) for line in (ctx["run"] / "metrics.jsonl").read_text().splitlines()]
        assert summary["steps"] == 4 and rows and rows[-1]["step"] <= 4
    if status != 0:
        assert snapshot(tmp_path) == before, f"case {number}: a refused command created or changed files"
        assert not (tmp_path / "out").exists()
        assert text.count("error:") == 1 or "Error parsing" in text
