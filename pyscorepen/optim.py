"""The optimizer states the whole-step ops (``sac_update``, ``dynamics_fit_step``) update in place."""
from __future__ import annotations

import torch
from torch import Tensor


def adam_states(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(exp_avg, exp_avg_sq, step) of each parameter in ``optimizer`` (a torch.optim.Adam), created
    as Adam's lazy initialisation does when the parameter has no state yet; the tensors are the
    optimizer's own, so an op updating them in place is what ``optimizer.state_dict()`` saves."""
    out = []
    for p in params:
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        state = optimizer.state[p]
        if len(state) == 0:
            state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if group["fused"]
                             else torch.tensor(0.0, dtype=torch.float32))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append((state["exp_avg"], state["exp_avg_sq"], state["step"]))
    return out
