"""``python -m pyscorepen.report``: a self-contained HTML page for a run and for a suite folder,
loaded in a real headless Chromium (no console errors, no request leaving the file, every
image decodes)."""
import base64
import hashlib
import re
import shutil

import pytest

from pyscorepen import runs
from pyscorepen.config import apply_overrides, TrainConfig
from pyscorepen.report import ReportArgs, main, make_report
from pyscorepen.suite import SuiteConfig, run_dir, run_suite
from pyscorepen.train import run
from tests.browser import load_page, page_problems
from tests.test_algorithms import TINY

ALGOS = ("scorepen", "sac")


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    """A real suite folder: tiny cliff runs of two algorithms (in-process), then the suite tables."""
    root = tmp_path_factory.mktemp("report") / "suite"
    suite = SuiteConfig(algos=ALGOS, tasks=("cliff",), seeds=(0,), out=str(root), aggregate_only=True)
    for algo in ALGOS:
        out = run_dir(suite, algo, "cliff", 0)
        out.parent.mkdir(parents=True)
        run(apply_overrides(TrainConfig(algo=algo, out=str(out)), TINY))
    run_suite(suite)   # results.md / results.csv / curves, as the suite CLI writes them
    return root


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.html"}


def test_run_report_loads_in_chromium(suite_dir):
    folder = run_dir(SuiteConfig(out=str(suite_dir)), "scorepen", "cliff", 0)
    before = digest(folder)
    result = make_report(ReportArgs(path=folder))
    assert result["kind"] == "run" and digest(folder) == before     # the report only reads the run
    text = (folder / "report.html").read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    for heading in ("Learning curves", "Penalty heatmap", "Penalty on real vs model data",
                    "VaR curve of the final evaluation", "Pretraining statistics", "Config"):
        assert heading in text, heading
    assert "dynamics/holdout_mse_elites" in text and '&quot;beta&quot;: 0.01' in text   # pretrain.json and config

    page = load_page(folder / "report.html")
    assert page_problems(page) == []
    # learning curves, cliff heatmap, penalty histograms, VaR curve
    assert len(page["images"]) == 4 and all(img["width"] > 100 for img in page["images"])
    assert page["title"] == "pyscorepen run scorepen cliff seed 0"


def test_suite_report_loads_in_chromium(suite_dir):
    result = make_report(ReportArgs(path=suite_dir))
    assert result == {**result, "kind": "suite", "runs": 2}
    text = (suite_dir / "report.html").read_text()
    # the results table is the suite's own (results.md), rendered as HTML
    md_rows = [line for line in (suite_dir / "results.md").read_text().splitlines() if line.startswith("| ")]
    for line in md_rows:
        cells = [c.strip() for c in line.strip("| ").split("|")]
        assert "".join(f"<td>{c}</td>" for c in cells) in text or "".join(f"<th>{c}</th>" for c in cells) in text
    for algo in ALGOS:   # a linked section per run
        anchor = f"run-{algo}-cliff-seed0"
        assert f"href='#{anchor}'" in text and f"id='{anchor}'" in text

    page = load_page(suite_dir / "report.html")
    assert page_problems(page) == []
    # 1 per-dataset learning curve + 1 per-dataset VaR plot + per run: scorepen 4, sac 3 (curves, heatmap, VaR)
    assert len(page["images"]) == 2 + 4 + 3


def test_browser_check_catches_a_broken_image_and_a_console_error(suite_dir, tmp_path):
    """The Chromium check is not vacuous: a corrupt image and a console error are both reported."""
    folder = run_dir(SuiteConfig(out=str(suite_dir)), "sac", "cliff", 0)
    make_report(ReportArgs(path=folder, out=tmp_path / "good.html"))
    text = (tmp_path / "good.html").read_text()
    first = re.search(r"base64,([A-Za-z0-9+/=]+)", text).group(1)
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20).decode()
    text = text.replace(first, broken, 1).replace("</body>", "<script>console.error('boom')</script></body>")
    (tmp_path / "bad.html").write_text(text)
    problems = page_problems(load_page(tmp_path / "bad.html"))
    assert any(p.startswith("image does not decode") for p in problems)
    assert "console error: boom" in problems


def test_unfinished_cliff_run_recomputes_the_heatmap(suite_dir, tmp_path):
    folder = tmp_path / "unfinished"
    shutil.copytree(run_dir(SuiteConfig(out=str(suite_dir)), "scorepen", "cliff", 0), folder)
    for name in (runs.SUMMARY, runs.POLICY, runs.HEATMAP, runs.EVAL_RETURNS, runs.PENALTY_SAMPLE):
        (folder / name).unlink()
    with open(folder / runs.METRICS, "a") as f:
        f.write('{"step": 30, "return_me')          # an interrupted write: skipped, not a crash
    make_report(ReportArgs(path=folder))
    text = (folder / "report.html").read_text()
    assert "not finished: last evaluation at step 20" in text
    assert "recomputed from the saved models" in text     # from checkpoint.pt, dynamics.pt, score.pt
    assert text.count("data:image/png;base64,") == 2      # learning curves and heatmap
    assert f"no {runs.EVAL_RETURNS}" in text and f"no {runs.PENALTY_SAMPLE}" in text


def test_not_a_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no run" in err and "Traceback" not in err
