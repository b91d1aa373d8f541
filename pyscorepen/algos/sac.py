"""Soft Actor-Critic core shared by every algorithm in the library.

Haarnoja et al. 2018 with twin critics (one vectorized :class:`QEnsemble`), Polyak-averaged
target critics and automatic entropy tuning. The model-based algorithms are small
deltas on this class:

* the Bellman target subtracts the per-transition ``batch.penalty`` (MOPO Alg. 2 reward
  penalty lambda*u(s,a); ScorePen-MORL Eq. 20 beta*||h(s,a)||^2), see :meth:`compute_target`;
* COMBO overrides :meth:`critic_regularizer` (COMBO Eq. 2);
* :class:`TargetPenalty` plug-ins (MOBILE) add to the target at update time.

:meth:`SAC.update` runs the whole step as one fused op (:func:`pyscorepen.ops.sac_update`: forward,
backward, Adam and Polyak in C++, no autograd graph) when :meth:`SAC.fused_update_backend` allows:
the cpp backend, the stored penalty (fused), target-time plug-ins (precomputed, passed in) and a
critic regulariser with a fused form (:meth:`SAC.fused_regularizer_args`: COMBO's CQL term).
:meth:`SAC.update_ref` specifies both paths.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyscorepen.data import Batch
from pyscorepen.models.nets import QEnsemble, TanhGaussianActor, mlp_weights
from pyscorepen.ops import sac_update as _sac_update
from pyscorepen.ops.backend import BackendUnavailableError
from pyscorepen.ops.soft_value import soft_value
from pyscorepen.optim import adam_states


@dataclass
class SACConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of each critic. Range: [1, inf), each value."""
    num_critics: int = 2
    """Number of critics in the Q ensemble (2 = clipped double Q). Range: [1, inf)."""
    actor_lr: float = 1e-4
    """Actor learning rate (MOPO/OfflineRL-Kit use 1e-4 offline). Range: (0, inf)."""
    critic_lr: float = 3e-4
    """Critic learning rate. Range: (0, inf)."""
    alpha_lr: float = 1e-4
    """Learning rate of the entropy temperature log(alpha). Range: (0, inf)."""
    gamma: float = 0.99
    """Discount factor. Range: [0, 1)."""
    tau: float = 0.005
    """Polyak coefficient of the target critics. Range: (0, 1]."""
    init_alpha: float = 0.2
    """Initial entropy temperature. Range: (0, inf)."""
    auto_alpha: bool = True
    """Tune alpha towards ``target_entropy`` (Haarnoja et al. 2018b, Eq. 18)."""
    target_entropy: float | None = None
    """Target policy entropy; None means -action_dim. Range: (-inf, inf)."""
    fused_optim: bool = True
    """Fused Adam (one kernel over all parameters, CPU and CUDA); False: PyTorch's per-parameter loop."""
    deterministic_backup: bool = False
    """Entropy-free Bellman target r + gamma min_k Q'(s', a') (no -alpha log pi term). COMBO's default
    (OfflineRL-Kit run_combo.py ``--deterministic-backup True``, after CQL); SAC's soft target otherwise."""
    actor_lr_cosine: bool = False
    """Cosine-anneal the actor learning rate from ``actor_lr`` to 0 over the run's gradient steps (the
    reference MOPO/COMBO/MOBILE scripts' ``CosineAnnealingLR(actor_optim, epochs)``). Off by default:
    no gain measured on the cliff task (docs/mujoco.md, "Defaults and their sources"); not yet measured on MuJoCo."""
    fused_update: bool = True
    """Run :meth:`SAC.update` as the one fused ``sac_update`` op where :meth:`SAC.fused_update_backend`
    allows it (C++ backend, a critic regulariser only with a fused form); False: always the module path."""


class SAC:
    """SAC agent. ``update(batch) -> dict[str, float]``; ``state_dict``/``load_state_dict``."""

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig,
                 action_low: Tensor, action_high: Tensor, device: torch.device | str = "cpu",
                 target_penalties: list | None = None, total_steps: int | None = None):
        self.config = config
        self.total_steps = total_steps
        """Gradient steps of the run: the horizon of ``actor_lr_cosine`` (required with it)."""
        if config.actor_lr_cosine and not total_steps:
            raise ValueError("SACConfig.actor_lr_cosine needs the run's total_steps")
        self.device = torch.device(device)
        self.actor = TanhGaussianActor(obs_dim, action_dim, config.hidden_dims,
                                       torch.as_tensor(action_low), torch.as_tensor(action_high)).to(self.device)
        self.critic = QEnsemble(config.num_critics, obs_dim, action_dim, config.hidden_dims).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(torch.tensor(config.init_alpha).log()), device=self.device,
                                      requires_grad=True)
        self.target_entropy = -float(action_dim) if config.target_entropy is None else config.target_entropy
        # fused Adam: 3.3x faster optimizer steps than the per-parameter loop on CPU (benches/README.md)
        fused = True if config.fused_optim else None
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=fused)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=fused)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr, fused=fused)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self.target_penalties = list(target_penalties or [])
        self.num_updates = 0

    # ----------------------------------------------------------------------------- acting
    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [B, S] -> actions [B, A] in env units."""
        return self.actor(obs.to(self.device), deterministic=deterministic, with_log_prob=False)[0]

    @torch.no_grad()
    def soft_value(self, obs: Tensor, alpha: Tensor | float = 0.0, *, target: bool = True,
                   backend: str | None = None) -> Tensor:
        """min_k Q_k(s, a) - alpha log pi(a|s), a ~ pi(.|s), for every row of obs [R, S] -> [R].

        One fused op over the actor, the tanh-Gaussian sample and every critic
        (:func:`pyscorepen.ops.soft_value`, SAC Eq. 3), so R can be large (MOBILE evaluates
        K x M x B next states). ``target``: the Polyak target critics (Bellman targets) or the
        online ones. Same distribution as ``critic(obs, actor(obs))`` and, for the same global
        RNG state, the same draws (the noise [R, A] is drawn here, where the actor draws it).
        """
        critic = self.critic_target if target else self.critic
        actor_weights, actor_biases = mlp_weights(self.actor.net)            # [in, out], [out]
        noise = torch.randn(obs.shape[0], self.actor.action_scale.shape[0], device=obs.device)  # [R, A]
        alpha = torch.as_tensor(alpha, dtype=obs.dtype, device=obs.device)
        return soft_value(obs, noise, actor_weights, actor_biases,
                          [layer.weight for layer in critic.layers], [layer.bias for layer in critic.layers],
                          self.actor.action_scale, self.actor.action_offset, alpha,
                          self.actor.LOG_STD_MIN, self.actor.LOG_STD_MAX, backend=backend)

    # ----------------------------------------------------------------------------- hooks
    @torch.no_grad()
    def compute_target(self, batch: Batch, fused: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """y = r - penalty + gamma (1 - d) [min_k Q'_k(s', a') - alpha log pi(a'|s')]  (ScorePen Eq. 20).

        ``batch.penalty`` holds the stored generation-time penalties (0 for real data);
        target-time plug-ins (e.g. MOBILE) add theirs here. Info values are 0-dim tensors
        (converted to floats once, at the end of :meth:`update`). ``fused``: the soft value of
        s' through :meth:`soft_value` (one op); False: through the actor and critic modules
        (:meth:`update_ref`). ``config.deterministic_backup`` drops the entropy term (alpha = 0
        in V(s')). A plug-in with a ``target_min`` (MOBILE's references: 0) clamps y from below.
        """
        alpha = torch.zeros_like(self.alpha) if self.config.deterministic_backup else self.alpha
        if fused:
            next_v = self.soft_value(batch.next_obs, alpha)                      # [B]
        else:
            next_actions, next_log_prob = self.actor(batch.next_obs)            # [B, A], [B]
            next_q = self.critic_target(batch.next_obs, next_actions).min(0).values  # [B]
            next_v = next_q - alpha * next_log_prob                              # [B]
        reward = batch.rewards - batch.penalty                               # [B]
        info: dict[str, Tensor] = {}
        for plugin in self.target_penalties:
            extra = plugin(self, batch)                                      # [B]
            reward = reward - extra
            info[f"penalty/{plugin.name}"] = extra.mean()
        # reward + gamma * (1 - d) * next_v, as one fused multiply-add
        target = torch.addcmul(reward, (1.0 - batch.terminals), next_v, value=self.config.gamma)  # [B]
        target_min = self.target_min()
        if target_min is not None:
            target = target.clamp_min(target_min)
        return target, info

    def target_min(self) -> float | None:
        """Lower bound of the Bellman target: the largest ``target_min`` of the target-time plug-ins
        (MOBILE's references clamp at 0), None when none sets one."""
        bounds = [p.target_min for p in self.target_penalties if getattr(p, "target_min", None) is not None]
        return max(bounds) if bounds else None

    def anneal_actor_lr(self) -> None:
        """Cosine schedule of the actor learning rate (``actor_lr_cosine``), a closed form of the
        update count, so a resumed run continues the same schedule:
        lr_t = actor_lr * (1 + cos(pi * t / T)) / 2, t = updates done, T = ``total_steps``."""
        if not self.config.actor_lr_cosine:
            return
        progress = min(self.num_updates / self.total_steps, 1.0)
        lr = 0.5 * self.config.actor_lr * (1.0 + math.cos(math.pi * progress))
        for group in self.actor_optim.param_groups:
            group["lr"] = lr

    @staticmethod
    def stats_to_floats(stats: dict) -> dict[str, float]:
        """The statistics of :meth:`update` as floats: one conversion (one device sync) for all tensor
        values instead of one ``.item()`` each. The only host sync of the module path: a CUDA-graph
        capture (:mod:`pyscorepen.algos.cuda_graph`) swaps it for the identity and keeps tensors."""
        keys = [k for k, v in stats.items() if isinstance(v, Tensor)]
        with torch.no_grad():
            values = torch.stack([stats[k].float().reshape(()) for k in keys]).tolist() if keys else []
        converted = dict(zip(keys, values))
        return {k: converted[k] if k in converted else float(v) for k, v in stats.items()}

    def alpha_step(self, log_prob: Tensor) -> None:
        """Temperature step (SAC, Haarnoja et al. 2018b Eq. 18) when ``auto_alpha``: log_prob [B]."""
        if self.config.auto_alpha:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()

    def critic_regularizer(self, batch: Batch, q_pred: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Extra critic loss term; zero for SAC. COMBO overrides this (COMBO Eq. 2).

        Info values may be floats or 0-dim tensors."""
        return q_pred.new_zeros(()), {}

    def fused_regularizer_args(self, batch: Batch) -> tuple[dict, str | None]:
        """:meth:`critic_regularizer` as arguments of the fused ``sac_update`` op: (its ``cql_*``
        keyword arguments, the statistic name of the op's 4th output, ``combo/q_gap``), or ({}, None)
        when the term is zero. Draws the same random numbers, in the same order, as
        :meth:`critic_regularizer`. SAC has no regulariser; a subclass that overrides
        :meth:`critic_regularizer` without this method has no fused form (the module path runs)."""
        return {}, None

    def regularizer_rows(self, batch: Batch) -> int:
        """Extra critic rows the fused regulariser adds to the batch's B (the op's batch-size policy
        counts them); 0 for SAC."""
        return 0

    # ----------------------------------------------------------------------------- update
    def update(self, batch: Batch) -> dict[str, float]:
        """One critic, actor and alpha step and the Polyak update; returns float statistics.

        One fused op when :meth:`fused_update_backend` allows (:meth:`_update_fused`), else the modules."""
        fused_backend = self.fused_update_backend(batch)
        if fused_backend is not None:
            return self._update_fused(batch, fused_backend)
        target, info = self.compute_target(batch)                           # [B]
        q_pred = self.critic(batch.obs, batch.actions)                       # [N, B]
        critic_loss = (q_pred - target).square().mean(1).sum()
        reg, reg_info = self.critic_regularizer(batch, q_pred)
        self.critic_optim.zero_grad(set_to_none=True)
        (critic_loss + reg).backward()
        self.critic_optim.step()

        actions, log_prob = self.actor(batch.obs)                            # [B, A], [B]
        # the actor loss needs gradients w.r.t. the actions only: with the critic's parameters
        # frozen, autograd skips their weight gradients (a third of the critic backward)
        self.critic.requires_grad_(False)
        try:
            q_new = self.critic(batch.obs, actions).min(0).values            # [B]
        finally:
            self.critic.requires_grad_(True)
        alpha = self.alpha
        actor_loss = (alpha * log_prob - q_new).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.anneal_actor_lr()
        self.actor_optim.step()

        self.alpha_step(log_prob)

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
            self.num_updates += 1
            stats = {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(), "alpha": self.alpha,
                     "q_mean": q_pred.detach().mean(), "penalty/stored_mean": batch.penalty.mean(),
                     **info, **reg_info}
        return self.stats_to_floats(stats)

    def update_ref(self, batch: Batch) -> dict[str, float]:
        """Readable reference of :meth:`update` (the benches' ``ref`` provider): the critic gets
        weight gradients in the actor loss too, one ``.item()`` per statistic, a Python Polyak loop."""
        target, info = self.compute_target(batch, fused=False)              # [B]
        q_pred = self.critic(batch.obs, batch.actions)                       # [N, B]
        critic_loss = (q_pred - target).square().mean(1).sum()
        reg, reg_info = self.critic_regularizer(batch, q_pred)
        self.critic_optim.zero_grad(set_to_none=True)
        (critic_loss + reg).backward()
        self.critic_optim.step()

        actions, log_prob = self.actor(batch.obs)                            # [B, A], [B]
        q_new = self.critic(batch.obs, actions).min(0).values                # [B]
        actor_loss = (self.alpha * log_prob - q_new).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.anneal_actor_lr()
        self.actor_optim.step()

        self.alpha_step(log_prob)

        with torch.no_grad():
            for p, p_target in zip(self.critic.parameters(), self.critic_target.parameters()):
                p_target.lerp_(p, self.config.tau)
        self.num_updates += 1
        return {"loss/critic": critic_loss.item(), "loss/actor": actor_loss.item(),
                "alpha": self.alpha.item(), "q_mean": q_pred.detach().mean().item(),
                "penalty/stored_mean": batch.penalty.mean().item(),
                **{k: float(v) for k, v in {**info, **reg_info}.items()}}

    # ----------------------------------------------------------------------------- fused step
    def fused_update_backend(self, batch: Batch) -> str | None:
        """The one place that decides whether :meth:`update` runs the fused ``sac_update`` op.

        Returns "cpp" when the op's backend resolves to cpp for this batch (extension built, float32
        CPU tensors, no ``PYSCOREPEN_BACKEND`` other than cpp, the batch within the op's measured
        per-ISA and per-vendor limit or this machine's calibration of it,
        :func:`pyscorepen.ops.backend.cpp_max_rows`; "triton" only when requested by name) and the algorithm's hooks have a fused form: the stored penalty (fused) and
        :attr:`target_penalties` (computed before the step and passed in, MOBILE). None (the module
        path) when ``config.fused_update`` is off, when a subclass overrides :meth:`critic_regularizer`
        without :meth:`fused_regularizer_args` or overrides :meth:`compute_target`, the networks are not
        the standard actor / Q ensemble, or an optimizer uses an Adam option the op does not have
        (amsgrad, maximize, per-optimizer betas). The batch-size policy counts the regulariser's rows
        (:meth:`regularizer_rows`: COMBO's 3R sampled actions per state).
        """
        cls = type(self)
        if not self.config.fused_update:
            return None
        if cls.compute_target is not SAC.compute_target or (
                cls.critic_regularizer is not SAC.critic_regularizer
                and cls.fused_regularizer_args is SAC.fused_regularizer_args):
            return None
        if type(self.actor) is not TanhGaussianActor or type(self.critic) is not QEnsemble:
            return None
        groups = [optim.param_groups for optim in (self.actor_optim, self.critic_optim, self.alpha_optim)]
        if any(len(g) != 1 for g in groups):
            return None
        groups = [g[0] for g in groups]
        shared = ("betas", "eps", "weight_decay")
        if any(g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or g.get("capturable")
               or g.get("decoupled_weight_decay") or any(g[k] != groups[0][k] for k in shared) for g in groups):
            return None
        try:   # auto: cpp up to the op's measured per-ISA, per-vendor batch limit (backend.cpp_max_rows)
            backend = _sac_update.resolve(batch.obs, rows=batch.obs.shape[0] + self.regularizer_rows(batch))
        except BackendUnavailableError:   # an explicit request this op cannot serve: the modules' ops honour it
            return None
        return backend if backend in ("cpp", "triton") else None

    def _fused_tensors(self) -> dict[str, list[Tensor]]:
        """The parameter and Adam-state lists of the ``sac_update`` op, built once and reused while the
        optimizers keep their state dicts (``load_state_dict`` replaces them: then they are rebuilt),
        so an update runs no per-parameter Python."""
        optims = (self.actor_optim, self.critic_optim, self.alpha_optim)
        key = (*(o.state for o in optims), self.config.auto_alpha)
        cached = getattr(self, "_fused_cache", None)
        if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key)):
            return cached[1]
        actor_layers = [m for m in self.actor.net if isinstance(m, torch.nn.Linear)]
        actor_params = [p for m in actor_layers for p in (m.weight, m.bias)]
        critic_params = [p for m in self.critic.layers for p in (m.weight, m.bias)]
        states = adam_states(self.actor_optim, actor_params) + adam_states(self.critic_optim, critic_params)
        if self.config.auto_alpha:
            states += adam_states(self.alpha_optim, [self.log_alpha])
        exp_avgs, exp_avg_sqs, steps = (list(t) for t in zip(*states))
        tensors = dict(actor_weights=actor_params[0::2], actor_biases=actor_params[1::2],
                       critic_weights=critic_params[0::2], critic_biases=critic_params[1::2],
                       target_weights=[m.weight for m in self.critic_target.layers],
                       target_biases=[m.bias for m in self.critic_target.layers],
                       exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, steps=steps)
        self._fused_cache = (key, tensors)
        return tensors

    def _update_fused(self, batch: Batch, backend: str) -> dict[str, float]:
        """:meth:`update` as one ``sac_update`` op; same random draws, in the same order, as :meth:`update_ref`."""
        config, (B, A) = self.config, batch.actions.shape
        with torch.no_grad():
            target_noise = torch.randn(B, A, device=batch.obs.device)          # [B, A] the draw of compute_target
            target_penalty, info = None, {}
            for plugin in self.target_penalties:                               # MOBILE: before the step
                extra = plugin(self, batch)                                    # [B]
                target_penalty = extra if target_penalty is None else target_penalty + extra
                info[f"penalty/{plugin.name}"] = extra.mean()
            regularizer, regularizer_stat = self.fused_regularizer_args(batch)  # COMBO: its sampled actions
            actor_noise = torch.randn(B, A, device=batch.obs.device)           # [B, A] the draw of actor(obs)
            t = self._fused_tensors()
            self.anneal_actor_lr()                                             # as the module path does
            lr = [float(o.param_groups[0]["lr"]) for o in (self.actor_optim, self.critic_optim, self.alpha_optim)]
            group = self.critic_optim.param_groups[0]
            stats = _sac_update.run(
                backend, batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminals, batch.penalty,
                target_penalty, target_noise, actor_noise, t["actor_weights"], t["actor_biases"],
                t["critic_weights"], t["critic_biases"], t["target_weights"], t["target_biases"], self.log_alpha,
                t["exp_avgs"], t["exp_avg_sqs"], t["steps"],
                self.actor.action_scale, self.actor.action_offset, config.gamma, config.tau, self.target_entropy,
                config.auto_alpha, *lr, *group["betas"], group["eps"], group["weight_decay"],
                self.actor.LOG_STD_MIN, self.actor.LOG_STD_MAX, config.deterministic_backup,
                self.target_min(), **regularizer)                              # [4] losses, mean Q, CQL gap
            self.num_updates += 1
            extra_values = [v.reshape(1) for v in info.values()]
            values = torch.cat([stats, self.alpha.reshape(1), batch.penalty.mean().reshape(1), *extra_values]).tolist()
        critic_loss, actor_loss, q_mean, gap, alpha, stored = values[:6]
        stats = {"loss/critic": critic_loss, "loss/actor": actor_loss, "alpha": alpha, "q_mean": q_mean,
                 "penalty/stored_mean": stored, **dict(zip(info, values[6:]))}
        if regularizer_stat is not None:
            stats[regularizer_stat] = gap
        return stats

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
                "alpha_optim": self.alpha_optim.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.alpha_optim.load_state_dict(state["alpha_optim"])
        self.num_updates = state["num_updates"]
