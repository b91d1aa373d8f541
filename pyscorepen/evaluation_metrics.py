"""Evaluation metrics: D4RL normalized score, value-at-risk, and the summary a run stores.

* D4RL normalized score (Fu et al. 2020): ``100 * (R - R_random) / (R_expert - R_random)``.
* VaR at the n-th percentile of the sorted episode returns, the risk metric of CDSA
  (Liu et al. 2024, Fig. 4: "VaR (the n-th percentile of cumulative sorted reward)").

Reference scores are never invented: :func:`resolve_reference_scores` takes them from the
``--ref-min/--ref-max`` flags, the Minari metadata, or a sidecar file written by
``python -m pyscorepen.collect --ref-scores-only ...``, and says which one it used.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

DEFAULT_VAR_PERCENTILES: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)
REF_SCORES_FILE = "pyscorepen_ref_scores.json"
"""Sidecar file next to a Minari dataset's ``data/`` folder holding computed reference scores."""


def normalized_score(ret: float, ref_min: float | None, ref_max: float | None) -> float | None:
    """D4RL normalized score 100 * (R - min) / (max - min); None without both references."""
    if ref_min is None or ref_max is None:
        return None
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)


def value_at_risk(returns: Sequence[float] | torch.Tensor,
                  percentiles: Sequence[float] = DEFAULT_VAR_PERCENTILES) -> dict[str, float]:
    """VaR_n = the n-th percentile of the episode returns (CDSA Fig. 4), linear interpolation.

    Higher is better (a risk-averse policy raises the low percentiles). Returns
    ``{"var_5": ..., "var_10": ...}``.
    """
    x = torch.as_tensor(returns, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("value_at_risk needs at least one return")
    q = torch.tensor([p / 100.0 for p in percentiles], dtype=torch.float64)
    values = torch.quantile(x, q)
    return {f"var_{_fmt(p)}": float(v) for p, v in zip(percentiles, values)}


def _fmt(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p).replace(".", "_")


def summarize_returns(returns: Sequence[float] | torch.Tensor, task=None,
                      percentiles: Sequence[float] = DEFAULT_VAR_PERCENTILES) -> dict:
    """Summary of a set of evaluation episodes, to merge into a run's ``summary.json``.

    Keys: ``return_mean``, ``return_std``, ``normalized_score_mean``, ``normalized_score_std``
    (None when the task has no reference scores), ``var_<p>`` for each percentile and
    ``normalized_var_<p>`` (None without references).
    ``task`` is a :class:`pyscorepen.tasks.Task` (anything with ``ref_min_score``/``ref_max_score``).
    """
    x = torch.as_tensor(returns, dtype=torch.float64).flatten()
    ref_min = getattr(task, "ref_min_score", None)
    ref_max = getattr(task, "ref_max_score", None)
    std = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
    out: dict = {"return_mean": float(x.mean()), "return_std": std, "num_episodes": int(x.numel())}
    if ref_min is not None and ref_max is not None:
        scale = 100.0 / (ref_max - ref_min)
        out["normalized_score_mean"] = (out["return_mean"] - ref_min) * scale
        out["normalized_score_std"] = std * abs(scale)
    else:
        out["normalized_score_mean"] = None
        out["normalized_score_std"] = None
    var = value_at_risk(x, percentiles)
    out.update(var)
    for key, v in var.items():
        out[f"normalized_{key}"] = normalized_score(v, ref_min, ref_max)
    return out


def read_ref_scores_file(dataset_root: str | Path) -> dict | None:
    """Reference scores written by ``collect --ref-scores-only`` next to a dataset, or None."""
    path = Path(dataset_root) / REF_SCORES_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def resolve_reference_scores(metadata: dict, ref_min: float | None = None, ref_max: float | None = None,
                             dataset_root: str | Path | None = None, dataset_name: str = "",
                             ref_scores_command: str = "", stream=None
                             ) -> tuple[float | None, float | None, str]:
    """Choose ``(ref_min_score, ref_max_score, source)`` and print a notice on any fallback.

    Order per value: explicit flag (``--ref-min``/``--ref-max``) > Minari metadata
    (``ref_min_score``/``ref_max_score``) > sidecar file from ``collect --ref-scores-only``.
    A missing value stays None (normalized scores are then reported as None), never guessed.
    """
    stream = sys.stderr if stream is None else stream
    sidecar = read_ref_scores_file(dataset_root) if dataset_root is not None else None
    chosen: list[float | None] = []
    sources: list[str] = []
    for key, flag_value, flag in (("ref_min_score", ref_min, "--ref-min"), ("ref_max_score", ref_max, "--ref-max")):
        if flag_value is not None:
            chosen.append(float(flag_value))
            sources.append(f"{key} from {flag}")
        elif metadata.get(key) is not None and math.isfinite(float(metadata[key])):
            chosen.append(float(metadata[key]))
            sources.append(f"{key} from Minari metadata")
        elif sidecar is not None and sidecar.get(key) is not None:
            chosen.append(float(sidecar[key]))
            sources.append(f"{key} from {Path(dataset_root) / REF_SCORES_FILE}")
        else:
            chosen.append(None)
            sources.append(f"{key} missing")
    source = "; ".join(sources)
    if not all(s.endswith("from Minari metadata") for s in sources):
        msg = f"[pyscorepen] reference scores for {dataset_name or 'the dataset'}: {source}."
        if chosen[0] is None or chosen[1] is None:
            command = ref_scores_command or "python -m pyscorepen.collect --ref-scores-only --task <dataset>"
            msg += (" Normalized scores will be reported as None. Pass --ref-min/--ref-max"
                    f" or compute them with `{command}`.")
        print(msg, file=stream)
    return chosen[0], chosen[1], source
