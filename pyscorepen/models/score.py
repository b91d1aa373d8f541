"""Denoising score model h_xi(x) ~ grad_x log p_D(x) of the offline data, x = (s, a).

ScorePen-MORL Eq. 9-10 (Vincent 2011 denoising score matching): for normalized x and
noise level sigma, minimize  1/2 E || h(x + sigma z) + z / sigma ||^2 .
With several noise levels (noise-conditioned variant, Song & Ermon 2019) the network also
sees log(sigma) and the loss at each level is weighted by sigma^2; the penalty always uses
the smallest sigma. The penalty ||h(s, a)||^2 (ScorePen Eq. 20) is computed in the
*normalized* space the model is trained in, so beta is independent of the env's units.

Partial scores (CDSA, Liu et al. 2024, Eq. 4-8): with ``perturbed=(start, stop)`` only the
coordinates x[start:stop] are noised and the network outputs only those components of the
score: perturbing the actions of x = (s, a) learns g(s, a) ~ grad_a log p (CDSA Eq. 5-6),
perturbing the states learns h(s, a) ~ grad_s log p (Eq. 7-8). :meth:`ScoreModel.score` returns
the score in the env's units (the normalized score divided by the coordinates' std).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyscorepen.data import Normalizer, TransitionDataset
from pyscorepen.models.nets import mlp, mlp_weights
from pyscorepen.ops.score_penalty import score_penalty
from pyscorepen.rng import get_rng_state, set_rng_state

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 1000
"""Without progress bars, :meth:`ScoreModel.fit` logs one line every this many steps."""


@dataclass
class ScoreConfig:
    sigmas: tuple[float, ...] = (0.1,)
    """Noise level(s) sigma of Eq. 10, in normalized units. One value: plain DSM; several:
    noise-conditioned, penalty at min(sigma). 0.1 gives a boundary layer of ~0.1 std, see README.
    Range: (0, inf), each value."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the score MLP (SiLU). Range: [1, inf), each value."""
    lr: float = 1e-3
    """Adam learning rate. Range: (0, inf)."""
    batch_size: int = 512
    """Minibatch size. Range: [1, inf)."""
    train_steps: int = 5000
    """Gradient steps of score training (done once, before policy learning). Range: [1, inf)."""


class ScoreModel(nn.Module):
    """``perturbed``: the (start, stop) range of x's coordinates that are noised and whose score is
    output (default: all of x); ``activation``: the hidden activation's factory (default SiLU)."""

    FIT_STATE_KEYS = ("step", "net", "optimizer", "scheduler", "losses", "seconds", "rng")
    """Keys of the resumable :meth:`fit` state (a saved one lacking any is not used)."""

    def __init__(self, input_dim: int, config: ScoreConfig, normalizer: Normalizer | None = None,
                 perturbed: tuple[int, int] | None = None, activation=nn.SiLU):
        super().__init__()
        self.config = config
        self.conditioned = len(config.sigmas) > 1
        start, stop = perturbed if perturbed is not None else (0, input_dim)
        if not 0 <= start < stop <= input_dim:
            raise ValueError(f"perturbed range {perturbed} is not inside [0, {input_dim})")
        self.perturbed = slice(start, stop)
        self.net = mlp(input_dim + int(self.conditioned), config.hidden_dims, stop - start, activation=activation)
        self.register_buffer("sigmas", torch.tensor(sorted(config.sigmas), dtype=torch.float32))
        norm = normalizer or Normalizer(torch.zeros(input_dim), torch.ones(input_dim))
        self.register_buffer("input_mean", norm.mean.clone())
        self.register_buffer("input_std", norm.std.clone())

    def forward(self, x_norm: Tensor, sigma: Tensor | None = None) -> Tensor:
        """h(x_norm; sigma): [B, D] -> [B, P] (P = D unless ``perturbed``). sigma [B] (noise-conditioned only)."""
        if self.conditioned:
            if sigma is None:
                sigma = self.sigmas[0].expand(x_norm.shape[0])
            x_norm = torch.cat([x_norm, sigma.log()[:, None]], -1)
        return self.net(x_norm)

    def normalize(self, obs: Tensor, actions: Tensor) -> Tensor:
        return (torch.cat([obs, actions], -1) - self.input_mean) / self.input_std

    def score(self, obs: Tensor, actions: Tensor) -> Tensor:
        """The score of the perturbed coordinates in env units: h(x_norm) / std [B, P]
        (grad_x log p = grad_{x_norm} log p / std for x_norm = (x - mean) / std)."""
        return self(self.normalize(obs, actions)) / self.input_std[self.perturbed]

    def displacement(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Tweedie's denoising step in env units, (sigma std)^2 grad log p_sigma [B, P]: the move from
        x to E[clean x | noisy x = x] (Efron 2011), bounded by the distance to the data for points
        within a few sigma of it; sigma = min(sigmas)."""
        return self(self.normalize(obs, actions)) * self.sigmas[0] ** 2 * self.input_std[self.perturbed]

    def dsm_loss(self, x_norm: Tensor) -> Tensor:
        """Eq. 10 (CDSA Eq. 6 / 8 when ``perturbed``): 1/2 || h(x + sigma z) + z/sigma ||^2 with z
        nonzero on the perturbed coordinates only, weighted by sigma^2 across levels."""
        B = x_norm.shape[0]
        sigma = self.sigmas[torch.randint(len(self.sigmas), (B,), device=x_norm.device)]  # [B]
        z = torch.randn_like(x_norm[:, self.perturbed])                                 # [B, P]
        x_noisy = x_norm.clone()
        x_noisy[:, self.perturbed] += sigma[:, None] * z
        h = self(x_noisy, sigma)                                                        # [B, P]
        weight = (sigma / self.sigmas[0]).square() if self.conditioned else 1.0
        return 0.5 * ((h + z / sigma[:, None]).square().sum(-1) * weight).mean()

    def penalty_net(self) -> nn.Sequential:
        """A plain MLP computing h(x; sigma_min) from normalized x, for the fused penalty op.

        For the conditioned net the log(sigma) input column is folded into the first bias.
        """
        if not self.conditioned:
            return self.net
        first: nn.Linear = self.net[0]
        folded = nn.Linear(first.in_features - 1, first.out_features).to(first.weight.device)
        with torch.no_grad():
            folded.weight.copy_(first.weight[:, :-1])
            folded.bias.copy_(first.bias + first.weight[:, -1] * self.sigmas[0].log())
        return nn.Sequential(folded, *list(self.net)[1:])

    @torch.no_grad()
    def penalty_params(self, input_mean: Tensor | None = None,
                       input_std: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """(weights [in, out], biases [out]) of :meth:`penalty_net` for the fused ops.

        With ``input_mean``/``input_std`` the net takes x normalized by *those* statistics, e.g.
        the dynamics ensemble's (fitted on its training split only), which the fused rollout op
        applies to (s, a) before both the ensemble and the score net. This model was trained on x
        normalized by its own statistics, x_own = x_norm * (std / std_own) + (mean - mean_own) /
        std_own, and that affine map is folded into the first layer: W0' = diag(std / std_own) W0,
        b0' = b0 + ((mean - mean_own) / std_own) W0. The penalty is then ||h||^2 at the same
        point in this model's space (Eq. 20), not at a point shifted by the difference of the two
        normalizers (0.02 % of a std on hopper-medium-replay's 1 000-row holdout, several % with
        the 20 % holdout of a small dataset).
        """
        weights, biases = mlp_weights(self.penalty_net())
        if input_mean is None:
            return weights, biases
        scale = input_std / self.input_std                                  # [D]
        shift = (input_mean - self.input_mean) / self.input_std             # [D]
        first = weights[0]                                                  # [D, H]
        return [scale[:, None] * first, *weights[1:]], [biases[0] + shift @ first, *biases[1:]]

    @torch.no_grad()
    def penalty(self, obs: Tensor, actions: Tensor) -> Tensor:
        """||h(s, a)||^2 in normalized space (ScorePen Eq. 20): [B], through the fused op."""
        weights, biases = mlp_weights(self.penalty_net())
        return score_penalty(self.normalize(obs, actions), weights, biases)

    def fit(self, dataset: TransitionDataset, generator: torch.Generator | None = None,
            progress: bool = True, resume: dict | None = None,
            on_step: Callable[[int, Callable[[], dict]], None] | None = None) -> dict[str, float]:
        """Train with Eq. 10 for ``train_steps`` steps, then freeze. Returns training statistics.

        Resumable: after every step but the last, ``on_step(steps_done, state_fn)`` is called;
        ``state_fn()`` returns the whole fit state (weights, optimizer, schedule, logged losses,
        RNG), and passing it back as ``resume`` continues bit-identically.
        Raises :class:`~pyscorepen.errors.DivergenceError` when a logged DSM loss is NaN/inf.
        """
        cfg, device = self.config, self.input_mean.device
        norm = dataset.input_normalizer()
        self.input_mean.copy_(norm.mean)
        self.input_std.copy_(norm.std)
        x = self.normalize(dataset.obs.to(device), dataset.actions.to(device))          # [N, D]
        optim = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, cfg.train_steps)
        start, losses, seconds = 0, [], 0.0
        if resume is not None:
            self.net.load_state_dict(resume["net"])
            optim.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start, losses, seconds = resume["step"], list(resume["losses"]), resume["seconds"]
            set_rng_state(resume["rng"], generator)
        t0 = time.perf_counter()

        def state_fn() -> dict:
            check_finite(loss, step + 1)            # never checkpoint a diverged model
            return {"step": step + 1, "net": self.net.state_dict(), "optimizer": optim.state_dict(),
                    "scheduler": sched.state_dict(), "losses": losses,
                    "seconds": seconds + time.perf_counter() - t0, "rng": get_rng_state(generator)}

        def check_finite(value: Tensor, at_step: int) -> float:
            value = value.item()
            if not math.isfinite(value):
                from pyscorepen.errors import DivergenceError
                raise DivergenceError(f"the score model's DSM loss is {value} at step {at_step}; lower --score.lr")
            return value

        bar = tqdm(total=cfg.train_steps, initial=start, desc="score", disable=not progress, leave=False)
        for step in range(start, cfg.train_steps):
            idx = torch.randint(x.shape[0], (cfg.batch_size,), generator=generator).to(device)
            loss = self.dsm_loss(x[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            bar.update(1)
            if step % 100 == 0 or step == cfg.train_steps - 1:
                losses.append(check_finite(loss, step + 1))
                bar.set_postfix(dsm_loss=f"{losses[-1]:.3f}")
            if not progress and ((step + 1) % LOG_EVERY_STEPS == 0 or step == cfg.train_steps - 1):
                log.info("score step %d/%d: DSM loss %.4g (last logged), %.0f s", step + 1, cfg.train_steps,
                         losses[-1], time.perf_counter() - t0)
            if on_step is not None and step + 1 < cfg.train_steps:
                on_step(step + 1, state_fn)
        bar.close()
        self.requires_grad_(False)    # frozen afterwards (ScorePen Alg. 1, line 2)
        return {"score/dsm_loss_first": losses[0], "score/dsm_loss_last": sum(losses[-5:]) / len(losses[-5:]),
                "score/seconds": seconds + time.perf_counter() - t0}
