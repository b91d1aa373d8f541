"""Smoke runs of the CDSA commands: train --algo cdsa, evaluate --cdsa, the K search (tiny sizes)."""
import json

from tests.test_cli import cli

RISKY = ["--task", "risky", "--risky.dataset-episodes", "20", "--eval-episodes", "2", "--no-progress"]


def test_cdsa_train_evaluate_and_k_search(tmp_path):
    cdsa, bc = tmp_path / "cdsa", tmp_path / "bc"
    cli("pyscorepen.train", "--algo", "cdsa", "--steps", "30", "--eval-interval", "15", "--out", str(cdsa), *RISKY)
    summary = json.loads((cdsa / "summary.json").read_text())
    assert summary["algo"] == "cdsa" and summary["steps"] == 30
    assert {"loss/g", "loss/h", "loss/inverse"} <= set(summary)
    config = json.loads((cdsa / "config.json").read_text())
    assert config["cdsa"]["score_hidden_dims"] == [32, 128, 32]        # CDSA Table 3
    rows = [json.loads(line) for line in (cdsa / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [15, 30]

    cli("pyscorepen.train", "--algo", "bc", "--steps", "20", "--eval-interval", "20", "--bc.hidden-dims", "16",
        "--out", str(bc), *RISKY)
    assert "hazard_entry_rate" in json.loads((bc / "summary.json").read_text())

    out = tmp_path / "corrected"
    proc = cli("pyscorepen.evaluate", str(bc), "--cdsa", str(cdsa), "--k1", "0.5", "--k2", "0.5",
               "--iterations", "2", "--episodes", "3", "--out", str(out))
    result = json.loads(proc.stdout)
    assert result["k1"] == 0.5 and result["iterations"] == 2
    assert result["base"]["num_episodes"] == 3 and result["corrected"]["num_episodes"] == 3
    assert len(result["var_curve"]["base"]) == len(result["var_curve"]["percentiles"])
    assert (out / "summary.json").exists() and (out / "var_curve.png").exists()

    # a CDSA run alone has no policy: a one-line error, no traceback
    proc = cli("pyscorepen.evaluate", str(cdsa), check=False)
    assert proc.returncode == 2 and "corrects other policies" in proc.stderr and "Traceback" not in proc.stderr

    ks = tmp_path / "ks"
    proc = cli("pyscorepen.experiments.cdsa_k_search", str(bc), "--cdsa", str(cdsa), "--k1", "0", "0.1",
               "--k2", "0", "1", "--episodes", "2", "--out", str(ks))
    assert json.loads(proc.stdout)["grid_points"] == 3
    table = (ks / "k_search.md").read_text()
    assert table.count("\n| ") == 5 and (ks / "k_search.csv").exists() and (ks / "k_search.png").exists()


def test_k_search_help_says_online():
    out = cli("pyscorepen.experiments.cdsa_k_search", "--help").stdout
    assert "ONLINE" in out and "--k1" in out and "--cdsa" in out
