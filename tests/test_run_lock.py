"""One process per run folder: :class:`pyscorepen.runs.RunLock` (an flock on ``<run>/.lock``).

The same command started twice, or two suites sharing an --out, would otherwise train into one
folder and overwrite each other's checkpoints. The second start must fail at once with a clear
error that names the holder, touch nothing, and work again as soon as the holder is gone
(even after ``kill -9``: the OS drops the lock with the process).
"""
import os
import signal
import subprocess
import sys

import pytest

from pyscorepen import runs
from pyscorepen.train import main as train_main
from tests.test_checkpoints import ARGS, ENV

HOLD = ("import sys, time; from pyscorepen.runs import RunLock; RunLock(sys.argv[1]).__enter__(); "
        "print('locked', flush=True); time.sleep(120)")


def hold_lock(folder):
    """A separate process holding the folder's lock (like a training run)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_and_the_lock_is_reusable(tmp_path):
    folder = tmp_path / "run"
    with runs.RunLock(folder):
        assert f"pid {os.getpid()}" in (folder / ".lock").read_text()
        with pytest.raises(runs.RunInUseError, match=rf"in use by another process \(pid {os.getpid()} on "):
            runs.RunLock(folder).__enter__()
    with runs.RunLock(folder):   # released on exit
        pass


def test_lock_dies_with_its_process_even_on_sigkill(tmp_path):
    proc = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(runs.RunInUseError, match=rf"pid {proc.pid} on "):
            runs.RunLock(tmp_path / "run").__enter__()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with runs.RunLock(tmp_path / "run"):   # no stale lock to clean up
        pass


def test_train_refuses_a_folder_in_use_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    proc = hold_lock(out)
    try:
        before = sorted(p.name for p in out.iterdir())
        code = train_main([*ARGS, "--out", str(out), "--threads", "1"])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by another process" in err and f"pid {proc.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == before == [".lock"]   # no config.json, nothing else
        code = train_main([*ARGS, "--out", str(out), "--threads", "1", "--pretrain-only"])
        assert code == 2 and "is in use by another process" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def test_collect_refuses_a_run_folder_in_use(tmp_path, capsys):
    from pyscorepen.collect import main as collect_main
    run_dir = tmp_path / "collect"
    proc = hold_lock(run_dir)
    try:
        code = collect_main(["--env-id", "Hopper-v5", "--levels", "random", "--steps", "10", "--dataset-size", "10",
                             "--datasets-path", str(tmp_path / "data"), "--run-dir", str(run_dir),
                             "--no-reproducible", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "--run-dir" in err and "is in use by another process" in err, err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


@pytest.mark.parametrize("kernel_table", [True, False], ids=["proc-locks", "pid-fallback"])
def test_holder_reports_a_live_holder_without_taking_the_lock(tmp_path, monkeypatch, kernel_table):
    """``RunLock.holder`` (the suite's --status): None for a folder nobody locked, the holder's text
    while a process holds the lock, None again once it is gone, and the probe itself never makes a
    run that starts at the same time fail. Linux reads /proc/locks; elsewhere the pid is checked."""
    if not kernel_table:
        monkeypatch.setattr(runs, "_proc_locks", lambda: None)
    elif runs._proc_locks() is None:
        pytest.skip("no /proc/locks here")
    folder = tmp_path / "run"
    assert runs.RunLock.holder(folder) is None                           # no folder, no lock file
    proc = hold_lock(folder)
    try:
        text = runs.RunLock.holder(folder)
        assert text is not None and text.startswith(f"pid {proc.pid} on ")
        with pytest.raises(runs.RunInUseError):                          # still held by the other process
            runs.RunLock(folder).__enter__()
    finally:
        proc.kill()
        proc.wait()
    assert runs.RunLock.holder(folder) is None                           # gone (kill -9): nobody holds it
    with runs.RunLock(folder):                                            # and the folder is usable again
        assert runs.RunLock.holder(folder).startswith(f"pid {os.getpid()} on ")
