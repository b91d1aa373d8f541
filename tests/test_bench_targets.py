"""benches/targets.py (issue 9's targets as paired probe ratios) runs and prints its table."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyscorepen.ops import cpu_isa

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(cpu_isa() is None, reason="the C++ extension is not built: no fused workloads to time")
def test_targets_script_prints_paired_ratios():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "benches" / "targets.py"), "--threads", "1", "--rounds", "2",
                          "--calls", "1", "--workloads", "critic-256", "combo", "fit-step"],
                         capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if re.match(r"\| (critic-256|combo|fit-step) \|", line)}
    assert set(rows) == {"critic-256", "combo", "fit-step"}, out
    for name, line in rows.items():
        pct = float(re.search(r"\*\*([0-9.]+) %\*\*", line).group(1))
        assert 0 < pct < 1000, line
    assert re.search(r">= 80 %: (met|missed)", rows["combo"]), rows["combo"]
