"""``python -m pyscorepen.report RUN_OR_SUITE_DIR``: one self-contained HTML report.

The page needs nothing but itself: every plot is a PNG inlined as base64, there is no script
and no external link, so it can be mailed or archived next to the results.

* A **run folder** (``python -m pyscorepen.train``) gives: the summary; the learning curve and
  one small panel per training statistic of ``metrics.jsonl`` (keys: ``docs/metrics.md``);
  the penalty heatmap of the 2-D cliff task (``penalty_heatmap.png``, recomputed from the saved
  models when missing); histograms of the penalty on real vs model data
  (``penalty_sample.json``, see :mod:`pyscorepen.diagnostics`); the VaR curve of the final
  evaluation (VaR_n = n-th percentile of the episode returns, CDSA Fig. 4, from
  ``eval_returns.json``); the pretraining statistics (``pretrain.json``) and the config.
* A **suite folder** (``python -m pyscorepen.suite``) gives: the results table (ScorePen
  Table 1 layout, recomputed from the run folders with :mod:`pyscorepen.suite`'s own code),
  failed launches from ``suite_log.jsonl``, per-dataset learning curves and VaR curves, and a
  linked section per run with the content above.

The report only reads the folder (it writes the HTML file, by default ``<dir>/report.html``).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from pyscorepen import runs  # noqa: E402
from pyscorepen.errors import PyScorePenError  # noqa: E402

REPORT = "report.html"
VAR_PERCENTILES = tuple(range(1, 100))
"""Percentiles n of the VaR curves (VaR_n over n = 1..99)."""


@dataclass
class ReportArgs:
    path: tyro.conf.Positional[Path]
    """A run folder (holds config.json) or a suite folder (holds <algo>/<dataset>/seed<k>/ run folders)."""
    out: Path | None = None
    """HTML file to write; default <path>/report.html."""
    recompute_heatmap: bool = True
    """Cliff runs without penalty_heatmap.png (unfinished): recompute it from the saved models."""


# ------------------------------------------------------------------------------------ reading
def read_json(path: Path) -> dict | list | None:
    """A JSON file, or None when it is missing or unreadable (a report never fails on one file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows; a cut or corrupt line (e.g. an interrupted write) is skipped."""
    rows = []
    try:
        lines = (Path(run_dir) / runs.METRICS).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------ HTML pieces
def esc(value) -> str:
    return html.escape(str(value))


def png_img(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def fig_img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return png_img(buf.getvalue(), alt)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def kv_table(d: dict) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table class='kv'>{body}</table>"


def markdown_table_html(markdown: str) -> str:
    """The suite's markdown table (plus its footnote) as HTML."""
    rows, notes = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
        elif line.strip():
            notes.append(line.strip())
    if not rows:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return (f"<table class='results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + "".join(f"<p class='note'>{esc(n)}</p>" for n in notes))


CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
table.results td, table.results th { text-align: center; }
img { max-width: 100%; display: block; margin: .5em 0; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 85%; }
.note { color: #555; font-size: 90%; } details { margin: .5em 0 1.5em; } summary { cursor: pointer; }
"""


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# ------------------------------------------------------------------------------------ run plots
def score_key(rows: list[dict]) -> str:
    """normalized_score when every row has it, else return."""
    return "normalized_score" if rows and all(is_number(r.get("normalized_score_mean")) for r in rows) else "return"


def metric_panels(rows: list[dict], key: str) -> list[tuple[str, list[str]]]:
    """(title, keys) of the small panels: VaR_n keys share one panel, constants are left out."""
    fixed = {"step", f"{key}_mean", f"{key}_std", "num_episodes"}
    keys: list[str] = []
    for r in rows[1:] if len(rows) > 1 else rows:   # the first row alone also holds the pretraining stats
        keys += [k for k, v in r.items() if k not in fixed and k not in keys and is_number(v)]
    panels: dict[str, list[str]] = {}
    for k in keys:
        title = ("normalized VaR_n" if k.startswith("normalized_var_") else "VaR_n (return)" if k.startswith("var_")
                 else k)
        panels.setdefault(title, []).append(k)
    return list(panels.items())


def learning_curves(rows: list[dict], title: str) -> str:
    """The evaluation curve (mean ± std) and one small panel per other statistic of metrics.jsonl."""
    key = score_key(rows)
    steps = np.array([r["step"] for r in rows], float)
    panels = metric_panels(rows, key)
    cols = 4
    nrows = math.ceil((1 + len(panels)) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    flat = [a for row_axes in axes for a in row_axes]
    mean = np.array([r.get(f"{key}_mean", np.nan) for r in rows], float)
    std = np.array([r.get(f"{key}_std", 0.0) or 0.0 for r in rows], float)
    flat[0].plot(steps, mean, marker="o", ms=3)
    flat[0].fill_between(steps, mean - std, mean + std, alpha=0.25)
    flat[0].set_title(f"{key.replace('_', ' ')} (mean ± std over episodes)", fontsize=9)
    for ax, (panel, keys) in zip(flat[1:], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if is_number(r.get(k))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=k)
        if len(keys) > 1:
            ax.legend(fontsize=6)
        ax.set_title(panel, fontsize=9)
    for ax in flat[1 + len(panels):]:
        ax.axis("off")
    for ax in flat:
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("gradient step", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig_img(fig, f"learning curves of {title}")


def penalty_histograms(sample: dict, title: str) -> str:
    """Real vs model data, one panel per penalty component, shared bins per panel."""
    comps = [c for c in sample.get("model", {}) if sample["model"][c] or sample.get("real", {}).get(c)]
    if not comps:
        return ""
    fig, axes = plt.subplots(1, len(comps), figsize=(5 * len(comps), 3.4), squeeze=False)
    for ax, comp in zip(axes[0], comps):
        model = np.asarray(sample["model"].get(comp, []), float)
        real = np.asarray(sample.get("real", {}).get(comp, []), float)
        both = np.concatenate([model, real])
        positive = both[both > 0]
        log = positive.size == both.size and both.size > 0 and positive.max() / positive.min() > 100
        bins = (np.geomspace(positive.min(), positive.max(), 50) if log
                else np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 50))
        for values, label, color in ((real, "real (s, a) from D", "tab:blue"),
                                     (model, "model rollouts (D_model)", "tab:orange")):
            if values.size:
                ax.hist(values, bins=bins, alpha=0.55, label=f"{label}, median {np.median(values):.3g}",
                        color=color)
        if log:
            ax.set_xscale("log")
        ax.set_title(f"penalty: {comp}", fontsize=9)
        ax.set_xlabel("penalty (reward units, coefficient applied)", fontsize=8)
        ax.set_ylabel("transitions", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig_img(fig, f"penalty histograms of {title}")


def var_curve(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, VaR_n) for n in :data:`VAR_PERCENTILES` (:func:`pyscorepen.evaluation_metrics.value_at_risk`)."""
    from pyscorepen.evaluation_metrics import value_at_risk
    var = value_at_risk(returns, VAR_PERCENTILES)
    return np.array(VAR_PERCENTILES, float), np.array(list(var.values()), float)


def var_plot(curves: dict[str, np.ndarray], title: str) -> str:
    """One VaR curve per label; ``curves``: label -> episode returns."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, returns in curves.items():
        n, var = var_curve(returns)
        ax.plot(n, var, label=f"{label} ({len(returns)} episodes)")
    ax.set_xlabel("percentile n", fontsize=8)
    ax.set_ylabel("VaR_n (return)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig_img(fig, f"VaR curve: {title}")


def cliff_heatmap(run_dir: Path, config: dict) -> tuple[str, str]:
    """(img, note): the run's penalty_heatmap.png, or one recomputed from the saved models."""
    path = run_dir / runs.HEATMAP
    if path.is_file():
        return png_img(path.read_bytes(), f"penalty heatmap of {run_dir.name}"), ""
    import tempfile

    from pyscorepen import plots
    from pyscorepen.config import TrainConfig
    from pyscorepen.tasks import make_task
    from pyscorepen.trainer import Trainer
    cfg = TrainConfig.from_dict(config)
    cfg.progress, cfg.device, cfg.tensorboard = False, "cpu", False
    if (run_dir / runs.POLICY).is_file():
        agent_state = runs.load_torch_file(run_dir / runs.POLICY, "the final agent")
    elif (state := runs.load_latest_checkpoint(run_dir, ("agent",), map_location="cpu",
                                                         quarantine=False)) is not None:
        agent_state = state["agent"]
    else:
        return "", "no heatmap: the run has no policy.pt or readable checkpoint-<step>.pt yet."
    task = make_task(cfg.task, cliff=cfg.cliff)
    trainer = Trainer(cfg, task, run_dir)
    trainer.agent.load_state_dict(agent_state)
    if trainer.algorithm.uses_model:
        if not (run_dir / runs.DYNAMICS).is_file():
            return "", "no heatmap: dynamics.pt is missing."
        trainer.dynamics.load_state_dict(runs.load_model(run_dir / runs.DYNAMICS, "the dynamics model",
                                                         trainer.fingerprint("dynamics")))
    if trainer.score is not None:
        if not (run_dir / runs.SCORE).is_file():
            return "", "no heatmap: score.pt is missing."
        trainer.score.load_state_dict(runs.load_model(run_dir / runs.SCORE, "the score model",
                                                      trainer.fingerprint("score")))
    trajectories = trainer.evaluate(cfg.eval_episodes, keep_trajectories=True).trajectories
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / runs.HEATMAP
        plots.cliff_penalty_maps(trainer, trajectories, png)
        return (png_img(png.read_bytes(), f"penalty heatmap of {run_dir.name}"),
                "recomputed from the saved models (the folder has no penalty_heatmap.png: the run has not finished).")


# ------------------------------------------------------------------------------------ sections
def run_section(run_dir: Path, args: ReportArgs, level: int = 2) -> str:
    """The HTML of one run folder (headings start at ``<h{level}>``)."""
    h, hh = f"h{level}", f"h{level + 1}"
    config = read_json(run_dir / runs.CONFIG) or {}
    summary = read_json(run_dir / runs.SUMMARY)
    rows = read_rows(run_dir)
    name = f"{config.get('algo', '?')} · {config.get('task', '?')} · seed {config.get('seed', '?')}"
    parts = []
    if summary:
        parts.append(f"<p>finished: {esc(summary.get('steps'))} gradient steps.</p>")
        parts.append(f"<{hh}>Summary (final evaluation)</{hh}>" + kv_table(summary))
    else:
        last = rows[-1]["step"] if rows else 0
        parts.append(f"<p>not finished: last evaluation at step {esc(last)} of {esc(config.get('steps'))}.</p>")

    parts.append(f"<{hh}>Learning curves</{hh}>")
    parts.append(learning_curves(rows, name) if rows else "<p class='note'>no metrics.jsonl rows yet.</p>")

    if config.get("task") == "cliff":
        parts.append(f"<{hh}>Penalty heatmap (2-D cliff task)</{hh}>")
        img, note = ("", "not recomputed (--no-recompute-heatmap).")
        if (run_dir / runs.HEATMAP).is_file() or args.recompute_heatmap:
            img, note = cliff_heatmap(run_dir, config)
        parts.append(img + (f"<p class='note'>{esc(note)}</p>" if note else ""))

    parts.append(f"<{hh}>Penalty on real vs model data</{hh}>")
    sample = read_json(run_dir / runs.PENALTY_SAMPLE)
    if sample is None:
        parts.append(f"<p class='note'>no {runs.PENALTY_SAMPLE} (written at the end of training).</p>")
    else:
        hist = penalty_histograms(sample, name)
        parts.append(hist or f"<p class='note'>no penalty: algorithm {esc(config.get('algo'))} "
                             "stores none and has no target-time penalty.</p>")
        if hist:
            parts.append("<p class='note'>Model data: the stored penalties of transitions drawn from the final "
                         "model buffer. Real data: what the same plug-ins give the dataset's own (s, a) "
                         "(a real transition's stored penalty is 0). See pyscorepen/diagnostics.py.</p>")
        dropped = sample.get("dropped_nonfinite")
        if dropped:
            parts.append(f"<p class='note'>non-finite values left out: {esc(dropped)}</p>")

    diagnosis = read_json(run_dir / "diagnose" / "diagnose.json")   # python -m pyscorepen.diagnose RUN
    if diagnosis:
        parts.append(f"<{hh}>Diagnosis (python -m pyscorepen.diagnose)</{hh}>")
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in diagnosis.get("findings", [])) + "</ul>")
        for figure in diagnosis.get("figures", []):
            path = run_dir / "diagnose" / figure
            if figure in ("q_over_steps.png", "model_error.png") and path.is_file():
                parts.append(png_img(path.read_bytes(), f"{name}: {figure}"))

    parts.append(f"<{hh}>VaR curve of the final evaluation</{hh}>")
    episodes = read_json(run_dir / runs.EVAL_RETURNS)
    if episodes and episodes.get("returns"):
        parts.append(var_plot({config.get("algo", "run"): np.asarray(episodes["returns"], float)}, name))
    else:
        parts.append(f"<p class='note'>no {runs.EVAL_RETURNS} (written at the end of training).</p>")

    parts.append(f"<{hh}>Pretraining statistics</{hh}>")
    pre = read_json(run_dir / runs.PRETRAIN)
    parts.append(kv_table(pre) if pre else f"<p class='note'>no {runs.PRETRAIN} (no model trained in this "
                                            "folder: sac, reused via --pretrained-from, or not finished).</p>")
    parts.append(f"<{hh}>Config</{hh}><pre>{esc(json.dumps(config, indent=2))}</pre>")
    return f"<{h}>Run {esc(name)}</{h}><p class='note'>{esc(run_dir)}</p>" + "\n".join(parts)


def find_runs(root: Path) -> list[Path]:
    """Run folders of a suite: <root>/<algo>/<dataset>/seed<k>/config.json."""
    return sorted(p.parent for p in root.glob("*/*/seed*/" + runs.CONFIG))


def suite_config_from_runs(root: Path, run_dirs: list[Path]):
    """The suite's config: its ``suite.json`` (algorithm order, all seeds asked for) when present,
    else (algos, tasks, seeds) read back from the run folders."""
    from pyscorepen.suite import SUITE_CONFIG, SuiteConfig
    saved = read_json(root / SUITE_CONFIG)
    if isinstance(saved, dict):
        try:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                      if k in SuiteConfig.__dataclass_fields__}
            return SuiteConfig(**{**fields, "out": str(root), "aggregate_only": True})
        except TypeError:
            pass
    algos, tasks, seeds = [], [], []
    for d in run_dirs:
        config = read_json(d / runs.CONFIG) or {}
        algo, task, seed = d.parent.parent.name, config.get("task"), config.get("seed")
        for values, v in ((algos, algo), (tasks, task), (seeds, seed)):
            if v is not None and v not in values:
                values.append(v)
    return SuiteConfig(algos=tuple(algos), tasks=tuple(tasks), seeds=tuple(sorted(seeds)), out=str(root),
                       aggregate_only=True)


def suite_report(root: Path, args: ReportArgs) -> str:
    import tempfile

    from pyscorepen import suite
    run_dirs = find_runs(root)
    config = suite_config_from_runs(root, run_dirs)
    parts = [f"<h1>Suite report: {esc(root.name)}</h1><p class='note'>{esc(root.resolve())} · "
             f"{len(run_dirs)} run folder(s)</p>"]
    rows = suite.aggregate(config)
    parts.append("<h2>Results</h2>" + markdown_table_html(suite.markdown_table(rows, config.algos, config.tasks)))
    parts.append("<p class='note'>Recomputed from the run folders (the same code as results.md).</p>")
    log = [json.loads(line) for line in _lines(root / "suite_log.jsonl")]
    failed = [r for r in log if r.get("returncode") not in (0, None)]
    if failed:
        parts.append("<h2>Failed launches (suite_log.jsonl)</h2><table><tr><th>algo</th><th>task</th><th>seed</th>"
                     "<th>exit</th><th>error</th></tr>" + "".join(
                         f"<tr><td>{esc(r.get('algo'))}</td><td>{esc(r.get('task'))}</td><td>{esc(r.get('seed'))}"
                         f"</td><td>{esc(r.get('returncode'))}</td><td><pre>{esc(r.get('stderr_tail', ''))}</pre>"
                         "</td></tr>" for r in failed) + "</table>")

    parts.append("<h2>Learning curves per dataset</h2>")
    with tempfile.TemporaryDirectory() as tmp:
        for png in suite.plot_learning_curves(config, Path(tmp)):
            parts.append(f"<h3>{esc(png.stem)}</h3>" + png_img(png.read_bytes(), f"learning curves {png.stem}"))

    parts.append("<h2>VaR curves per dataset (final evaluations, seeds pooled)</h2>")
    for task in config.tasks:
        curves = {}
        for algo in config.algos:
            returns = []
            for seed in config.seeds:
                episodes = read_json(suite.run_dir(config, algo, task, seed) / runs.EVAL_RETURNS)
                returns += (episodes or {}).get("returns", [])
            if returns:
                curves[algo] = np.asarray(returns, float)
        if curves:
            parts.append(var_plot(curves, suite.short_name(task)))

    parts.append("<h2>Runs</h2><ul>" + "".join(
        f"<li><a href='#{anchor(d, root)}'>{esc(d.relative_to(root))}</a></li>" for d in run_dirs) + "</ul>")
    for d in run_dirs:
        parts.append(f"<section id='{anchor(d, root)}'><details open><summary>{esc(d.relative_to(root))}</summary>"
                     + run_section(d, args, level=3) + "</details></section>")
    return page(f"pyscorepen suite {root.name}", "\n".join(parts))


def _lines(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            json.loads(line)
            out.append(line)
        except ValueError:
            continue
    return out


def anchor(run_dir: Path, root: Path) -> str:
    return "run-" + "-".join(run_dir.relative_to(root).parts).replace("+", "_").replace(".", "_")


def make_report(args: ReportArgs) -> dict:
    """Write the HTML file; returns {'report': path, 'kind': 'run' | 'suite', 'runs': n}."""
    root = Path(args.path)
    if not root.is_dir():
        raise PyScorePenError(f"{root} is not a folder: pass a run folder (python -m pyscorepen.train --out) "
                              "or a suite folder (python -m pyscorepen.suite --out).")
    if (root / runs.CONFIG).is_file():
        kind, n = "run", 1
        config = read_json(root / runs.CONFIG) or {}
        name = f"{config.get('algo', '?')} {config.get('task', '?')} seed {config.get('seed', '?')}"
        html_text = page(f"pyscorepen run {name}", f"<h1>Run report: {esc(name)}</h1>" + run_section(root, args))
    else:
        n = len(find_runs(root))
        if n == 0:
            raise PyScorePenError(f"{root} holds no run: neither {runs.CONFIG} (a run folder) nor "
                                  f"<algo>/<dataset>/seed<k>/{runs.CONFIG} (a suite folder).")
        kind, html_text = "suite", suite_report(root, args)
    out = Path(args.out) if args.out else root / REPORT
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html_text)
    tmp.replace(out)
    return {"report": str(out), "kind": kind, "runs": n, "bytes": len(html_text)}


def main(argv: list[str] | None = None) -> int:
    from pyscorepen.errors import report
    args = tyro.cli(ReportArgs, args=argv, description=__doc__.split("\n\n")[0])
    return report(make_report, args)


if __name__ == "__main__":
    sys.exit(main())
