"""What a finished run stores for :mod:`pyscorepen.report` besides its metrics.

* ``eval_returns.json``: the per-episode returns (and lengths, cliff distances) of the final
  evaluation, from which the report draws the VaR curve (CDSA Fig. 4: VaR_n = the n-th
  percentile of the sorted episode returns, :func:`pyscorepen.evaluation_metrics.value_at_risk`).
* ``penalty_sample.json``: a sample of the penalty the critic target is lowered by (ScorePen
  Eq. 20, MOPO Alg. 2), on model data and on real data. The *stored* penalty of a real
  transition is 0 by construction, so the real-data side holds what the same plug-ins give the
  dataset's own (s, a) pairs: the rollout plug-ins on the model step from (s, a), the
  target-time plug-ins (MOBILE) as if the transition were model data. Model data: the stored
  penalties of transitions drawn uniformly from the final model buffer, and the target-time
  plug-ins on those transitions. A penalty that separates the data support from model
  excursions shows two well-separated histograms.

Both are computed after training with a private generator inside ``torch.random.fork_rng``,
so writing them changes no other output of the run.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from pyscorepen.data import Batch
from pyscorepen.runs import EVAL_RETURNS, PENALTY_SAMPLE  # noqa: F401  (the file names)


def _finite(values: torch.Tensor) -> tuple[list[float], int]:
    """Finite values as floats (strict JSON) and the count of dropped NaN/inf."""
    v = values.detach().float().cpu().flatten()
    keep = torch.isfinite(v)
    return v[keep].tolist(), int((~keep).sum())


def write_json(path: Path, obj: dict) -> None:
    from pyscorepen import runs
    runs.atomic_write_text(path, runs.dumps_json(obj) + "\n")


def eval_returns(result) -> dict:
    """The final evaluation's episodes (``EvalResult``) as strict JSON."""
    clean = lambda xs: [float(x) for x in xs if math.isfinite(float(x))]
    return {"returns": clean(result.returns), "lengths": [int(x) for x in result.lengths],
            "final_distances": clean(result.final_distances)}


@torch.no_grad()
def penalty_sample(trainer, n: int = 2000, seed: int = 0) -> dict:
    """Penalties on ``n`` model and ``n`` real transitions (see the module docstring).

    Returns ``{"model": {component: [values]}, "real": {...}, "dropped_nonfinite": {...}}``
    where the components are ``stored`` (the sum of the rollout plug-ins, as stored with a
    model transition) and ``target/<name>`` per target-time plug-in. Empty for algorithms
    without model data or penalties.
    """
    out: dict = {"model": {}, "real": {}, "dropped_nonfinite": {}, "n": n}
    target_penalties = list(getattr(trainer.agent, "target_penalties", []))
    if not trainer.algorithm.uses_model or len(trainer.model_buffer) == 0:
        return out
    if not trainer.rollout_penalties and not target_penalties:
        return out
    device = trainer.device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        model = trainer.model_buffer.sample(n, generator=gen)                       # Batch of [n]
        real = trainer.dataset.sample(n, generator=gen)                             # Batch of [n]
        # real (s, a): what the rollout plug-ins would store for a model step from them
        step = trainer.dynamics.step(real.obs, real.actions, score_params=trainer.score_params, generator=gen)
        real_stored = torch.zeros_like(real.rewards)                                # [n]
        for p in trainer.rollout_penalties:
            real_stored += p.coef * p(real.obs, real.actions, step)
        sides = {"model": (model, model.penalty), "real": (real, real_stored)}
        for side, (batch, stored) in sides.items():
            comps = {"stored": stored} if trainer.rollout_penalties else {}
            as_model = Batch(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminals,
                             batch.penalty, torch.ones_like(batch.from_model))
            for p in target_penalties:
                comps[f"target/{p.name}"] = p(trainer.agent, as_model)              # [n]
            for name, values in comps.items():
                out[side][name], dropped = _finite(values)
                if dropped:
                    out["dropped_nonfinite"][f"{side}/{name}"] = dropped
    return out
