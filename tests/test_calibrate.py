"""Per-machine calibration of the automatic CPU policy (``python -m pyscorepen.calibrate``,
:mod:`pyscorepen.ops.calibration`): the threshold and limit rules, the file and its key, what auto
then picks, and a resumed run that keeps the policy it started with."""
import json
import signal

import pytest
import torch

from pyscorepen import ops, runs
from pyscorepen.calibrate import main as calibrate_main
from pyscorepen.ops import backend, calibration
from pyscorepen.ops.workloads import SWEEPS

needs_extension = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="C++ extension not built")
NEVER = calibration.NEVER


def test_threshold_is_where_cpp_wins_at_every_larger_batch():
    rule = calibration.min_rows_threshold
    assert rule({1: 0.5, 16: 1.1, 64: 1.2, 4096: 2.0}) == 16
    assert rule({1: 0.5, 16: 1.1, 64: 0.97, 256: 1.1, 4096: 2.0}) == 256   # a loss at 64 moves it past 64
    assert rule({1: 1.3, 16: 1.2}) == 1
    assert rule({32: 1.2, 256: 1.1, 1024: 0.96}) == NEVER                  # loses at the largest: never
    assert rule({256: 1.0}) == 256                                          # a tie is not slower
    assert NEVER == backend.NEVER


def test_limit_is_where_cpp_wins_at_every_smaller_batch():
    rule = calibration.max_rows_limit
    assert rule({32: 1.7, 256: 1.1, 1024: 0.94, 4096: 0.8}) == 256
    assert rule({32: 1.7, 256: 0.9, 1024: 1.1, 4096: 1.2}) == 32         # a loss at 256 stops it below 256
    assert rule({32: 1.7, 256: 1.4, 1024: 1.2, 4096: 1.0}) == NEVER       # won everywhere: no limit
    assert rule({32: 0.9, 256: 1.2}) == 0                                 # lost at the smallest: never


@pytest.fixture(autouse=True)
def untuned_allocator(monkeypatch):
    """The CLI tunes glibc's allocator as the training CLIs do; never in the test process."""
    monkeypatch.setenv("PYSCOREPEN_MALLOC", "default")


@pytest.fixture
def policy_file(tmp_path, monkeypatch):
    """A calibration file of this test alone; the lookup cache is cleared around the test."""
    path = tmp_path / "cpu_policy.json"
    monkeypatch.setenv(calibration.ENV_VAR, str(path))
    calibration.clear_cache()
    yield path
    calibration.clear_cache()


def write(path, thresholds, threads=1, limits=None, **key):
    entry = calibration.new_entry(backend.cpu_isa(), threads, thresholds, {}, rounds=1, limits=limits)
    entry["machine"].update(key)
    calibration.write_entry(path, entry)
    calibration.clear_cache()
    return entry


def test_every_policy_class_is_calibrated():
    from typing import get_args

    from pyscorepen.calibrate import ShapeClass
    assert set(get_args(ShapeClass)) == set(SWEEPS) == set(backend.CPP_MIN_ROWS) | set(backend.CPP_MAX_ROWS)
    assert not set(backend.CPP_MIN_ROWS) & set(backend.CPP_MAX_ROWS)   # one rule per class


def test_without_the_extension_the_cli_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(calibration.ENV_VAR, str(tmp_path / "cpu_policy.json"))
    monkeypatch.setattr(backend, "cpu_isa", lambda: None)
    assert calibrate_main(["--rounds", "1", "--threads", "1"]) == 2
    assert "the C++ extension is not loaded" in capsys.readouterr().err
    assert not (tmp_path / "cpu_policy.json").exists()


def test_the_file_location(monkeypatch, tmp_path):
    monkeypatch.delenv(calibration.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibration.policy_file() == tmp_path / "pyscorepen" / "cpu_policy.json"
    monkeypatch.setenv(calibration.ENV_VAR, str(tmp_path / "mine.json"))
    assert calibration.policy_file() == tmp_path / "mine.json"
    monkeypatch.setenv(calibration.ENV_VAR, "builtin")
    assert calibration.policy_file() is None


@needs_extension
def test_auto_follows_this_machines_calibration_only(policy_file, one_thread, monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    builtin = backend.builtin_min_rows("score_penalty", backend.cpu_isa())
    write(policy_file, {"score_penalty": 300, "soft_value": NEVER})
    assert backend.cpp_min_rows("score_penalty") == 300
    assert backend.cpp_min_rows("rollout_step") == backend.builtin_min_rows("rollout_step", backend.cpu_isa())
    x = torch.zeros(4, 23)
    assert ops.resolve_backend("score_penalty", x, rows=299) == "ref"
    assert ops.resolve_backend("score_penalty", x, rows=300) == "cpp"
    assert ops.resolve_backend("soft_value", x, rows=50_000) == "ref"              # never: the reference
    assert ops.resolve_backend("soft_value", x, backend="cpp", rows=50_000) == "cpp"   # explicit wins
    policy = backend.cpu_policy()
    assert policy["source"] == "calibrated" and policy["thresholds"]["score_penalty"] == 300

    torch.set_num_threads(2)   # calibrated at 1 thread only: the built-in tables at 2
    assert backend.cpp_min_rows("score_penalty") == builtin and backend.cpu_policy()["source"] == "built-in"
    torch.set_num_threads(1)
    with backend.forced_cpu_isa("generic"):   # another ISA: not this calibration
        assert backend.cpp_min_rows("score_penalty") == backend.builtin_min_rows("score_penalty", "generic")


@needs_extension
def test_the_fused_sac_update_follows_this_machines_limit(policy_file, one_thread, monkeypatch):
    """The fused SAC update runs up to its calibrated limit (critic rows; COMBO's sampled rows
    count), a pinned limit beats the calibration, and the workload's both sides run."""
    from tests.test_ops_sac_update import make_agent, make_batch
    from pyscorepen.algos import COMBO
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    builtin = backend.builtin_max_rows("sac_update", backend.cpu_isa())
    write(policy_file, {}, limits={"sac_update": 100})
    assert backend.cpp_max_rows("sac_update") == 100 and backend.cpu_policy()["limits"] == {"sac_update": 100}
    gen = torch.Generator().manual_seed(0)
    sac, combo = make_agent(5, 2, (16,), 2), make_agent(5, 2, (16,), 2, cls=COMBO)
    assert sac.fused_update_backend(make_batch(5, 2, 100, gen)) == "cpp"
    assert sac.fused_update_backend(make_batch(5, 2, 101, gen)) is None
    small = make_batch(5, 2, 4, gen)                     # 4 + 3 x 10 x 4 = 124 critic rows
    assert combo.fused_update_backend(small) is None
    with backend.pinned_cpu_policy({}, {"sac_update": 200}):
        assert combo.fused_update_backend(small) == "cpp"
    write(policy_file, {}, limits={"sac_update": 0})     # never
    assert sac.fused_update_backend(make_batch(5, 2, 1, gen)) is None
    torch.set_num_threads(2)                             # calibrated at 1 thread only
    assert backend.cpp_max_rows("sac_update") == builtin
    torch.set_num_threads(1)
    run = SWEEPS["sac_update"][1](8)
    run("cpp")
    run("ref")


@needs_extension
def test_limits_are_measured_last_under_the_thresholds_just_measured(monkeypatch, one_thread):
    """calibrate() measures the SAC update's limit after the thresholds, its module path under
    them (so the limit compares against what auto will run), and applies the limit rule."""
    import pyscorepen.calibrate as calibrate_module
    seen = []

    def fake_ratios(shape_class, rounds, threads, progress=None):
        seen.append((shape_class, backend.cpp_min_rows("soft_value")))
        if shape_class == "soft_value":
            return {1: 0.5, 16: 0.9, 64: 1.2, 256: 1.3, 12_150: 1.5}   # threshold 64
        return {32: 1.6, 256: 1.1, 1024: 0.95, 4096: 0.9}              # limit 256
    monkeypatch.setattr(calibrate_module, "measure_ratios", fake_ratios)
    entry = calibrate_module.calibrate(1, 1, ["sac_update", "soft_value"])
    assert [c for c, _ in seen] == ["soft_value", "sac_update"]
    assert seen[1][1] == 64
    assert entry["thresholds"] == {"soft_value": 64} and entry["limits"] == {"sac_update": 256}
    assert backend.cpp_min_rows("soft_value") == backend.builtin_min_rows("soft_value", backend.cpu_isa())


@needs_extension
def test_another_build_or_cpu_does_not_use_the_calibration(policy_file, one_thread):
    write(policy_file, {"score_penalty": 300}, build="0123456789abcdef")
    write(policy_file, {"score_penalty": 301}, cpu="some other CPU")
    assert len(calibration.read_entries(policy_file)) == 2
    assert backend.cpp_min_rows("score_penalty") == backend.builtin_min_rows("score_penalty", backend.cpu_isa())


@needs_extension
def test_calibrating_some_classes_keeps_the_others(policy_file, one_thread):
    write(policy_file, {"score_penalty": 300, "soft_value": 64})
    write(policy_file, {"soft_value": 16}, limits={"sac_update": 256})
    write(policy_file, {}, limits={})
    (entry,) = calibration.read_entries(policy_file)
    assert entry["thresholds"] == {"score_penalty": 300, "soft_value": 16}
    assert entry["limits"] == {"sac_update": 256}


@needs_extension
@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "entries": []}),
                                     json.dumps({"format": 1, "entries": [{"machine": {}, "thresholds": {"x": 0}}]}),
                                     json.dumps({"format": 1, "entries": [{"machine": {}, "thresholds": {},
                                                                           "limits": {"sac_update": -1}}]})])
def test_an_unusable_file_warns_and_the_builtin_policy_applies(policy_file, one_thread, content):
    policy_file.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the CPU policy calibration"):
        threshold = backend.cpp_min_rows("score_penalty")
    assert threshold == backend.builtin_min_rows("score_penalty", backend.cpu_isa())
    assert backend.cpp_max_rows("sac_update") == backend.builtin_max_rows("sac_update", backend.cpu_isa())


@needs_extension
def test_a_pinned_policy_beats_the_calibration(policy_file, one_thread):
    write(policy_file, {"score_penalty": 300})
    with backend.pinned_cpu_policy({"score_penalty": 7}):
        assert backend.cpp_min_rows("score_penalty") == 7
        assert backend.cpu_policy()["source"] == "pinned"
        assert backend.cpp_min_rows("rollout_step") == backend.builtin_min_rows("rollout_step", backend.cpu_isa())
    assert backend.cpp_min_rows("score_penalty") == 300


@needs_extension
def test_the_fit_step_follows_its_own_class(policy_file, one_thread, monkeypatch):
    """The dynamics fit runs its one-op step from the ``dynamics_fit_step`` threshold (op vs the
    module path), not the SiLU ensemble op's; the sweep's workload runs both sides."""
    from pyscorepen import allocator
    from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(allocator, "buffers_kept", lambda: True)   # as after the CLIs' tune_malloc
    dynamics = EnsembleDynamics(3, 2, DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(16,), batch_size=32))
    optim, x = dynamics.make_optimizer(1e-3), torch.zeros(3, 32, 5)
    write(policy_file, {"dynamics_fit_step": 32, "ensemble_mlp/silu": NEVER})
    assert dynamics.fused_step_backend(optim, x) == "cpp"
    write(policy_file, {"dynamics_fit_step": 33, "ensemble_mlp/silu": 1})
    assert dynamics.fused_step_backend(optim, x) is None
    run = SWEEPS["dynamics_fit_step"][1](8)
    run("cpp")
    run("ref")


@needs_extension
def test_the_cli_measures_writes_shows_and_forgets(policy_file, capsys):
    argv = ["--threads", "1", "--rounds", "1", "--shape-classes", "soft_value"]
    assert calibrate_main(argv) == 0
    (entry,) = calibration.read_entries(policy_file)
    sweep = SWEEPS["soft_value"][0]
    assert entry["machine"] == calibration.machine_key(backend.cpu_isa(), 1)
    assert sorted(int(b) for b in entry["ratios"]["soft_value"]) == sweep
    assert all(r > 0 for r in entry["ratios"]["soft_value"].values())
    ratios = {int(b): r for b, r in entry["ratios"]["soft_value"].items()}
    assert entry["thresholds"] == {"soft_value": calibration.min_rows_threshold(ratios)}
    out = capsys.readouterr().out
    assert "soft_value" in out and "written to" in out

    assert calibrate_main(["--show", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "calibrated policy" in out and str(policy_file) in out

    assert calibrate_main(["--threads", "1", "--rounds", "1", "--shape-classes", "score_penalty", "--dry-run"]) == 0
    assert set(calibration.read_entries(policy_file)[0]["thresholds"]) == {"soft_value"}   # nothing written

    assert calibrate_main(["--forget"]) == 0
    assert calibration.read_entries(policy_file) == []


@needs_extension
def test_the_cli_measures_the_automatic_policy_whatever_the_backend_variable(policy_file, monkeypatch, capsys):
    """PYSCOREPEN_BACKEND would send the module paths of the whole-step classes to one backend;
    calibrate drops it for its process, and says so."""
    import os

    import pyscorepen.calibrate as calibrate_module
    monkeypatch.setenv(backend.ENV_VAR, "ref")
    seen, real = [], calibrate_module.measure_ratios

    def spy(shape_class, rounds, threads, batches=None, progress=None):
        seen.append(os.environ.get(backend.ENV_VAR))
        return real(shape_class, rounds, threads, batches=[8], progress=progress)   # one small batch
    monkeypatch.setattr(calibrate_module, "measure_ratios", spy)
    assert calibrate_main(["--threads", "1", "--rounds", "1", "--shape-classes", "sac_update", "--dry-run"]) == 0
    assert seen == [None]
    assert f"{backend.ENV_VAR} is ignored while calibrating" in capsys.readouterr().err


def test_the_cli_refuses_to_write_when_calibrations_are_ignored(monkeypatch, capsys):
    monkeypatch.setenv(calibration.ENV_VAR, "builtin")
    assert calibrate_main(["--rounds", "1"]) == 2
    assert "ignores calibrations" in capsys.readouterr().err


# --------------------------------------------------------------- a run keeps the policy it started with
@needs_extension
def test_a_resumed_run_keeps_its_policy_after_a_calibration(tmp_path):
    """Killed, then this machine calibrated so that auto would run the reference everywhere: the
    resumed run still dispatches as it started, and ends byte-identical to an uninterrupted run."""
    from tests.test_checkpoints import assert_same_run, train
    reference = tmp_path / "reference"
    assert train(reference).returncode == 0
    recorded = json.loads((reference / runs.CPU_POLICY).read_text())
    assert recorded["source"] == "built-in" and recorded["threads"] == 1   # the tests' ENV: builtin, 1 thread
    assert recorded["thresholds"]["rollout_step"] < 64   # the run's 64-start rollouts ran the cpp kernel

    out = tmp_path / "run"
    killed = train(out, kill_at="policy_step:15")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    policy_file = tmp_path / "cpu_policy.json"
    assert recorded["limits"] == {"sac_update": backend.builtin_max_rows("sac_update", recorded["isa"])}
    entry = calibration.new_entry(recorded["isa"], 1, {k: NEVER for k in backend.CPP_MIN_ROWS}, {}, rounds=1,
                                  limits={"sac_update": 0})   # the reference, and the SAC update's module path
    calibration.write_entry(policy_file, entry)
    calibrated = {calibration.ENV_VAR: str(policy_file)}
    resumed = train(out, env_extra=calibrated)
    fresh = train(tmp_path / "fresh", env_extra=calibrated)   # a new run under it: the reference kernels
    assert resumed.returncode == 0 and fresh.returncode == 0, resumed.stderr + fresh.stderr
    assert json.loads((out / runs.CPU_POLICY).read_text()) == recorded
    assert_same_run(out, reference)
    assert json.loads((tmp_path / "fresh" / runs.CPU_POLICY).read_text())["source"] == "calibrated"
    # the calibration does change the kernels of a new run (so the equality above is the pin's doing)
    assert (tmp_path / "fresh" / runs.POLICY).read_bytes() != (reference / runs.POLICY).read_bytes()


@needs_extension
def test_a_run_of_an_older_version_records_the_builtin_policy(tmp_path, policy_file, one_thread):
    """A folder with trained state but no cpu_policy.json was started before calibrations existed,
    so under the built-in tables: that is what it records and keeps, whatever this machine's
    calibration says; a new folder records the calibration. A record without limits (a version
    that calibrated thresholds only) pins the built-in limits, which that version ran."""
    from pyscorepen.train import keep_cpu_policy
    write(policy_file, {"score_penalty": 300})
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "checkpoint-10.pt").write_bytes(b"")
    builtin = backend.builtin_min_rows("score_penalty", backend.cpu_isa())
    with keep_cpu_policy(old):
        assert backend.cpp_min_rows("score_penalty") == builtin
    with keep_cpu_policy(new):
        assert backend.cpp_min_rows("score_penalty") == 300
    assert json.loads((old / runs.CPU_POLICY).read_text())["source"] == "built-in"
    assert json.loads((new / runs.CPU_POLICY).read_text())["source"] == "calibrated"
    assert backend.cpp_min_rows("score_penalty") == 300   # the pins end with their blocks

    write(policy_file, {"score_penalty": 300}, limits={"sac_update": 5})
    thresholds_only = tmp_path / "thresholds-only"
    thresholds_only.mkdir()
    record = backend.cpu_policy()
    del record["limits"]
    runs.write_json(thresholds_only / runs.CPU_POLICY, record)
    with keep_cpu_policy(thresholds_only):
        assert backend.cpp_min_rows("score_penalty") == 300
        assert backend.cpp_max_rows("sac_update") == backend.builtin_max_rows("sac_update", backend.cpu_isa())
    assert backend.cpp_max_rows("sac_update") == 5
