"""SAC's update captured once in a CUDA graph and replayed every step (opt-in, CUDA only).

A SAC step at batch 256 is ~40 small kernels; on a GPU their launch overhead, not the FLOPs,
bounds it. :class:`GraphedUpdate` records :meth:`pyscorepen.algos.sac.SAC.update` (the module
path: critic, actor and alpha steps with Adam, the Polyak average) on *static* batch tensors with
``torch.cuda.graphs`` and replays it: each call copies the new batch into the static tensors and
launches the whole step as one graph (LeanRL's ``cudagraphs`` flag does the same for CleanRL's SAC).

Host syncs and other things a capture cannot hold, and how they are handled:

* the float statistics (``SAC.stats_to_floats``, one ``.tolist()``): swapped for the identity
  during capture, so a replay returns 0-dim CUDA tensors; convert them when logging, not every step;
* the optimizers: made ``capturable`` (their step counters live on the GPU), before the warm-up;
* ``zero_grad(set_to_none=True)`` inside the step: the gradients are re-allocated from the graph's
  private memory pool, as in PyTorch's whole-network capture example;
* random draws (actor samples, next-action samples): CUDA's Philox generator is graph-safe; each
  replay draws fresh numbers (not the numbers an eager step would draw);
* **not supported**, refused with a clear error: target-time penalties (MOBILE's
  ``bool(model.any())`` is a host sync and its row count varies) and critic regularisers
  (COMBO), whose shapes depend on the batch contents.

The warm-up steps (3, on a side stream, required before a capture) really update the agent on the
example batch; the capture records the step without running it. ``num_updates`` counts only the
replays.
"""
from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from pyscorepen.data import Batch
from pyscorepen.errors import PyScorePenError


def check_capturable(agent) -> None:
    """Raise :class:`PyScorePenError` when ``agent.update`` cannot be captured here (no CUDA, CPU
    agent, or a hook with host syncs / data-dependent shapes)."""
    from pyscorepen.algos.sac import SAC
    if not torch.cuda.is_available():
        raise PyScorePenError("CUDA graphs need a CUDA device: no CUDA here (torch.cuda.is_available() is False).")
    if agent.device.type != "cuda":
        raise PyScorePenError(f"the agent lives on {agent.device}; build it with device='cuda' to capture its update.")
    if agent.target_penalties:
        raise PyScorePenError("target-time penalties (MOBILE) sync with the host inside the update; "
                              "they cannot be captured in a CUDA graph. Use the eager update.")
    if type(agent).critic_regularizer is not SAC.critic_regularizer:
        raise PyScorePenError(f"{type(agent).__name__}'s critic regulariser (COMBO) has data-dependent shapes; "
                              "it cannot be captured in a CUDA graph. Use the eager update.")


class GraphedUpdate:
    """``agent.update`` as one CUDA-graph replay. ``graphed(batch) -> dict[str, Tensor]``.

    ``example``: a batch of the size every later batch has (the static shapes of the graph).
    """

    def __init__(self, agent, example: Batch, warmup_steps: int = 3):
        check_capturable(agent)
        self.agent = agent
        self.static = Batch(*(getattr(example, f.name).detach().clone() for f in fields(Batch)))
        for optim in (agent.actor_optim, agent.critic_optim, agent.alpha_optim):
            for group in optim.param_groups:
                group["capturable"] = True
                for p in group["params"]:       # step counters of an agent updated before: onto the GPU
                    state = optim.state.get(p, {})
                    if isinstance(state.get("step"), Tensor):
                        state["step"] = state["step"].to(p.device, torch.float32)
        counted = agent.num_updates
        agent.stats_to_floats = lambda stats: stats          # instance attribute: no .tolist() sync
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup_steps):
                    agent.update(self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.stats: dict[str, Tensor] = agent.update(self.static)
        finally:
            del agent.stats_to_floats                        # the class's conversion again
        agent.num_updates = counted

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        for f in fields(Batch):
            getattr(self.static, f.name).copy_(getattr(batch, f.name), non_blocking=True)
        self.graph.replay()
        self.agent.num_updates += 1
        return self.stats

    @staticmethod
    def to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
        """The replay's statistics as floats (one device sync)."""
        from pyscorepen.algos.sac import SAC
        return SAC.stats_to_floats(stats)
