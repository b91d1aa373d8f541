"""Network building blocks: vectorized ensembles (weights ``[E, in, out]``), plain MLPs,
the tanh-Gaussian actor and a vectorized Q ensemble."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyscorepen.ops.ensemble_mlp import resolve as _ensemble_mlp_backend
from pyscorepen.ops.ensemble_mlp import run as _run_ensemble_mlp


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated with one batched matmul.

    weight: [E, in, out]; bias: [E, out]. Input [E, B, in] (or [B, in], shared).
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, out_features))
        bound = 1.0 / math.sqrt(in_features)
        # truncated-normal init as in MBPO/MOPO (std 1/(2 sqrt(in)))
        nn.init.trunc_normal_(self.weight, std=0.5 * bound, a=-bound, b=bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)       # [E, B, in]
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)  # [E, B, out]


class EnsembleMLP(nn.Module):
    """Ensemble MLP with SiLU hidden activations; all members in one batched GEMM per layer."""

    def __init__(self, ensemble_size: int, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int):
        super().__init__()
        dims = (in_dim, *hidden_dims, out_dim)
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.ensemble_size = ensemble_size

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """x [B, in] or [E', B, in] -> [E', B, out]; ``members`` (int64 [E']): only those members
        (e.g. the elites), the others are not evaluated; None: all E."""
        weights, biases = self.weights(), self.biases()
        if members is not None:
            weights = [w.index_select(0, members) for w in weights]        # [E', in, out]
            biases = [b.index_select(0, members) for b in biases]          # [E', out]
        backend = _ensemble_mlp_backend(x, weights, "silu")
        if backend != "ref":  # one fused forward (+ backward) op for all layers and members
            return _run_ensemble_mlp(backend, x, weights, biases, "silu")
        # SiLU's backward needs its input: in place only when no graph is recorded. In place
        # matters on CPU: a fresh large activation costs page faults (17x a relu_ at 3M floats).
        inplace = not torch.is_grad_enabled()
        for layer, (w, b) in enumerate(zip(weights, biases)):
            x = torch.baddbmm(b.unsqueeze(1), x if x.dim() == 3 else x.expand(w.shape[0], *x.shape), w)
            if layer + 1 < len(weights):
                x = F.silu(x, inplace=inplace)
        return x

    def weights(self) -> list[Tensor]:
        return [layer.weight for layer in self.layers]

    def biases(self) -> list[Tensor]:
        return [layer.bias for layer in self.layers]


def mlp(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, activation=nn.SiLU) -> nn.Sequential:
    dims = (in_dim, *hidden_dims)
    layers: list[nn.Module] = []
    for i, o in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(i, o), activation()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def relu_mlp(net: nn.Sequential, x: Tensor) -> Tensor:
    """``net(x)`` for a ReLU MLP made by :func:`mlp` and x [B, in] -> [B, out].

    Through the dispatching ``ensemble_mlp`` op as a 1-member ensemble (weights [1, in, out])
    wherever its measured per-ISA/vendor policy picks a fused backend for this many rows (the
    critics' rule, ``ensemble_mlp/relu`` in :data:`pyscorepen.ops.backend.CPP_MIN_ROWS`), else the
    ``nn.Linear`` layers (ref backend, small batches on Intel, other shapes). On AMD, where MKL's
    GEMM runs a slow path, the op is 1.85x (256 rows) to 2.2x (4 096 rows, a rollout chunk) faster
    for the SAC actor's (256, 256) net (1 thread, Zen 5). Autograd reaches the Linear weights
    through the transposed copies.
    """
    if x.dim() == 2:
        linears = [m for m in net if isinstance(m, nn.Linear)]
        # the policy reads the rows (and x's device/dtype) only: no weight copies unless it picks the op
        backend = _ensemble_mlp_backend(x, [m.weight for m in linears], "relu")
        if backend != "ref":
            weights = [m.weight.t().contiguous().unsqueeze(0) for m in linears]      # [1, in, out]
            biases = [m.bias.unsqueeze(0) for m in linears]                          # [1, out]
            return _run_ensemble_mlp(backend, x, weights, biases, "relu")[0]         # [B, out]
    return net(x)


def mlp_weights(net: nn.Sequential) -> tuple[list[Tensor], list[Tensor]]:
    """Weights as [in, out] (transposed nn.Linear layout) and biases [out], for the fused ops."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    return [m.weight.t().contiguous() for m in linears], [m.bias.detach() for m in linears]


class TanhGaussianActor(nn.Module):
    """SAC actor: a ~ scale * tanh(u) + offset, u ~ N(mu(s), sigma(s)) (Haarnoja et al. 2018, App. C)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...],
                 action_low: Tensor, action_high: Tensor):
        super().__init__()
        # in-place ReLU: the Linear's backward does not need its output, and on CPU a fresh large
        # activation costs page faults (MOBILE/COMBO evaluate the actor on thousands of rows)
        self.net = mlp(obs_dim, hidden_dims, 2 * action_dim, activation=lambda: nn.ReLU(inplace=True))
        self.register_buffer("action_scale", ((action_high - action_low) / 2).float())
        self.register_buffer("action_offset", ((action_high + action_low) / 2).float())

    def trunk(self, obs: Tensor) -> Tensor:
        """The ReLU MLP's output mu | log_std [B, 2A] for obs [B, S] (:func:`relu_mlp`)."""
        return relu_mlp(self.net, obs)

    def forward(self, obs: Tensor, deterministic: bool = False, with_log_prob: bool = True, repeats: int = 1
                ) -> tuple[Tensor, Tensor | None]:
        """Actions [B, A] (and log pi [B]) for obs [B, S]. ``repeats`` = R > 1: R independent
        samples per state, as ``forward(obs.repeat(R, 1))`` returns them ([R*B, A], row r*B + b) and
        with the same noise draw, but with the MLP evaluated once per state, not R times."""
        mu, log_std = self.trunk(obs).chunk(2, dim=-1)               # [B, A] each
        if repeats > 1:
            mu, log_std = mu.repeat(repeats, 1), log_std.repeat(repeats, 1)   # [R*B, A]
        if deterministic:
            return torch.tanh(mu) * self.action_scale + self.action_offset, None
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)                          # [B, A]
        action = torch.tanh(u) * self.action_scale + self.action_offset
        if not with_log_prob:
            return action, None
        # log N(u; mu, std) - sum log(1 - tanh(u)^2), the latter in a stable form. The density is
        # that of the action in the normalized box [-1, 1]^A: the constant log(action_scale) is left
        # out so that the entropy target -A means the same for every env's action units.
        log_prob = (-0.5 * ((u - mu) / std).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return action, log_prob                                      # [B, A], [B]


class QEnsemble(nn.Module):
    """N critics Q_k(s, a) evaluated together (N=2 for SAC's twin critics). Returns [N, B]."""

    def __init__(self, num_critics: int, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...]):
        super().__init__()
        dims = (obs_dim + action_dim, *hidden_dims, 1)
        self.layers = nn.ModuleList(EnsembleLinear(num_critics, i, o) for i, o in zip(dims[:-1], dims[1:]))
        for layer in self.layers:  # PyTorch nn.Linear-style init for critics
            bound = 1.0 / math.sqrt(layer.weight.shape[1])
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.uniform_(layer.bias, -bound, bound)
        self.num_critics = num_critics

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([obs, actions], dim=-1)                        # [..., B, S+A]
        weights = [layer.weight for layer in self.layers]
        backend = _ensemble_mlp_backend(x, weights, "relu")
        if backend != "ref":  # one fused forward (+ backward) op for all layers and critics
            return _run_ensemble_mlp(backend, x, weights, [layer.bias for layer in self.layers],
                                     "relu").squeeze(-1)   # [N, B]
        for layer in self.layers[:-1]:
            x = F.relu(layer(x), inplace=True)                       # [N, B, H] (baddbmm's backward keeps no output)
        return self.layers[-1](x).squeeze(-1)                        # [N, B]


class GaussianActor(nn.Module):
    """IQL / BC policy: pi(a|s) = N(mean(s), diag(exp(log_std))) with mean(s) = scale * tanh(mu(s)) + offset
    and a state-independent log_std (the ``NormalTanhPolicy(tanh_squash_distribution=False,
    state_dependent_std=False)`` of IQL's official code, Kostrikov et al. 2021). Densities are taken in
    the normalized box [-1, 1]^A, so the AWR weights do not depend on the env's action units."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...],
                 action_low: Tensor, action_high: Tensor, log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, action_dim, activation=nn.ReLU)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.register_buffer("action_scale", ((action_high - action_low) / 2).float())
        self.register_buffer("action_offset", ((action_high + action_low) / 2).float())

    def mean_unit(self, obs: Tensor) -> Tensor:
        """Mean action in the normalized box: tanh(mu(s)) [B, A] (the MLP through :func:`relu_mlp`)."""
        return torch.tanh(relu_mlp(self.net, obs))

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log pi(a|s) [B] of env-unit actions [B, A] (in normalized units)."""
        mean = self.mean_unit(obs)                                              # [B, A]
        a = (actions - self.action_offset) / self.action_scale                 # [B, A]
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)       # [A]
        return (-0.5 * ((a - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: Tensor, deterministic: bool = False, with_log_prob: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        mean = self.mean_unit(obs)                                              # [B, A]
        if not deterministic:
            std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
            mean = (mean + std * torch.randn_like(mean)).clamp(-1.0, 1.0)
        return mean * self.action_scale + self.action_offset, None
