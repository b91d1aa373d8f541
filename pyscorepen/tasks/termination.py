"""Termination functions for model rollouts.

A termination function maps ``(obs [..., S], actions [..., A], next_obs [..., S])`` to a bool
mask ``[...]`` (True = true terminal, never a time-out). Leading dimensions are free, so the
same function works on ``[B, S]`` batches and on ``[E, B, S]`` ensemble predictions.

* Static functions for the Gymnasium v5 MuJoCo envs that terminate, written from
  ``gymnasium/envs/mujoco/{hopper,walker2d,ant}_v5.py`` (``is_healthy`` and ``_get_obs``).
  v5 drops the x position from the observation by default, so ``obs[0]`` is the torso height.
* ``None`` for envs that never terminate (HalfCheetah, Swimmer, Reacher, Pusher).
* :class:`LearnedTermination`, a small classifier trained on the dataset's terminals, as the
  fallback for envs with no static function (used only when the dataset has terminals).

:func:`resolve_termination_fn` implements that order of choice.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyscorepen.data import Normalizer, TransitionDataset

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]

INF = math.inf


def _strictly_inside(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    return (x > bounds[0]) & (x < bounds[1])


def hopper_termination_fn(healthy_z_range: tuple[float, float] = (0.7, INF),
                          healthy_angle_range: tuple[float, float] = (-0.2, 0.2),
                          healthy_state_range: tuple[float, float] = (-100.0, 100.0),
                          exclude_current_positions_from_observation: bool = True) -> TerminationFn:
    """Hopper-v5 ``is_healthy``: z = qpos[1], angle = qpos[2], state = state_vector()[2:].

    With the default observation (x excluded) that is z = obs[0], angle = obs[1] and
    state = obs[1:] (velocities in obs are clipped to [-10, 10], so the +-100 state bound
    can only be violated by the positions). Ranges are open intervals, as in gymnasium.
    """
    offset = 0 if exclude_current_positions_from_observation else 1

    def termination_fn(obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        z = next_obs[..., offset]                                     # [...]
        angle = next_obs[..., offset + 1]                             # [...]
        state = next_obs[..., offset + 1:]                            # [..., S - 1 - offset]
        healthy = (_strictly_inside(state, healthy_state_range).all(-1)
                   & _strictly_inside(z, healthy_z_range)
                   & _strictly_inside(angle, healthy_angle_range))
        return ~healthy

    return termination_fn


def walker2d_termination_fn(healthy_z_range: tuple[float, float] = (0.8, 2.0),
                            healthy_angle_range: tuple[float, float] = (-1.0, 1.0),
                            exclude_current_positions_from_observation: bool = True) -> TerminationFn:
    """Walker2d-v5 ``is_healthy``: 0.8 < z < 2.0 and -1 < angle < 1 (z = obs[0], angle = obs[1])."""
    offset = 0 if exclude_current_positions_from_observation else 1

    def termination_fn(obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        z = next_obs[..., offset]
        angle = next_obs[..., offset + 1]
        return ~(_strictly_inside(z, healthy_z_range) & _strictly_inside(angle, healthy_angle_range))

    return termination_fn


def ant_termination_fn(healthy_z_range: tuple[float, float] = (0.2, 1.0),
                       exclude_current_positions_from_observation: bool = True) -> TerminationFn:
    """Ant-v5 ``is_healthy``: finite state and min_z <= z <= max_z (closed interval), z = obs[0]."""
    offset = 0 if exclude_current_positions_from_observation else 2

    def termination_fn(obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        z = next_obs[..., offset]
        healthy = torch.isfinite(next_obs).all(-1) & (z >= healthy_z_range[0]) & (z <= healthy_z_range[1])
        return ~healthy

    return termination_fn


# env family -> (factory, env kwargs the factory understands)
STATIC_TERMINATION: dict[str, tuple[Callable[..., TerminationFn], tuple[str, ...]]] = {
    "Hopper": (hopper_termination_fn, ("healthy_z_range", "healthy_angle_range", "healthy_state_range",
                                       "exclude_current_positions_from_observation")),
    "Walker2d": (walker2d_termination_fn, ("healthy_z_range", "healthy_angle_range",
                                           "exclude_current_positions_from_observation")),
    "Ant": (ant_termination_fn, ("healthy_z_range", "exclude_current_positions_from_observation")),
}
NEVER_TERMINATES = frozenset({"HalfCheetah", "Swimmer", "Reacher", "Pusher"})
"""Env families whose episodes only end by time limit: rollouts never terminate."""


def env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'Hopper'; 'gymnasium/Walker2d-v5' -> 'Walker2d'."""
    return env_id.split("/")[-1].split("-v")[0]


def has_static_termination(env_id: str) -> bool:
    """True when the env's termination rule is known (including 'never terminates')."""
    family = env_family(env_id)
    return family in STATIC_TERMINATION or family in NEVER_TERMINATES


def static_termination_fn(env_id: str, env_kwargs: dict | None = None) -> TerminationFn | None:
    """The static termination function of a known env (None = never terminates).

    ``env_kwargs`` (the dataset's ``env_spec.kwargs``) may override healthy ranges or
    ``exclude_current_positions_from_observation``; the returned function follows them.
    Raises KeyError for an env with no known rule; see :func:`resolve_termination_fn`.
    """
    family = env_family(env_id)
    if family in NEVER_TERMINATES:
        return None
    if family not in STATIC_TERMINATION:
        raise KeyError(f"no static termination function for {env_id!r}")
    factory, known_kwargs = STATIC_TERMINATION[family]
    env_kwargs = env_kwargs or {}
    if env_kwargs.get("terminate_when_unhealthy", True) is False:
        return None
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in env_kwargs.items() if k in known_kwargs}
    return factory(**kwargs)


class LearnedTermination(nn.Module):
    """Terminal classifier p(done | s, a, s') for envs without a static termination rule.

    A 2-layer MLP on normalized (s, a, s'), trained with class-balanced binary cross-entropy
    (terminals are ~1 per episode). Called like a static termination function: it returns
    ``p > threshold`` as a bool mask.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 64, threshold: float = 0.5):
        super().__init__()
        in_dim = 2 * obs_dim + action_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.threshold = threshold

    def logits(self, obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        x = torch.cat([obs, actions, next_obs], dim=-1)              # [..., 2S+A]
        x = (x - self.input_mean) / self.input_std
        return self.net(x).squeeze(-1)                               # [...]

    @torch.no_grad()
    def forward(self, obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        p = torch.sigmoid(self.logits(obs.float(), actions.float(), next_obs.float()))
        return p > self.threshold                                    # [...] bool

    @staticmethod
    def fit(dataset: TransitionDataset, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
            hidden_dim: int = 64, seed: int = 0) -> "LearnedTermination":
        """Train on ``dataset.terminals`` with balanced mini-batches (half terminal, half not).

        Raises ValueError if the dataset has no terminal (nothing to learn).
        """
        terminal_idx = torch.nonzero(dataset.terminals > 0.5).squeeze(-1)       # [P]
        other_idx = torch.nonzero(dataset.terminals <= 0.5).squeeze(-1)         # [N - P]
        if len(terminal_idx) == 0:
            raise ValueError("the dataset has no terminal transitions: nothing to learn")
        generator = torch.Generator().manual_seed(seed)
        model = LearnedTermination(dataset.obs_dim, dataset.action_dim, hidden_dim)
        normalizer = Normalizer.fit(torch.cat([dataset.obs, dataset.actions, dataset.next_obs], -1).cpu())
        model.input_mean.copy_(normalizer.mean)
        model.input_std.copy_(normalizer.std)
        optim = torch.optim.Adam(model.parameters(), lr=lr)
        half = batch_size // 2
        cpu = dataset.to("cpu")
        labels = torch.cat([torch.ones(half), torch.zeros(half)])              # [2*half]
        for _ in range(steps):
            pos = terminal_idx[torch.randint(len(terminal_idx), (half,), generator=generator)]
            if len(other_idx) > 0:
                neg = other_idx[torch.randint(len(other_idx), (half,), generator=generator)]
            else:
                neg = pos
            idx = torch.cat([pos, neg])                                          # [2*half]
            logits = model.logits(cpu.obs[idx], cpu.actions[idx], cpu.next_obs[idx])
            y = cpu.terminals[idx] if len(other_idx) == 0 else labels
            loss = F.binary_cross_entropy_with_logits(logits, y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        return model.eval().requires_grad_(False)


def dataset_has_terminals(dataset: TransitionDataset) -> bool:
    return bool((dataset.terminals > 0.5).any())


def resolve_termination_fn(env_id: str | None, dataset: TransitionDataset, env_kwargs: dict | None = None,
                           learned_steps: int = 2000) -> tuple[TerminationFn | None, str]:
    """Pick the termination function for model rollouts and say where it came from.

    1. a static function (or ``None`` = never terminates) when the env is known;
    2. otherwise, when the dataset has terminals, a :class:`LearnedTermination` head;
    3. otherwise ``None`` (no terminal was ever observed, rollouts never terminate).

    Returns ``(termination_fn, source)`` with source in {"static", "never", "learned", "none-in-data"}.
    """
    if env_id is not None and has_static_termination(env_id):
        fn = static_termination_fn(env_id, env_kwargs)
        return fn, "static" if fn is not None else "never"
    if dataset_has_terminals(dataset):
        return LearnedTermination.fit(dataset, steps=learned_steps), "learned"
    return None, "none-in-data"
