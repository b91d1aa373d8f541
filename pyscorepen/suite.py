"""``python -m pyscorepen.suite``: algorithms x datasets x seeds, then a ScorePen-style table.

    python -m pyscorepen.suite --algos mopo scorepen mobile \\
        --tasks pyscorepen/hopper/medium-v0 pyscorepen/hopper/medium-replay-v0 --seeds 0 1 2

Each run is one ``python -m pyscorepen.train`` subprocess writing its run folder
``<out>/<algo>/<dataset>/seed<seed>``; a folder with a ``summary.json`` is finished and skipped,
any other is resumed by the train CLI. Per-dataset hyperparameters come from
``pyscorepen/configs/defaults.toml`` (sources cited there); ``--extra-args`` are appended last
so they override them. Outputs in ``<out>``:

* ``results.md``: normalized score mean ± std over seeds per algorithm (columns) and dataset
  (rows) plus an Average row, the layout of ScorePen-MORL Table 1, with the behaviour policy's
  normalized score in its own column;
* ``results.csv``: the same numbers plus raw returns, seed counts, the gradient-step budget of
  the finished runs (``steps``) and the dataset's behaviour score (``behaviour_normalized_score``:
  the mean return of the dataset's episodes, normalized with the task's reference scores);
* ``curves/<dataset>.png``: learning curves per dataset (each algorithm's mean over seeds
  and a ±1 std band, from every run's ``metrics.jsonl``);
* ``suite_log.jsonl``: one line per launched run (command, exit status, wall time);
* ``suite.json``: this suite's config (algorithms, datasets, seeds), read by ``pyscorepen.report``.

With ``--ray [ADDRESS]`` the runs are Ray tasks instead of local subprocesses, retried and
resumed when a worker is lost (:mod:`pyscorepen.suite_ray`); the outputs are the same.
"""
from __future__ import annotations

import csv
import json
import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pyscorepen.configs import dataset_defaults, dataset_key, load_defaults, preset_args, to_cli_args
from pyscorepen.runs import dumps_json

SUMMARY, METRICS, SUITE_CONFIG = "summary.json", "metrics.jsonl", "suite.json"

_SHORT_ENV = {"halfcheetah": "ha", "hopper": "ho", "walker2d": "wa", "ant": "an"}
_SHORT_LEVEL = {"random": "r", "medium": "m", "medium-replay": "mr", "medium-expert": "me", "expert": "e"}


@dataclass
class SuiteConfig:
    algos: tuple[str, ...] = ("mopo", "scorepen")
    """Algorithms: train --algo names or presets of configs/defaults.toml (mobile, scorepen+mobile,
    scorepen+count)."""
    tasks: tuple[str, ...] = ("pyscorepen/hopper/medium-v0", "pyscorepen/hopper/medium-replay-v0")
    """Datasets: Minari ids or paths (anything the train CLI's --task accepts)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds per (algorithm, dataset). Range: [0, 4294967295], each value."""
    out: str = "runs/suite"
    """Suite folder holding the run folders, the tables and the plots."""
    steps: int | None = None
    """Gradient steps per run (None: the train CLI's default). Range: [1, inf)."""
    eval_interval: int | None = None
    """Steps between evaluations (None: the train CLI's default). Range: [1, inf)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (None: the train CLI's default). Range: [1, inf)."""
    extra_args: str = ""
    """More train CLI arguments for every run, one shell-quoted string appended last (they override
    the defaults file), e.g. --extra-args="--dynamics.max-epochs 5 --rollout.batch-size 5000"."""
    defaults_file: str | None = None
    """Per-dataset defaults; None uses pyscorepen/configs/defaults.toml."""
    use_dataset_defaults: bool = True
    """Apply the per-dataset defaults of the defaults file."""
    aggregate_only: bool = False
    """Do not launch runs; only rebuild the tables and plots from the existing run folders."""
    dry_run: bool = False
    """Print the commands of the runs still to do, and exit."""
    status: bool = False
    """Print the state of every run of the grid (finished with its score; running, with its step,
    score, rate and time left; stopped at a checkpoint, which the suite resumes; not started) and
    exit. Starts nothing and writes nothing, so it is safe next to running suites."""
    progress: bool = False
    """Show the train CLI's progress bars."""
    status_interval: float = 60.0
    """Seconds between the status lines of the local runs in progress (step / steps, the last
    normalized score, updates/s, time left at that rate); 0: none. Range: [0, inf)."""
    ray: str | None = None
    """Run each (algorithm, dataset, seed) as a Ray task (pyscorepen.suite_ray): a cluster address
    (auto, host:6379, ray://host:10001), or a bare --ray (= local) to start Ray on this machine.
    Needs `pip install -e .[ray]`; every node must see --out at the same path."""
    threads_per_run: int | None = None
    """Threads per run (--threads of its train process; with --ray also its CPU request and
    OMP/MKL_NUM_THREADS). None: local runs share the cores this process may use, cores//parallel
    each; Ray runs 1. A --threads N in --extra-args wins. Range: [1, inf)."""
    ray_max_retries: int = 3
    """Ray: relaunches of a run whose worker died or whose train process was killed by a signal;
    each relaunch resumes from the run's last checkpoint. Range: [0, inf)."""
    parallel: int = 1
    """Local runs trained at the same time. The cores this process may use are divided among them:
    each run gets --threads cores//parallel (at least 1), so parallel runs never oversubscribe the
    CPU with OpenMP threads (see pyscorepen/threads.py). Range: [1, inf)."""
    publish: str | None = None
    """After aggregating, copy results.md, results.csv and curves/*.png into this folder (e.g.
    docs/results/mujoco-grid) with command.md (the suite command and every run's train command) and
    runs/<algo>/<dataset>/seed<k>/ with each finished run's summary.json, metrics.jsonl and
    config.json (a few kB each: the table is recomputable from them, and copying runs/ back into
    --out restores the finished runs on another machine). Use with --aggregate-only."""


def slug(task: str) -> str:
    key = dataset_key(task)
    return key if key else re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_")


def short_name(task: str) -> str:
    """'mujoco/hopper/medium-replay-v0' -> 'ho-mr' (ScorePen Table 1 row names)."""
    key = dataset_key(task)
    if key:
        env, _, level = key.partition("-")
        if env in _SHORT_ENV and level in _SHORT_LEVEL:
            return f"{_SHORT_ENV[env]}-{_SHORT_LEVEL[level]}"
    return slug(task)


def run_dir(config: SuiteConfig, algo: str, task: str, seed: int) -> Path:
    return Path(config.out) / re.sub(r"[^A-Za-z0-9_.+-]+", "_", algo) / slug(task) / f"seed{seed}"


def train_command(config: SuiteConfig, algo: str, task: str, seed: int, defaults: dict,
                  cores: int | None = None) -> list[str]:
    """The train CLI command of one run; ``cores``: the cores the suite divides (default: this process's)."""
    cmd = [sys.executable, "-m", "pyscorepen.train", *preset_args(algo, defaults), "--task", task,
           "--seed", str(seed), "--out", str(run_dir(config, algo, task, seed))]
    if config.use_dataset_defaults:
        cmd += to_cli_args(dataset_defaults(algo, task, defaults))
    for flag, value in (("--steps", config.steps), ("--eval-interval", config.eval_interval),
                        ("--eval-episodes", config.eval_episodes)):
        if value is not None:
            cmd += [flag, str(value)]
    if not config.progress:
        cmd.append("--no-progress")
    extra = shlex.split(config.extra_args)
    if not any(a.split("=")[0] == "--threads" for a in extra):
        cmd += ["--threads", str(run_threads(config, cores))]
    return cmd + extra


def run_threads(config: SuiteConfig, cores: int | None = None) -> int:
    """--threads of every run: --threads-per-run if given; else Ray runs 1 and local runs
    cores // parallel (``cores``: default the cores this process may use)."""
    from pyscorepen.threads import divide_cores
    if config.threads_per_run is not None:
        return config.threads_per_run
    return 1 if config.ray is not None else divide_cores(config.parallel, cores)


def validate(config: SuiteConfig, defaults: dict) -> None:
    """Before anything is written: the suite's own options, every run's train command line (ranges,
    names, ...) and that every dataset can be found."""
    from pyscorepen.train import parse_config
    from pyscorepen.validation import check_ranges, output_dir_problems, raise_problems
    check_ranges(config)
    raise_problems(output_dir_problems(config.out))
    for task in config.tasks:
        if task != "cliff":
            from pyscorepen.tasks.minari_task import resolve_dataset_location
            resolve_dataset_location(task)
    for algo in config.algos:
        for task in config.tasks:
            parse_config(train_command(config, algo, task, config.seeds[0], defaults)[3:])


def run_suite(config: SuiteConfig, defaults: dict | None = None) -> dict:
    """Launch the missing runs, then aggregate. Returns {'table': markdown, 'rows': [...], 'failed': [...]}.
    ``defaults``: the defaults table to use instead of --defaults-file (e.g. the β sweep's presets)."""
    from pyscorepen.errors import PyScorePenError
    if (config.threads_per_run is not None and config.threads_per_run < 1) or config.ray_max_retries < 0 \
            or config.parallel < 1:
        raise PyScorePenError(f"--threads-per-run must be >= 1 (got {config.threads_per_run}), --parallel >= 1 "
                              f"(got {config.parallel}) and --ray-max-retries >= 0 (got {config.ray_max_retries}).")
    if config.status:
        lines = grid_status(config, time.time())
        print("\n".join(lines))
        return {"table": "", "rows": [], "failed": [], "status": lines}
    defaults = load_defaults(config.defaults_file) if defaults is None else defaults
    if config.ray is not None and not (config.dry_run or config.aggregate_only):
        from pyscorepen.suite_ray import import_ray
        import_ray()   # a missing optional package fails before anything is written
    if not config.aggregate_only:
        validate(config, defaults)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[dict] = []
    if not config.aggregate_only:
        todo = [(a, t, s) for a in config.algos for t in config.tasks for s in config.seeds
                if not (run_dir(config, a, t, s) / SUMMARY).is_file()]
        skipped = len(config.algos) * len(config.tasks) * len(config.seeds) - len(todo)
        print(f"[suite] {len(todo)} run(s) to do, {skipped} finished run(s) skipped", file=sys.stderr)
        if config.ray is not None and not config.dry_run:
            failed += launch_on_ray(config, todo, defaults, out)
            todo = []   # all ran as Ray tasks
        if config.dry_run:
            for algo, task, seed in todo:
                print(" ".join(train_command(config, algo, task, seed, defaults)))
            return {"table": "", "rows": [], "failed": []}
        failed += launch_runs(config, todo, defaults, out)
    (out / SUITE_CONFIG).write_text(dumps_json(asdict(config), indent=2) + "\n")
    rows = aggregate(config)
    table = markdown_table(rows, config.algos, config.tasks)
    (out / "results.md").write_text(table + "\n")
    write_csv(rows, out / "results.csv")
    plot_learning_curves(config, out / "curves")
    if config.publish:
        publish_results(config, Path(config.publish))
    print(table)
    return {"table": table, "rows": rows, "failed": failed}


def log_run(out: Path, algo: str, task: str, seed: int, cmd: list[str], returncode: int | None, wall_s: float,
            stderr_tail: str, **extra) -> list[dict]:
    """Append the run's line to suite_log.jsonl; returns [failure record] or []."""
    record = {"algo": algo, "task": task, "seed": seed, "cmd": cmd, "returncode": returncode,
              "wall_s": round(wall_s, 2), **extra}
    with open(out / "suite_log.jsonl", "a") as f:
        f.write(dumps_json(record) + "\n")
    if returncode == 0:
        return []
    print(f"[suite] FAILED (exit {returncode}): {' '.join(cmd)}\n{stderr_tail}", file=sys.stderr)
    return [{**record, "stderr_tail": stderr_tail}]


def launch_on_ray(config: SuiteConfig, todo: list[tuple[str, str, int]], defaults: dict, out: Path) -> list[dict]:
    """Every run of ``todo`` as a Ray task (see :mod:`pyscorepen.suite_ray`); returns the failures."""
    from dataclasses import replace

    from pyscorepen.suite_ray import run_on_ray, threads_of
    absolute = replace(config, out=str(Path(config.out).resolve()))   # workers may run elsewhere
    jobs = []
    for algo, task, seed in todo:
        cmd = train_command(absolute, algo, task, seed, defaults)
        jobs.append(((algo, task, seed), cmd, threads_of(cmd, run_threads(config))))
    commands = {key: cmd for key, cmd, _ in jobs}
    failed = []
    print(f"[suite] {len(jobs)} run(s) as Ray tasks on {config.ray}", file=sys.stderr)
    for (algo, task, seed), result in run_on_ray(config.ray, jobs, config.ray_max_retries):
        print(f"[suite] done: {algo} {task} seed {seed} (exit {result['returncode']})", file=sys.stderr)
        failed += log_run(out, algo, task, seed, commands[(algo, task, seed)], result["returncode"],
                          result["wall_s"], result["stderr_tail"], backend="ray")
    return failed


def run_status(folder: Path, steps: int | None, started: float | None, now: float) -> str:
    """One status line of a run in progress, from the newest row of its metrics.jsonl: step of
    ``steps``, the last normalized score (or return), updates/s and the time left at the rate since
    its first logged step; "pretraining or starting" before the first evaluation. ``started``
    (time.time of its launch) adds the minutes since; None leaves them out."""
    from pyscorepen.runs import read_metrics
    rows = [r for r in read_metrics(folder) if "step" in r]
    elapsed = f" ({(now - started) / 60:.0f} min)" if started is not None else ""
    if not rows:
        return f"pretraining or starting{elapsed}"
    last = rows[-1]
    step = int(last["step"])
    parts = [f"step {step}" + (f"/{steps} ({100 * step / steps:.0f} %)" if steps else "")]
    if last.get("normalized_score_mean") is not None:
        parts.append(f"normalized {float(last['normalized_score_mean']):.1f}")
    elif last.get("return_mean") is not None:
        parts.append(f"return {float(last['return_mean']):.1f}")
    if last.get("updates_per_s"):
        rate = float(last["updates_per_s"])
        parts.append(f"{rate:.0f} updates/s")
        if steps and step < steps and rate > 0:
            parts.append(f"~{(steps - step) / rate / 60:.0f} min left")
    return ", ".join(parts) + elapsed


def grid_status(config: SuiteConfig, now: float) -> list[str]:
    """``--status``: one line per run of the grid and a count line. Finished: its final score;
    running (a live holder of the run folder's lock, :meth:`pyscorepen.runs.RunLock.holder`):
    :func:`run_status`; stopped: the step of its newest checkpoint (the suite resumes from it);
    not started. Reads the run folders only."""
    from pyscorepen.runs import RunLock, checkpoint_files
    lines, counts = [], {"finished": 0, "running": 0, "stopped": 0, "not started": 0}
    for algo in config.algos:
        for task in config.tasks:
            for seed in config.seeds:
                folder = run_dir(config, algo, task, seed)
                summary = _read_json(folder / SUMMARY)
                holder = None if summary else RunLock.holder(folder)
                checkpoints = checkpoint_files(folder) if folder.is_dir() else []
                if summary:
                    state = "finished"
                    score = summary.get("normalized_score_mean")
                    text = (f"finished, normalized {score:.1f}" if score is not None else
                            f"finished, return {summary.get('return_mean', float('nan')):.1f}")
                elif holder is not None:
                    state, text = "running", f"running ({holder}): {run_status(folder, config.steps, None, now)}"
                elif checkpoints or (folder / METRICS).is_file():
                    state = "stopped"
                    at = f"checkpoint of step {checkpoints[0][0]}" if checkpoints else "no checkpoint yet"
                    text = f"stopped, {at} (rerunning the suite resumes it): {run_status(folder, config.steps, None, now)}"
                else:
                    state, text = "not started", "not started"
                counts[state] += 1
                lines.append(f"{algo} {task} seed {seed}: {text}")
    total = sum(counts.values())
    lines.append(f"[suite] {total} run(s) in {config.out}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return lines


def status_lines(config: SuiteConfig, running: dict, now: float) -> list[str]:
    """``[suite] <algo> <task> seed <s>: <run_status>`` for every run in ``running``
    ({(algo, task, seed): start time})."""
    return [f"[suite] {algo} {task} seed {seed}: {run_status(run_dir(config, algo, task, seed), config.steps, t0, now)}"
            for (algo, task, seed), t0 in sorted(running.items())]


def launch_runs(config: SuiteConfig, todo: list[tuple[str, str, int]], defaults: dict, out: Path) -> list[dict]:
    """Train ``todo`` with up to ``config.parallel`` train subprocesses at a time (each with its share
    of the cores as --threads); one line per run in suite_log.jsonl. Returns the failed runs."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pyscorepen.threads import available_cores
    cores = available_cores()
    threads = run_threads(config, cores)
    if config.parallel * threads > cores:
        print(f"[suite] {config.parallel} run(s) x {threads} thread(s) is more than the {cores} cores available: "
              "runs will share cores", file=sys.stderr)
    elif config.parallel > 1:
        print(f"[suite] {config.parallel} runs at a time, {threads} thread(s) each ({cores} cores)", file=sys.stderr)
    lock, failed, interrupted = threading.Lock(), [], threading.Event()
    running: dict[tuple[str, str, int], float] = {}   # run -> start (time.time)
    done = threading.Event()

    def monitor() -> None:   # a status line per running run every status_interval seconds
        while not done.wait(config.status_interval):
            with lock:
                now_running = dict(running)
            lines = status_lines(config, now_running, time.time())   # reads metrics files: outside the lock
            with lock:
                for line in lines:
                    print(line, file=sys.stderr, flush=True)

    if config.status_interval > 0:
        threading.Thread(target=monitor, daemon=True, name="suite-status").start()

    def one(i: int, algo: str, task: str, seed: int) -> None:
        if interrupted.is_set():
            return
        cmd = train_command(config, algo, task, seed, defaults, cores)
        with lock:
            print(f"[suite] ({i + 1}/{len(todo)}) {algo} {task} seed {seed}", file=sys.stderr)
            running[(algo, task, seed)] = time.time()
        t0 = time.perf_counter()
        try:
            result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            with lock:
                running.pop((algo, task, seed), None)
        stderr_tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        finished = (run_dir(config, algo, task, seed) / SUMMARY).is_file()
        if result.returncode in (0, 130, 143, -2, -15) and not finished:
            # SIGINT/SIGTERM: the run checkpointed itself and stopped (exit 0 / 143) without finishing;
            # the suite stops launching runs, so that an interrupt stops the whole suite
            interrupted.set()
            with lock:
                log_run(out, algo, task, seed, cmd, result.returncode, time.perf_counter() - t0, stderr_tail,
                        interrupted=True)
            return
        with lock:
            failed.extend(log_run(out, algo, task, seed, cmd, result.returncode, time.perf_counter() - t0,
                                  stderr_tail))

    pool = ThreadPoolExecutor(max_workers=max(1, config.parallel))
    try:
        for future in [pool.submit(one, i, *run) for i, run in enumerate(todo)]:
            future.result()
    except BaseException:           # Ctrl-C: no queued run starts; the running ones checkpoint and stop
        interrupted.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        done.set()
    pool.shutdown()
    if interrupted.is_set():
        from pyscorepen.errors import PyScorePenError
        raise PyScorePenError(f"a run was interrupted before it finished; no further run was started. Rerun the "
                              f"same command to resume (finished runs are skipped, unfinished ones resume "
                              f"from their checkpoints in {out}).")
    return failed


# ------------------------------------------------------------------------------------ aggregation
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def behaviour_score(task: str, summaries: list[dict], cache: dict) -> float | None:
    """The dataset's behaviour normalized score: from the runs' summaries (written by the trainer)
    or, for runs made before it did, computed once per task by loading the dataset (None if that
    fails or the task has no reference scores)."""
    for d in summaries:
        if d.get("behaviour_normalized_score") is not None:
            return float(d["behaviour_normalized_score"])
    if task not in cache:
        cache[task] = None
        try:
            from pyscorepen.tasks import make_task
            loaded = make_task(task)
            ret = loaded.info.get("dataset_return_mean")
            cache[task] = None if ret is None else loaded.normalized_score(ret)
        except Exception as err:  # noqa: BLE001 - a missing dataset only leaves the column empty
            print(f"[suite] no behaviour score for {task}: {err}", file=sys.stderr)
    return cache[task]


def _steps(summaries: list[dict]) -> int | str | None:
    """The finished runs' gradient-step budget: one number, or 'a/b' when the seeds differ."""
    steps = sorted({int(d["steps"]) for d in summaries if d.get("steps") is not None})
    return None if not steps else steps[0] if len(steps) == 1 else "/".join(map(str, steps))


def aggregate(config: SuiteConfig) -> list[dict]:
    """One row per (algo, task): normalized score and return, mean and std over finished seeds,
    the step budget and the dataset's behaviour score."""
    rows, behaviour_cache = [], {}
    for algo in config.algos:
        for task in config.tasks:
            summaries = [(s, _read_json(run_dir(config, algo, task, s) / SUMMARY)) for s in config.seeds]
            summaries = [(s, d) for s, d in summaries if d is not None]
            for s, d in summaries:
                if d.get("return_mean") is not None and not _finite(d.get("return_mean")):
                    print(f"[suite] skipped {run_dir(config, algo, task, s)}: non-finite return_mean "
                          f"{d.get('return_mean')!r} (diverged run)", file=sys.stderr)
            summaries = [(s, d) for s, d in summaries
                         if d.get("return_mean") is None or _finite(d.get("return_mean"))]
            done = [d for _, d in summaries]
            norm = [d.get("normalized_score_mean") for _, d in summaries]
            norm = [float(x) for x in norm if x is not None and math.isfinite(float(x))]
            rets = [float(d["return_mean"]) for _, d in summaries if d.get("return_mean") is not None]
            rows.append({
                "algo": algo, "task": task, "dataset": short_name(task),
                "seeds_done": len(summaries), "seeds": ",".join(str(s) for s, _ in summaries),
                "normalized_score_mean": float(np.mean(norm)) if norm else None,
                "normalized_score_std": float(np.std(norm)) if norm else None,
                "return_mean": float(np.mean(rets)) if rets else None,
                "return_std": float(np.std(rets)) if rets else None,
                "steps": _steps(done),
                "behaviour_normalized_score": behaviour_score(task, done, behaviour_cache) if done else None,
            })
            add_published(rows[-1])
    return rows


def add_published(row: dict) -> None:
    """The row's published number (configs/published.toml) and issue 10's bar (pyscorepen.published)."""
    from pyscorepen.published import bar_for, bar_result, published_score
    bar = bar_for(row["task"])
    row["published_normalized_score"] = published_score(row["algo"], row["task"])
    row["bar_rule"] = bar.describe() if bar else ""
    row["bar"] = bar_result(row["task"], row["normalized_score_mean"], row["behaviour_normalized_score"])


_BAR_MARK = {"pass": " ✓", "fail": " ✗", "": ""}


def _cell(row: dict | None, full: int = 0) -> str:
    """One table cell; ``full``: the most seeds any cell has, so a cell with fewer says how many."""
    paper = row.get("published_normalized_score") if row is not None else None
    paper = f" (paper {paper:.1f})" if paper is not None else ""
    if row is None or row["seeds_done"] == 0:
        return "–" + paper
    if row["normalized_score_mean"] is not None:
        text = f"{row['normalized_score_mean']:.1f}±{row['normalized_score_std']:.1f}"
    else:  # no reference scores: raw return, marked
        text = f"R {row['return_mean']:.1f}±{row['return_std']:.1f}"
    partial = row["seeds_done"] < full
    seeds = f" [{row['seeds_done']} of {full} seeds]" if partial else ""
    return text + _BAR_MARK[row.get("bar", "")] + seeds + paper


def markdown_table(rows: list[dict], algos: tuple[str, ...], tasks: tuple[str, ...]) -> str:
    """ScorePen Table 1 layout: rows = datasets, columns = algorithms, cells = mean±std over seeds
    of the D4RL normalized score (``R x±y`` = raw return where a dataset has no reference scores),
    then an Average row over datasets with normalized scores for every algorithm."""
    from pyscorepen.published import COMPARABILITY, bar_for, published_score
    by_key = {(r["algo"], r["task"]): r for r in rows}
    full = max((r["seeds_done"] for r in rows), default=0)   # a cell with fewer seeds is marked
    lines = ["| Task Name | Behaviour | Bar | " + " | ".join(algos) + " |", "|---|---|---|" + "---|" * len(algos)]
    for task in tasks:
        known = [r["behaviour_normalized_score"] for r in rows
                 if r["task"] == task and r.get("behaviour_normalized_score") is not None]
        behaviour = f"{known[0]:.1f}" if known else "–"
        bar = bar_for(task)
        lines.append(f"| {short_name(task)} | {behaviour} | {bar.describe() if bar else '–'} | "
                     + " | ".join(_cell(by_key.get((a, task)), full) for a in algos) + " |")
    averages = []
    for algo in algos:
        means = [by_key[(algo, t)]["normalized_score_mean"] for t in tasks if (algo, t) in by_key]
        stds = [by_key[(algo, t)]["normalized_score_std"] for t in tasks if (algo, t) in by_key]
        papers = [published_score(algo, t) for t in tasks]
        paper = f" (paper {np.mean(papers):.1f})" if papers and all(p is not None for p in papers) else ""
        if means and all(m is not None for m in means):
            averages.append(f"{np.mean(means):.1f}±{np.mean(stds):.1f}{paper}")
        else:
            averages.append("–" + paper)
    lines.append("| Average | | | " + " | ".join(averages) + " |")
    partial = any(0 < r["seeds_done"] < full for r in rows)
    notes = ["fewer where a cell says so"] if partial else []
    notes += ["– : no seed finished yet"] if any(not r["seeds_done"] for r in rows) else []
    steps = sorted({str(r["steps"]) for r in rows if r.get("steps") is not None})
    lines.append("")
    lines.append("D4RL normalized score" + (f" after {' / '.join(steps)} gradient steps" if steps else "")
                 + f", mean ± std over the {full} finished seed(s) of each cell"
                 + (f" ({'; '.join(notes)})" if notes else "") + ". "
                 "Behaviour: the dataset's mean episode return, normalized; "
                 "'R' marks raw returns of datasets without reference scores. "
                 "(paper x): the published D4RL v2 score of the same algorithm and dataset type "
                 "(pyscorepen/configs/published.toml). Bar: issue 10's bar for the dataset level "
                 "(pyscorepen/published.py), ✓ passed / ✗ failed by the mean.")
    lines += ["", COMPARABILITY]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["algo", "task", "dataset", "seeds_done", "seeds", "normalized_score_mean", "normalized_score_std",
              "return_mean", "return_std", "steps", "behaviour_normalized_score", "published_normalized_score",
              "bar_rule", "bar"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------ publishing
_NOT_IN_COMMAND = ("aggregate_only", "dry_run", "status", "publish", "progress")


def suite_command(config: SuiteConfig) -> str:
    """The ``python -m pyscorepen.suite`` command of ``config`` (options left at their defaults and
    --aggregate-only / --dry-run / --publish left out): the command that trains and tabulates the suite."""
    default = SuiteConfig()
    args = ["python", "-m", "pyscorepen.suite"]
    for name, value in asdict(config).items():
        if name in _NOT_IN_COMMAND or value == getattr(default, name) or \
                (isinstance(value, list) and tuple(value) == getattr(default, name)):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        elif name == "extra_args":
            args.append(f"{flag}={value}")
        else:
            args += [flag, str(value)]
    return shlex.join(args)


def run_commands(config: SuiteConfig) -> list[str]:
    """The train command of each finished run of ``config``, from suite_log.jsonl (the last
    successful launch of each; the interpreter written as ``python``)."""
    path = Path(config.out) / "suite_log.jsonl"
    wanted = {(a, t, s) for a in config.algos for t in config.tasks for s in config.seeds}
    last: dict[tuple, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (record.get("algo"), record.get("task"), record.get("seed"))
            if record.get("returncode") == 0 and key in wanted and record.get("cmd"):
                last[key] = ["python", *record["cmd"][1:]]
    return [shlex.join(last[key]) for key in sorted(last, key=str)]


RUN_RECORDS = (SUMMARY, METRICS, "config.json")   # what --publish keeps of a finished run


def publish_results(config: SuiteConfig, folder: Path) -> list[Path]:
    """Copy results.md, results.csv and curves/*.png of the suite folder into ``folder``, each
    finished run's :data:`RUN_RECORDS` into ``folder/runs/`` (the layout of --out), and write
    ``folder/command.md`` (:func:`suite_command` and :func:`run_commands`). Returns the files written."""
    import shutil
    out = Path(config.out)
    (folder / "curves").mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("results.md", "results.csv"):
        shutil.copyfile(out / name, folder / name)
        written.append(folder / name)
    for png in sorted((out / "curves").glob("*.png")):
        shutil.copyfile(png, folder / "curves" / png.name)
        written.append(folder / "curves" / png.name)
    for algo in config.algos:
        for task in config.tasks:
            for seed in config.seeds:
                run = run_dir(config, algo, task, seed)
                if not (run / SUMMARY).is_file():
                    continue
                dest = folder / "runs" / run.relative_to(out)
                dest.mkdir(parents=True, exist_ok=True)
                for name in RUN_RECORDS:
                    if (run / name).is_file():
                        shutil.copyfile(run / name, dest / name)
                        written.append(dest / name)
    commands = run_commands(config)
    text = ["# How these files were made", "",
            "The suite (it trains every missing run, then writes the tables and curves; rerunning it skips "
            "finished runs):", "", "```bash", suite_command(config), "```", "",
            f"then `... --aggregate-only --publish {folder}` copied `results.md`, `results.csv`, "
            f"`curves/` and each finished run's {', '.join(f'`{n}`' for n in RUN_RECORDS)} (`runs/`) from "
            f"`{out}` here. To continue the suite elsewhere without retraining these runs: "
            f"`cp -r {folder}/runs/* <new --out>/`.", ""]
    if commands:
        text += [f"The train command of each of the {len(commands)} finished runs (from `{out}/suite_log.jsonl`; "
                 "runs launched by other suite commands into the same folder, e.g. per dataset with its own "
                 "--extra-args as scripts/mujoco_grid.sh does, show their exact options here):",
                 "", "```bash", *commands, "```", ""]
    (folder / "command.md").write_text("\n".join(text))
    print(f"[suite] published {len(written)} file(s) and command.md to {folder}", file=sys.stderr)
    return written + [folder / "command.md"]


# ------------------------------------------------------------------------------------ curves
def read_curve(run: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(steps, values, metric) from a run's metrics.jsonl; normalized score when available."""
    path = run / METRICS
    if not path.is_file():
        return None
    from pyscorepen.runs import read_metrics
    rows = [r for r in read_metrics(run) if "step" in r]
    if not rows:
        return None
    metric = "normalized_score_mean" if all(r.get("normalized_score_mean") is not None for r in rows) else "return_mean"
    rows = [r for r in rows if _finite(r.get(metric))]      # NaN/inf rows of diverged runs: not plotted
    if not rows:
        return None
    return np.array([r["step"] for r in rows], float), np.array([r[metric] for r in rows], float), metric


def plot_learning_curves(config: SuiteConfig, folder: Path) -> list[Path]:
    """One PNG per dataset: each algorithm's mean over seeds with a ±1 std band.

    Seeds are aligned on the evaluation steps they all share (runs of one suite evaluate at the
    same steps); a seed that has not reached a step yet is left out of that step's statistics, and
    the legend counts the unfinished seeds drawn.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task in config.tasks:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        metric_used = None
        for algo in config.algos:
            runs = [run_dir(config, algo, task, s) for s in config.seeds]
            curves = [c for c in map(read_curve, runs) if c is not None]
            if not curves:
                continue
            unfinished = sum(1 for run in runs if (run / METRICS).is_file() and not (run / SUMMARY).is_file())
            metric_used = curves[0][2]
            steps = np.unique(np.concatenate([c[0] for c in curves]))
            mean, std = [], []
            for step in steps:
                vals = [c[1][c[0] == step][0] for c in curves if (c[0] == step).any()]
                mean.append(np.mean(vals))
                std.append(np.std(vals))
            mean, std = np.array(mean), np.array(std)
            label = f"{algo} ({len(curves)} seeds" + (f", {unfinished} unfinished)" if unfinished else ")")
            line, = ax.plot(steps, mean, label=label)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        if metric_used is None:
            plt.close(fig)
            continue
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("normalized score" if metric_used == "normalized_score_mean" else "return")
        ax.set_title(short_name(task))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{slug(task)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


CLI_DESCRIPTION = (
    'Run algorithms x datasets x seeds with the train CLI (finished runs are skipped), then '
    'write results.md (ScorePen Table 1 layout), results.csv and learning curves. See '
    'docs/mujoco.md.'
)


def parse_args(argv: list[str]) -> SuiteConfig:
    """The CLI; a bare ``--ray`` (last, or followed by another flag) means ``--ray local``."""
    import tyro
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, "local")
            break
    from pyscorepen.errors import DEBUG_HELP
    return tyro.cli(SuiteConfig, args=argv, description=CLI_DESCRIPTION + DEBUG_HELP)


def main(argv: list[str] | None = None) -> int:
    from pyscorepen.errors import cli_main

    def go(argv: list[str]) -> int:
        config = parse_args(argv)
        result = run_suite(config)
        if result["failed"]:
            print(f"[suite] {len(result['failed'])} run(s) failed; see {Path(config.out) / 'suite_log.jsonl'}",
                  file=sys.stderr)
            return 1
        return 0
    return cli_main(go, argv)


if __name__ == "__main__":
    sys.exit(main())
