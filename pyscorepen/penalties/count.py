"""Count-based penalty (Count-MORL: Kim & Oh 2023, "Model-based Offline Reinforcement Learning
with Count-based Conservatism", ICML; ScorePen-MORL Table 2 and Fig. 2d).

Count-MORL lowers a model transition's reward by a penalty proportional to the inverse square
root of how often its state-action pair occurs in the offline dataset:

    u(s, a) = 1 / sqrt(n(s, a) + 1),

where n counts the dataset pairs that share (s, a)'s hash code. The "+1" is our choice: it keeps
the penalty finite (1, the largest value) for pairs the dataset never visits, and strictly
decreasing in n. The hash is a SimHash (Charikar 2002; #Exploration, Tang et al. 2017):
k random hyperplanes over the normalized z = ((s, a) - mean) / std,

    code(z) = [ sign(u_i . z - t_i) ]_{i=1..k},   u_i uniform on the unit sphere,  t_i ~ N(0, 1).

The offsets t_i are our addition to the plain sign hash sign(w_i . z): without them every
hyperplane passes through the data mean, the cells are cones, and z and 3z always share a code;
with them, the hyperplanes cut the data at standard-normal distances from its mean, so cells
have the data's scale and points beyond the data fall in cells with few or no dataset pairs
(measured against N(0, 1) offsets and hyperplanes through random data points: the best
contrast of in-data vs far-away counts of the three). The outer cells are still unbounded,
a limit of any hyperplane hash (ScorePen-MORL §5.1 on Count-MORL's hash codes). k sets the
granularity (more bits: finer cells, smaller counts).

Everything is tensor code on the dataset's device: codes -> int64 keys (bit i -> 2^i), the
dataset's keys sorted once with their counts (``torch.unique``), queries looked up with
``torch.searchsorted``. No Python loop over rows or bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pyscorepen.ops.rollout_step import RolloutStepOut


class SimHashCounter:
    """Counts of the dataset's (s, a) pairs per SimHash cell; ``count(x)`` for new pairs."""

    def __init__(self, x: Tensor, bits: int = 16, generator: torch.Generator | None = None):
        """x [N, D]: the dataset's (s, a) rows (raw units; normalized here with their own statistics)."""
        if not 1 <= bits <= 62:
            raise ValueError(f"SimHash bits must be in [1, 62] (int64 keys), got {bits}")
        self.mean = x.mean(0)                                                  # [D]
        self.std = x.std(0).clamp_min(1e-6)                                    # [D]
        D = x.shape[1]
        planes = torch.randn(D, bits, generator=generator)                     # [D, k]
        self.planes = (planes / planes.norm(dim=0)).to(x.device)               # unit normals u_i
        self.offsets = -torch.randn(bits, generator=generator).to(x.device)    # [k]: -t_i
        self.powers = 2 ** torch.arange(bits, device=x.device, dtype=torch.int64)  # [k]
        self.keys, self.counts = torch.unique(self.hash(x), return_counts=True)    # [U] sorted, [U]

    def hash(self, x: Tensor) -> Tensor:
        """x [B, D] -> int64 keys [B]: the k sign bits of u_i . z - t_i, bit i worth 2^i."""
        z = (x - self.mean) / self.std                                         # [B, D]
        bits = torch.addmm(self.offsets, z, self.planes) > 0                   # [B, k]
        return (bits.long() * self.powers).sum(-1)                             # [B]

    def count(self, x: Tensor) -> Tensor:
        """Dataset pairs in the cell of each row of x [B, D] -> [B] int64 (0 for unseen cells)."""
        keys = self.hash(x)                                                    # [B]
        pos = torch.searchsorted(self.keys, keys).clamp_max(self.keys.numel() - 1)  # [B]
        return torch.where(self.keys[pos] == keys, self.counts[pos], torch.zeros_like(pos))


@dataclass
class CountPenalty:
    """coef / sqrt(n(s, a) + 1), n from :class:`SimHashCounter` over the offline dataset (Count-MORL)."""

    coef: float
    counter: SimHashCounter
    name: str = "count"
    requires_score: bool = False
    requires_all_members: bool = False   # a function of (s, a) alone: elite-only rollouts

    def __call__(self, obs: Tensor, actions: Tensor, step: RolloutStepOut) -> Tensor:
        n = self.counter.count(torch.cat([obs, actions], -1))                  # [B]
        return (n.to(obs.dtype) + 1.0).rsqrt()                                 # [B]


def factory(coef: float, **context) -> CountPenalty:
    """Registry factory (:data:`pyscorepen.penalties.PENALTIES`): hashes the context's dataset with
    ``config.count_hash_bits`` bits, planes drawn from a generator seeded with ``config.seed``."""
    config = context.get("config")
    generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0)))
    counter = SimHashCounter(context["dataset"].obs_actions(), bits=getattr(config, "count_hash_bits", 16),
                             generator=generator)
    return CountPenalty(coef, counter)
