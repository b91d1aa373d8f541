"""``python -m pyscorepen.gpu_check graph``: the CUDA-graph part of ``scripts/gpu_check.sh``.

Builds two identical SAC agents at Hopper sizes (obs 11, action 3, (256, 256) nets, batch 256) on
the GPU, trains one with the eager ``SAC.update`` and one with :class:`pyscorepen.algos.cuda_graph.
GraphedUpdate` on the same sequence of batches, and reports both update rates and whether the
graphed agent learns like the eager one (finite losses, every network changed, mean critic loss
and Q within a loose band of the eager run's: the random draws differ, so the runs are compared
as statistics, not bit for bit). Prints one JSON object; exit 0 when every check passed, 1 when
one failed, 2 when there is no CUDA device (a clear one-line message, no traceback).
"""
from __future__ import annotations

import copy
import json
import sys
import time

import torch

from pyscorepen.errors import PyScorePenError

OBS, ACT, BATCH = 11, 3, 256


def _batches(n: int, device, seed: int = 0):
    from pyscorepen.data import Batch
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        obs = torch.randn(BATCH, OBS, generator=gen)
        out.append(Batch(obs, torch.rand(BATCH, ACT, generator=gen) * 2 - 1, torch.randn(BATCH, generator=gen),
                         obs + 0.1 * torch.randn(BATCH, OBS, generator=gen), torch.zeros(BATCH),
                         0.1 * torch.rand(BATCH, generator=gen), torch.rand(BATCH, generator=gen) < 0.95).to(device))
    return out


def graph_check(steps: int = 500) -> dict:
    from pyscorepen.algos.cuda_graph import GraphedUpdate, check_capturable
    from pyscorepen.algos.sac import SAC, SACConfig
    if not torch.cuda.is_available():
        raise PyScorePenError("no CUDA: torch.cuda.is_available() is False, nothing to capture on this machine.")
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = SAC(OBS, ACT, SACConfig(), -torch.ones(ACT), torch.ones(ACT), device)
    graphed_agent = copy.deepcopy(eager)
    check_capturable(graphed_agent)
    initial = {k: v.detach().clone() for k, v in graphed_agent.actor.named_parameters()}
    initial_critic = {k: v.detach().clone() for k, v in graphed_agent.critic.named_parameters()}
    batches = _batches(16, device)

    def timed(fn) -> tuple[float, list]:
        torch.cuda.synchronize()
        t0, stats = time.perf_counter(), []
        for i in range(steps):
            stats.append(fn(batches[i % len(batches)]))
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0), stats

    # the eager run gets the same 3 extra steps on the first batch as the capture's warm-up (the
    # captured step itself is recorded, not executed)
    for _ in range(3):
        eager.update(batches[0])
    eager_rate, eager_stats = timed(eager.update)
    t0 = time.perf_counter()
    graphed = GraphedUpdate(graphed_agent, batches[0])
    capture_s = time.perf_counter() - t0
    graph_rate, graph_stats = timed(graphed)
    graph_stats = [GraphedUpdate.to_floats(s) for s in graph_stats[-50:]]
    eager_tail = eager_stats[-50:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    result = {"steps": steps, "batch": BATCH, "device": torch.cuda.get_device_name(),
              "eager_updates_per_s": eager_rate, "graphed_updates_per_s": graph_rate,
              "speedup": graph_rate / eager_rate, "capture_s": capture_s,
              "eager_critic_loss": mean(eager_tail, "loss/critic"), "graphed_critic_loss": mean(graph_stats, "loss/critic"),
              "eager_q_mean": mean(eager_tail, "q_mean"), "graphed_q_mean": mean(graph_stats, "q_mean"),
              "num_updates": graphed_agent.num_updates}
    finite = all(all(v == v and abs(v) != float("inf") for v in s.values()) for s in graph_stats)
    actor_changed = all(not torch.equal(v, initial[k]) for k, v in graphed_agent.actor.named_parameters())
    critic_changed = all(not torch.equal(v, initial_critic[k]) for k, v in graphed_agent.critic.named_parameters())
    q_close = abs(result["graphed_q_mean"] - result["eager_q_mean"]) <= 0.25 * abs(result["eager_q_mean"]) + 0.5
    loss_close = result["graphed_critic_loss"] <= 3 * result["eager_critic_loss"] + 0.1
    result["checks"] = {"finite": finite, "actor_changed": actor_changed, "critic_changed": critic_changed,
                        "q_mean_close_to_eager": q_close, "critic_loss_close_to_eager": loss_close,
                        "num_updates_counts_replays": graphed_agent.num_updates == steps}
    result["ok"] = all(result["checks"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "graph":
        print("usage: python -m pyscorepen.gpu_check graph [steps]", file=sys.stderr)
        return 2
    try:
        result = graph_check(int(argv[1]) if len(argv) > 1 else 500)
    except PyScorePenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
