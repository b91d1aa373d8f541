"""Runs that never lose work: atomic writes, rotated checkpoints with fallback, resumable
pretraining, SIGINT/SIGTERM, a real SIGKILL at several points, and the divergence guard.

The kill points are exact: ``PYSCOREPEN_TEST_KILL_AT=<point>:<index>`` makes the train CLI send
itself ``PYSCOREPEN_TEST_SIGNAL`` (KILL by default) when it reaches that point (see
:func:`pyscorepen.runs.fault_injection_point`). Every resumed run is compared with one
uninterrupted run of the same command: ``policy.pt``, ``dynamics.pt`` and ``score.pt`` byte for
byte, ``metrics.jsonl``, ``summary.json`` and ``pretrain.json`` value for value apart from the
wall-time/throughput fields.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from pyscorepen import runs
from pyscorepen.data import TransitionDataset
from pyscorepen.models.dynamics import DynamicsConfig, EnsembleDynamics
from pyscorepen.models.score import ScoreConfig, ScoreModel

# tiny cliff run: dynamics checkpoint every 2 epochs (of 5), score every 20 steps (of 50),
# policy checkpoints at the evaluations (every 10 of 30 steps)
ARGS = ["--no-progress", "--steps", "30", "--eval-interval", "10", "--eval-episodes", "2",
        "--sac.hidden-dims", "32", "32", "--dynamics.hidden-dims", "32", "32", "--dynamics.ensemble-size", "3",
        "--dynamics.num-elites", "2", "--dynamics.max-epochs", "5", "--dynamics.max-epochs-since-update", "10",
        "--dynamics-checkpoint-interval", "2", "--score.hidden-dims", "32", "32", "--score.train-steps", "50",
        "--score-checkpoint-interval", "20", "--rollout.batch-size", "64", "--rollout.length", "2",
        "--rollout.freq", "10", "--dataset-size", "500"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for key in ("PYSCOREPEN_TEST_KILL_AT", "PYSCOREPEN_TEST_SIGNAL"):
    ENV.pop(key, None)


def train(out, *extra, kill_at=None, sig=None, env_extra=None):
    env = {**ENV, **(env_extra or {})}
    if kill_at:
        env["PYSCOREPEN_TEST_KILL_AT"] = kill_at
    if sig:
        env["PYSCOREPEN_TEST_SIGNAL"] = sig
    cmd = [sys.executable, "-m", "pyscorepen.train", "--out", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def wall_field(key: str) -> bool:
    return key.endswith("_per_s") or key.endswith("seconds")


def without_wall(row: dict) -> dict:
    return {k: v for k, v in row.items() if not wall_field(k)}


def assert_same_run(run, reference):
    """Everything a user reads from the run folder equals the uninterrupted run's."""
    for name in (runs.POLICY, runs.DYNAMICS, runs.SCORE):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    metrics = [without_wall(r) for r in runs.read_metrics(run)]
    assert metrics == [without_wall(r) for r in runs.read_metrics(reference)]
    for name in (runs.SUMMARY, runs.PRETRAIN):
        assert without_wall(json.loads((run / name).read_text())) == \
            without_wall(json.loads((reference / name).read_text())), name
    assert not list(run.glob("*-fit-*.pt")), "pretraining checkpoints are removed when a fit ends"
    assert not list(run.glob(".*.tmp")), "no temp files left behind"


REFERENCE_SECONDS = []   # wall time of the reference run (kills from outside aim inside a run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import time
    out = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.perf_counter()
    proc = train(out)
    REFERENCE_SECONDS.append(time.perf_counter() - t0)
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------------------ real SIGKILL
KILL_POINTS = [
    pytest.param("dynamics_epoch:3", "dynamics-fit-2.pt", id="dynamics-pretraining"),
    pytest.param("score_step:30", "score-fit-20.pt", id="score-pretraining"),
    pytest.param("policy_step:15", "checkpoint-10.pt", id="policy-training"),
    pytest.param("policy_step:5", None, marks=pytest.mark.slow, id="policy-before-first-checkpoint"),
]


@pytest.mark.parametrize("kill_at, newest", KILL_POINTS)
def test_sigkill_then_same_command_gives_the_uninterrupted_result(kill_at, newest, reference, tmp_path):
    out = tmp_path / "run"
    killed = train(out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / runs.POLICY).exists()
    if newest:   # the work up to the last checkpoint is on disk
        assert (out / newest).exists(), sorted(p.name for p in out.iterdir())
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr
    if newest:
        assert f"from {newest}" in resumed.stderr, resumed.stderr
    assert_same_run(out, reference)


def test_a_fit_checkpoint_is_never_continued_on_other_data(tmp_path):
    """A dynamics-fit state records its data's fingerprint; copied next to another dataset
    (here: another cliff dataset size) it is refused, not silently trained on the new data."""
    out = tmp_path / "run"
    killed = train(out, kill_at="dynamics_epoch:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(out / "dynamics-fit-2.pt", weights_only=False)
    assert state["fingerprint"]["dataset"]["num_transitions"] == 500
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "dynamics-fit-2.pt", other / "dynamics-fit-2.pt")
    refused = train(other, "--dataset-size", "600")
    assert refused.returncode != 0
    assert "dynamics-fit-2.pt is a dynamics fit of other data" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


# ------------------------------------------------------------------------------ SIGTERM, SIGINT
def interrupt_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_sigterm_checkpoints_exits_143_and_resumes_identically(reference, tmp_path):
    out = tmp_path / "run"
    proc = train(out, kill_at="policy_step:15", sig="TERM")
    assert proc.returncode == 143
    line = interrupt_line(proc)
    assert line.startswith("interrupted by SIGTERM during policy training (checkpoint-15.pt)")
    assert line.endswith("Resume with: python -m pyscorepen.train --out " + str(out) + " " + " ".join(ARGS))
    assert (out / "checkpoint-15.pt").exists()

    # a corrupt newest checkpoint falls back to the previous one (on a copy of this folder)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    newest = copy / "checkpoint-15.pt"
    newest.write_bytes(newest.read_bytes()[:1000])                 # truncated, as by a full disk
    fallback = train(copy)
    assert fallback.returncode == 0, fallback.stderr
    warning = [line for line in fallback.stderr.splitlines() if "checkpoint-15.pt is unreadable" in line]
    assert len(warning) == 1 and "falling back to checkpoint-10.pt" in warning[0], fallback.stderr
    assert (copy / "checkpoint-15.pt.corrupt").exists()
    assert_same_run(copy, reference)

    saved_seconds = torch.load(out / "checkpoint-15.pt", weights_only=False)["logging"]["train_seconds"]
    resumed = train(out)
    assert resumed.returncode == 0 and "from checkpoint-15.pt" in resumed.stderr, resumed.stderr
    assert_same_run(out, reference)
    # the wall time covers both processes: the first one's up to its checkpoint, then the second's
    summary = json.loads((out / runs.SUMMARY).read_text())
    assert saved_seconds > 0
    assert summary["train_seconds"] == pytest.approx(saved_seconds + summary["last_process_train_seconds"],
                                                     rel=0.05, abs=0.05)
    seconds = [row["train_seconds"] for row in runs.read_metrics(out)]
    assert seconds == sorted(seconds) and seconds[-1] <= summary["train_seconds"]


@pytest.mark.parametrize("point, sig, code, where", [
    pytest.param("dynamics_epoch:3", "INT", 0, "dynamics pretraining (dynamics-fit-3.pt)", id="sigint-dynamics"),
    pytest.param("score_step:30", "TERM", 143, "score pretraining (score-fit-30.pt)", marks=pytest.mark.slow,
                 id="sigterm-score"),
])
def test_signal_during_pretraining_checkpoints_the_fit(point, sig, code, where, reference, tmp_path):
    out = tmp_path / "run"
    proc = train(out, kill_at=point, sig=sig)
    assert proc.returncode == code
    assert interrupt_line(proc).startswith(f"interrupted by SIG{sig} during {where}")
    assert (out / where.split("(")[1].rstrip(")")).exists()
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


# ------------------------------------------------------------------------------ divergence guard
@pytest.mark.parametrize("flags, quantity", [
    # the module path gives an inf loss, the fused C++ update refuses the overflowing value
    (["--sac.actor-lr", "1e6"], ("'loss/critic' is inf", "without overflow)' is inf")),
    (["--sac.critic-lr", "1e4"], "(beyond --divergence-limit 1e+12)"),   # finite but exploded (Q ~ 1e15)
    (["--beta", "1e38"], "'rollout/penalty_mean' is inf"),
])
def test_divergence_stops_with_a_debug_checkpoint_and_strict_json(flags, quantity, reference, tmp_path):
    out = tmp_path / "run"
    proc = train(out, "--steps", "200", "--pretrained-from", str(reference), *flags)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    quantities = quantity if isinstance(quantity, tuple) else (quantity,)
    assert len(message) == 1 and "training diverged at step" in message[0], proc.stderr
    assert any(q in message[0] for q in quantities), proc.stderr
    step = int(message[0].split("at step ")[1].split(":")[0])
    debug = out / f"debug-{step}.pt"
    assert debug.exists() and f"debug-{step}.pt" in message[0]
    assert torch.load(debug, weights_only=False)["step"] == step
    assert all(index < step for index, _ in runs.checkpoint_files(out)), "no good checkpoint after the divergence"
    assert not (out / runs.SUMMARY).exists() and not (out / runs.POLICY).exists()
    for path in [*out.glob("*.json"), *out.glob("*.jsonl")]:   # strict JSON: no NaN / Infinity
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{path.name} holds {c}"))


# ------------------------------------------------------------------------------ helpers (in-process)
def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    runs.write_json(path, {"a": 1})

    def fail(f):
        f.write(b'{"a": ')
        raise OSError("disk full")
    with pytest.raises(OSError):
        runs.atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_every_json_the_library_writes_is_strict(tmp_path):
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            runs.dumps_json({"x": bad})
        with pytest.raises(ValueError):
            runs.append_metrics(tmp_path, {"step": 1, "x": bad})
    assert not (tmp_path / runs.METRICS).exists() or (tmp_path / runs.METRICS).read_text() == ""
    assert runs.first_nonfinite({"a": 1.0, "b": True, "c": math.nan}) == ("c", pytest.approx(math.nan, nan_ok=True))


def test_rotation_keeps_the_last_k_and_falls_back_past_bad_ones(tmp_path, caplog):
    for step in (10, 20, 30):
        runs.save_checkpoint({"step": step, "x": torch.ones(3) * step}, tmp_path, step, keep=2)
    assert [s for s, _ in runs.checkpoint_files(tmp_path)] == [30, 20]
    runs.save_checkpoint({"step": 40}, tmp_path, 40, keep=2)   # lacks "x": incomplete
    (tmp_path / "checkpoint-30.pt").write_bytes(b"not a torch file")  # (rotation already dropped 20)
    runs.save_checkpoint({"step": 25, "x": torch.ones(3)}, tmp_path, 25, keep=3)
    with caplog.at_level("WARNING"):
        state = runs.load_latest_checkpoint(tmp_path, ("step", "x"))
    assert state["step"] == 25
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "checkpoint-40.pt is unreadable (missing x)" in lines[0]
    assert "falling back to checkpoint-30.pt" in lines[0] and "falling back to checkpoint-25.pt" in lines[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-25.pt", "checkpoint-30.pt.corrupt",
                                                          "checkpoint-40.pt.corrupt"]
    runs.save_debug_checkpoint({"step": 50}, tmp_path, 50)
    assert [s for s, _ in runs.checkpoint_files(tmp_path)] == [25], "debug checkpoints are never resumed from"


def tiny_dataset(n=300, seed=0) -> TransitionDataset:
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    return TransitionDataset(obs=obs, actions=act, rewards=obs[:, 0] - act[:, 1],
                             next_obs=obs + 0.1 * act.sum(-1, keepdim=True), terminals=torch.zeros(n))


class Stop(Exception):
    pass


def fit_interrupted(fit, model_factory, stop_at, hook_arg):
    """Fit once, keeping the state at ``stop_at`` (then stopping); resume a fresh model from it."""
    saved = {}

    def hook(index, state_fn):
        if index == stop_at:
            saved["state"] = state_fn()
            raise Stop
    model = model_factory()
    with pytest.raises(Stop):
        fit(model, **{hook_arg: hook})
    torch.manual_seed(12345)              # the resume must not depend on the RNG it starts from
    resumed = model_factory()
    stats = fit(resumed, resume=saved["state"])
    return resumed, stats


def test_dynamics_fit_resumes_bit_identically():
    data, config = tiny_dataset(), DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(16,), max_epochs=6,
                                                  max_epochs_since_update=10, batch_size=64)
    factory = lambda: EnsembleDynamics(3, 2, config)           # noqa: E731
    fit = lambda m, **kw: m.fit(data, progress=False, **kw)    # noqa: E731
    torch.manual_seed(0)
    whole = factory()
    torch.manual_seed(1)
    stats = fit(whole)
    torch.manual_seed(1)
    resumed, resumed_stats = fit_interrupted(fit, lambda: _with_seed(0, factory), 3, "on_epoch")
    assert stats["dynamics/epochs"] == resumed_stats["dynamics/epochs"] == 6
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_dynamics_fit_stops_mid_epoch_and_resumes_bit_identically():
    """SIGINT/SIGTERM during a long epoch: stop() is polled after every minibatch; the state saved
    in the middle of epoch 3 (batch 2 of 4) resumes to the same weights and elites."""
    data, config = tiny_dataset(), DynamicsConfig(ensemble_size=3, num_elites=2, hidden_dims=(16,), max_epochs=5,
                                                  max_epochs_since_update=10, batch_size=64)
    fit = lambda m, **kw: m.fit(data, progress=False, **kw)    # noqa: E731
    factory = lambda: _with_seed(0, lambda: EnsembleDynamics(3, 2, config))  # noqa: E731
    torch.manual_seed(1)
    whole = factory()
    fit(whole)
    batches, saved = [0], {}

    def stop():
        batches[0] += 1
        return batches[0] == 8    # 240 training rows / 64 = 4 batches, polled after the first 3

    def on_epoch(epoch, state_fn):
        if batches[0] == 8:
            saved["state"] = state_fn()
            raise Stop
    torch.manual_seed(1)
    with pytest.raises(Stop):
        fit(factory(), on_epoch=on_epoch, stop=stop)
    assert saved["state"]["epoch"] == 2 and saved["state"]["batches_done"] == 2
    torch.manual_seed(999)
    resumed = factory()
    fit(resumed, resume=saved["state"])
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_score_fit_resumes_bit_identically():
    data, config = tiny_dataset(), ScoreConfig(hidden_dims=(16,), train_steps=40, batch_size=32)
    factory = lambda: ScoreModel(5, config)                    # noqa: E731
    fit = lambda m, **kw: m.fit(data, progress=False, **kw)    # noqa: E731
    torch.manual_seed(1)
    whole = _with_seed(0, factory)
    stats = fit(whole)
    torch.manual_seed(1)
    resumed, resumed_stats = fit_interrupted(fit, lambda: _with_seed(0, factory), 17, "on_step")
    assert stats["score/dsm_loss_last"] == resumed_stats["score/dsm_loss_last"]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def _with_seed(seed, factory):
    """Build with a fixed init seed without disturbing the global RNG the fit draws from."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = factory()
    torch.set_rng_state(state)
    return model


@pytest.mark.parametrize("override, stage", [({"dynamics.lr": 1e8}, "dynamics"), ({"score.lr": 1e8}, "score")])
def test_divergence_in_pretraining_names_the_model_and_keeps_no_good_checkpoint(override, stage, tmp_path):
    from pyscorepen.config import TrainConfig, apply_overrides
    from pyscorepen.errors import DivergenceError
    from pyscorepen.train import run
    from tests.test_algorithms import TINY
    config = apply_overrides(TrainConfig(algo="scorepen", out=str(tmp_path / "run")),
                             {**TINY, "score.train_steps": 300, "score_checkpoint_interval": 50, **override})
    with pytest.raises(DivergenceError, match=f"{stage}.*loss is (nan|inf).*debug-{stage}.pt"):
        run(config)
    out = tmp_path / "run"
    assert (out / f"debug-{stage}.pt").exists() and not (out / f"{stage}.pt").exists()
    for _, path in runs.checkpoint_files(out, f"{stage}-fit"):   # checkpoints before the NaN only
        state = torch.load(path, weights_only=False)
        weights = state["model"] if stage == "dynamics" else state["net"]
        assert all(torch.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------------ many more kill points (slow)
MORE_KILL_POINTS = ["dynamics_epoch:1", "dynamics_epoch:2", "dynamics_epoch:4", "score_step:1", "score_step:20",
                    "score_step:49", "policy_step:1", "policy_step:10", "policy_step:11", "policy_step:20",
                    "policy_step:29", "policy_step:30"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", MORE_KILL_POINTS)
def test_sigkill_at_more_points(kill_at, reference, tmp_path):
    out = tmp_path / "run"
    assert train(out, kill_at=kill_at).returncode == -signal.SIGKILL
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_sigkill_from_outside_at_arbitrary_times(fraction, reference, tmp_path):
    """``kill -9`` from another process after a fraction of a whole run's wall time: it can land
    anywhere, including inside a write (the atomic writes keep every file whole)."""
    import time
    duration = REFERENCE_SECONDS[0]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pyscorepen.train", "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(duration * fraction)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)
