"""``--tensorboard``: every metrics.jsonl row's scalars in <run>/tb/; without the package, a clean
error before the run folder is touched."""
import json
import subprocess
import sys

import pytest

from pyscorepen import runs
from pyscorepen.config import TrainConfig, apply_overrides
from pyscorepen.train import run
from tests.test_algorithms import TINY


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_match_metrics_rows_and_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -e .[tensorboard]")
    out = tmp_path / "run"
    config = apply_overrides(TrainConfig(algo="scorepen", out=str(out), tensorboard=True), TINY)
    run(config)
    run(apply_overrides(config, {"steps": 30}))           # resumed from the step-20 checkpoint
    rows = [json.loads(line) for line in (out / runs.METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    logged = scalars(out / "tb")
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, []).append((row["step"], value))
    assert set(logged) == set(expected)
    for key, points in expected.items():
        assert [s for s, _ in logged[key]] == [s for s, _ in points], key     # each step once
        assert [v for _, v in logged[key]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), key


def test_without_flag_nothing_is_written(tmp_path):
    out = tmp_path / "run"
    run(apply_overrides(TrainConfig(algo="sac", out=str(out)), {**TINY, "steps": 10}))
    assert not (out / "tb").exists()


def test_flag_without_package_is_a_clean_error_before_the_run_folder(tmp_path):
    out = tmp_path / "run"
    code = ("import sys; sys.modules['tensorboard'] = None; sys.modules['torch.utils.tensorboard'] = None\n"
            "from pyscorepen.train import main\n"
            f"sys.exit(main(['--algo', 'sac', '--out', {str(out)!r}, '--steps', '10', '--tensorboard', "
            "'--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "pip install -e .[tensorboard]" in error_lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()
