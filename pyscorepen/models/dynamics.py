"""Probabilistic dynamics ensemble (MOPO §4.3 / ScorePen-MORL §4.3, after PETS/MBPO).

Each of N members is a Gaussian MLP p_i(delta_s, r | s, a) = N(mu_i, diag(sigma_i^2)) with
4x200 Swish hidden layers, learned soft bounds on the log-variance, inputs normalized with
training-split statistics. Members train together (weights ``[E, in, out]``), each on its own
bootstrap resample of the training split (MBPO/MOPO), so that their disagreement reflects
the data's coverage; a holdout of min(20%, 1000) transitions drives per-member early
stopping, and the ``num_elites`` best members are used for rollouts.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyscorepen.data import Normalizer, ReplayBuffer, TransitionDataset
from pyscorepen.models.nets import EnsembleMLP
from pyscorepen.ops import dynamics_fit_step as _fit_step
from pyscorepen.ops.backend import BackendUnavailableError
from pyscorepen.ops.rollout_step import RolloutStepOut, soft_bound_logvar
from pyscorepen.ops.score_penalty import score_penalty
from pyscorepen.optim import adam_states
from pyscorepen.rng import get_rng_state, set_rng_state

try:  # dispatching op (cpp / triton / ref); the reference is always there
    from pyscorepen.ops.rollout_step import rollout_step
except ImportError:  # pragma: no cover
    from pyscorepen.ops.rollout_step import rollout_step_ref as rollout_step

logger = logging.getLogger(__name__)

LOG_EVERY_EPOCHS = 5
"""Without progress bars, :meth:`EnsembleDynamics.fit` logs one line every this many epochs."""


@dataclass
class DynamicsConfig:
    ensemble_size: int = 7
    """Number of ensemble members N (MOPO: 7). Range: [1, inf)."""
    num_elites: int = 5
    """Members with the lowest holdout error used in rollouts (MOPO: 5). Range: [1, inf)."""
    hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden widths of every member (MOPO: 4x200, Swish). Range: [1, inf), each value."""
    lr: float = 1e-3
    """Adam learning rate. Range: (0, inf)."""
    batch_size: int = 256
    """Minibatch size per member. Range: [1, inf)."""
    weight_decay: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    """L2 coefficient per layer (MBPO/MOPO values; the last entry repeats for deeper nets).
    Range: [0, inf), each value."""
    logvar_bound_coef: float = 0.01
    """Coefficient of (sum max_logvar - sum min_logvar) in the loss (PETS). Range: [0, inf)."""
    holdout_ratio: float = 0.2
    """Fraction of data held out, capped by ``max_holdout``. Range: (0, 1)."""
    max_holdout: int = 1000
    """Largest holdout set. Range: [1, inf)."""
    max_epochs_since_update: int = 5
    """Stop when no member improved its holdout MSE by >1% for this many epochs. Range: [1, inf)."""
    max_epochs: int | None = None
    """Hard cap on training epochs (None: early stopping alone). Range: [1, inf)."""
    bootstrap: bool = True
    """Each member trains on its own bootstrap resample (with replacement, drawn once) of the
    training split, reshuffled every epoch: MBPO's BNN and OfflineRL-Kit's EnsembleDynamics.train
    (``randint(train_size, size=[num_ensemble, train_size])``), as MOPO uses. False: every member
    sees the whole training split, in its own order."""
    fused_step: bool = True
    """Run each minibatch step of the fit as the one ``dynamics_fit_step`` op (forward, loss
    gradient, backward and Adam in C++, no autograd graph) where
    :meth:`EnsembleDynamics.fused_step_backend` allows; False: always autograd and torch's fused
    Adam. Same step either way (tests/test_ops_dynamics_fit_step.py)."""

    NOT_IN_FINGERPRINT: ClassVar[tuple[str, ...]] = ("fused_step",)
    """Fields left out of a saved model's fingerprint (:func:`pyscorepen.runs.model_fingerprint`):
    they choose how the fit is computed, not the model, so a ``dynamics.pt`` saved before they
    existed (or with them set otherwise) still loads for this config."""


class EnsembleDynamics(nn.Module):
    FIT_STATE_KEYS = ("epoch", "epochs_since_update", "best", "best_state", "model", "optimizer", "fit_rng",
                      "samples", "seconds", "batches_done", "rng")
    """Keys of the resumable :meth:`fit` state (a saved one lacking any is not used)."""

    def __init__(self, obs_dim: int, action_dim: int, config: DynamicsConfig,
                 input_normalizer: Normalizer | None = None):
        super().__init__()
        self.config, self.obs_dim, self.action_dim = config, obs_dim, action_dim
        out_dim = obs_dim + 1                                           # (delta_s, r)
        self.net = EnsembleMLP(config.ensemble_size, obs_dim + action_dim, config.hidden_dims, 2 * out_dim)
        self.max_logvar = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), -10.0))
        norm = input_normalizer or Normalizer(torch.zeros(obs_dim + action_dim), torch.ones(obs_dim + action_dim))
        self.register_buffer("input_mean", norm.mean.clone())
        self.register_buffer("input_std", norm.std.clone())
        self.register_buffer("elites", torch.arange(config.num_elites))
        self.register_buffer("holdout_mse", torch.full((config.ensemble_size,), float("inf")))

    # ------------------------------------------------------------------------------ model
    def normalize(self, obs: Tensor, actions: Tensor) -> Tensor:
        return (torch.cat([obs, actions], -1) - self.input_mean) / self.input_std   # [.., S+A]

    def forward(self, x_norm: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_norm [B, S+A] or [E', B, S+A] -> mean, logvar [E', B, S+1]; ``members`` (int64 [E']):
        only those members are evaluated (None: all E)."""
        mean, logvar = self.net(x_norm, members).chunk(2, dim=-1)
        return mean, soft_bound_logvar(logvar, self.max_logvar, self.min_logvar)

    def predict(self, obs: Tensor, actions: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std of (delta_s, r) of every member, [E, B, S+1] each, or of ``members`` only
        ([E', B, S+1]; e.g. ``self.elites``: MOBILE needs no other member's prediction)."""
        mean, logvar = self(self.normalize(obs, actions), members)
        return mean, (0.5 * logvar).exp()

    @torch.no_grad()
    def step(self, obs: Tensor, actions: Tensor,
             score_params: tuple[list[Tensor], list[Tensor]] | None = None,
             generator: torch.Generator | None = None, deterministic: bool = False,
             all_members: bool = True) -> RolloutStepOut:
        """One model step from one random elite per sample, with both penalties (fused op).

        ``score_params``: (weights [in, out], biases [out]) of the frozen score MLP, see
        :func:`pyscorepen.models.nets.mlp_weights`; None computes no score penalty.
        ``all_members=False`` evaluates only the sampled elite of each row (:meth:`step_members`):
        the same (s', r) and score penalty, ~E times fewer ensemble FLOPs, but no MOPO penalty
        (``mopo_penalty`` is NaN).
        """
        B = obs.shape[0]
        member = self.elites[torch.randint(len(self.elites), (B,), generator=generator, device=obs.device)]
        noise = (torch.zeros(B, self.obs_dim + 1, device=obs.device) if deterministic else
                 torch.randn(B, self.obs_dim + 1, generator=generator, device=obs.device))
        if not all_members:
            return self.step_members(obs, actions, member, noise, score_params)
        score_w, score_b = score_params if score_params is not None else ([], [])
        return rollout_step(obs, actions, self.input_mean, self.input_std,
                            [w.detach() for w in self.net.weights()], [b.detach() for b in self.net.biases()],
                            self.max_logvar.detach(), self.min_logvar.detach(), member, noise, score_w, score_b)

    @torch.no_grad()
    def step_members(self, obs: Tensor, actions: Tensor, member: Tensor, noise: Tensor,
                     score_params: tuple[list[Tensor], list[Tensor]] | None = None) -> RolloutStepOut:
        """Model step that evaluates only member ``member[b]`` on row b (plus the score net).

        obs [B, S], actions [B, A], member [B] int64, noise [B, S+1]. Same (s', r) and score
        penalty as the all-member :func:`rollout_step` with this ``member`` and ``noise``, at
        1/E of the ensemble FLOPs; ``mopo_penalty`` (max over *all* members) is not computed
        and comes back as NaN, so a penalty that needs it cannot silently read a wrong value.

        Rows are grouped by member (one stable argsort); each member present runs the same fused
        ``rollout_step`` op on its contiguous rows with its own weights ``[1, in, out]`` (a view,
        no copy): a loop over the <= E members, none over rows. Results are scattered back to
        the original row order. The score penalty is one :func:`pyscorepen.ops.score_penalty` call
        on the whole batch (the same normalized x the fused op would use).
        """
        B, E = obs.shape[0], self.config.ensemble_size
        order = torch.argsort(member, stable=True)                                       # [B]
        counts = torch.bincount(member, minlength=E).tolist()                            # one host sync
        obs_sorted, actions_sorted, noise_sorted = obs[order], actions[order], noise[order]
        weights = [w.detach() for w in self.net.weights()]                               # [E, in, out]
        biases = [b.detach() for b in self.net.biases()]                                 # [E, out]
        parts, start = [], 0
        for m, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            parts.append(rollout_step(
                obs_sorted[rows], actions_sorted[rows], self.input_mean, self.input_std,
                [w[m:m + 1] for w in weights], [b[m:m + 1] for b in biases],             # [1, in, out], [1, out]
                self.max_logvar.detach(), self.min_logvar.detach(),
                member.new_zeros(count), noise_sorted[rows], [], []))
            start += count
        next_obs, rewards = torch.empty_like(obs), obs.new_empty(B)
        next_obs[order] = torch.cat([p.next_obs for p in parts])                         # [B, S]
        rewards[order] = torch.cat([p.rewards for p in parts])                           # [B]
        if score_params is not None:   # one call over the whole batch (faster than per member)
            score = score_penalty(self.normalize(obs, actions), *score_params)           # [B]
        else:
            score = torch.zeros_like(rewards)
        return RolloutStepOut(next_obs, rewards, torch.full_like(rewards, float("nan")), score)

    # ------------------------------------------------------------------------------ training
    def loss(self, x_norm: Tensor, target: Tensor, l2: bool = True) -> Tensor:
        """Gaussian NLL summed over members (MOPO Eq. in §4.3 / PETS) + log-var bound + L2.

        x_norm [E, B, S+A], target [E, B, S+1]. ``l2=False`` leaves the L2 term out: :meth:`fit`
        applies its gradient, decay_i * W_i, inside the fused optimizer step instead (the same
        gradient; one pass over the weights instead of square/sum/backward).
        """
        out = self.net(x_norm)                                                      # [E, B, 2(S+1)]
        loss = _fit_step.gaussian_nll_ref(out, target, self.max_logvar, self.min_logvar,
                                          self.config.logvar_bound_coef)
        return loss + self.l2_penalty() if l2 else loss

    def layer_decays(self) -> list[float]:
        """L2 coefficient of each layer's weight (the last configured entry repeats)."""
        decays = self.config.weight_decay
        return [decays[min(i, len(decays) - 1)] for i in range(len(self.net.layers))]

    def l2_penalty(self) -> Tensor:
        """sum_i decay_i / 2 * ||W_i||^2 over the layers' weights (not the biases)."""
        return sum(c * 0.5 * w.square().sum() for c, w in zip(self.layer_decays(), self.net.weights()))

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Fused Adam whose per-layer ``weight_decay`` adds decay_i * W_i to each weight's gradient:
        the gradient of :meth:`l2_penalty` (coupled L2, as in the loss; not AdamW)."""
        weights = self.net.weights()
        ids = {id(w) for w in weights}
        groups = [{"params": [w], "weight_decay": c} for c, w in zip(self.layer_decays(), weights)]
        groups.append({"params": [p for p in self.parameters() if id(p) not in ids], "weight_decay": 0.0})
        return torch.optim.Adam(groups, lr=lr, fused=True)

    def fit(self, dataset: TransitionDataset, generator: torch.Generator | None = None,
            progress: bool = True, log=None, resume: dict | None = None,
            on_epoch: Callable[[int, Callable[[], dict]], None] | None = None,
            stop: Callable[[], bool] | None = None) -> dict[str, float]:
        """Train on D with holdout early stopping; pick elites. Returns training statistics.

        Resumable: after every epoch that does not stop training, ``on_epoch(epoch, state_fn)``
        is called; ``state_fn()`` returns the whole fit state (weights, optimizer, early-stopping
        state, RNG states; the holdout split and bootstrap draws are redrawn from the RNG state
        at the start of the fit). Passing that dict back as ``resume`` continues exactly where it
        left off: the result is bit-identical to an uninterrupted fit. ``stop()`` is polled after
        every minibatch; when it is true, ``on_epoch`` is called at once with the state in the
        middle of the epoch (the caller saves it and raises; a resume finishes that epoch).
        Raises :class:`~pyscorepen.errors.DivergenceError` when the training loss is NaN/inf.
        """
        cfg, device = self.config, self.input_mean.device
        N, E = len(dataset), cfg.ensemble_size
        fit_rng = get_rng_state(generator) if resume is None else resume["fit_rng"]
        set_rng_state(fit_rng, generator)        # the split and bootstrap draws come from here
        train_idx, hold_idx = self.holdout_split(N, generator)
        train_idx, hold_idx = train_idx.to(dataset.obs.device), hold_idx.to(dataset.obs.device)
        # input statistics of the training split only (OfflineRL-Kit: scaler.fit(train_inputs)),
        # so the holdout that picks elites and stops training is unseen data in every respect
        norm = Normalizer.fit(dataset.obs_actions()[train_idx])
        self.input_mean.copy_(norm.mean)
        self.input_std.copy_(norm.std)
        x = self.normalize(dataset.obs, dataset.actions).to(device)                     # [N, S+A]
        y = torch.cat([dataset.next_obs - dataset.obs, dataset.rewards[:, None]], -1).to(device)  # [N, S+1]
        train_idx, hold_idx = train_idx.to(device), hold_idx.to(device)
        x_hold, y_hold = x[hold_idx], y[hold_idx]
        member_idx = self.member_indices(train_idx, generator)                          # [E, n_train]
        optim = self.make_optimizer(cfg.lr)
        if resume is None:
            best = torch.full((E,), float("inf"), device=device)
            best_state = copy.deepcopy(self.state_dict())
            epochs_since_update, epoch, samples, seconds, batches_done = 0, 0, 0, 0.0, 0
        else:
            self.load_state_dict(resume["model"])
            optim.load_state_dict(resume["optimizer"])
            best, best_state = resume["best"].to(device), resume["best_state"]
            epochs_since_update, epoch = resume["epochs_since_update"], resume["epoch"]
            samples, seconds = resume["samples"], resume["seconds"]
            batches_done = resume["batches_done"]                     # of the epoch in progress
            set_rng_state(resume["rng"], generator)

        def state_fn() -> dict:
            check_finite(loss)                      # never checkpoint a diverged model
            # mid-epoch, "rng" is the state before the epoch's shuffle (redrawn on resume)
            return {"epoch": epoch, "epochs_since_update": epochs_since_update, "best": best,
                    "best_state": best_state, "model": self.state_dict(), "optimizer": optim.state_dict(),
                    "fit_rng": fit_rng, "samples": samples, "seconds": seconds + time.perf_counter() - t0,
                    "batches_done": batches_done, "rng": epoch_rng if batches_done else get_rng_state(generator)}

        def check_finite(value: Tensor) -> None:
            if not torch.isfinite(value):
                from pyscorepen.errors import DivergenceError
                raise DivergenceError(f"the dynamics training loss is {value.item()} in epoch {epoch + 1}; "
                                      "lower --dynamics.lr")

        t0 = time.perf_counter()
        n_batches = -(-member_idx.shape[-1] // cfg.batch_size)
        bar = tqdm(desc="dynamics", unit="epoch", initial=epoch, disable=not progress, leave=False)
        while True:
            epoch_rng = get_rng_state(generator)
            idx = self.shuffle(member_idx, generator)                                   # [E, n_train]
            for loss, batch_samples in self.train_batches(x, y, idx, optim, first_batch=batches_done):
                samples += batch_samples
                batches_done += 1
                if stop is not None and on_epoch is not None and batches_done < n_batches and stop():
                    on_epoch(epoch, state_fn)          # mid-epoch state; the caller saves it and raises
            check_finite(loss)
            batches_done = 0
            epoch += 1
            mse = self.holdout_error(x_hold, y_hold)                                    # [E]
            improved = mse < 0.99 * best                      # >1% better (MBPO); inf-safe
            if improved.any():
                best = torch.where(improved, mse, best)
                state = self.state_dict()
                for k, v in best_state.items():   # copy improved members' slices (member dim first)
                    if k.startswith("net."):
                        v[improved] = state[k][improved]
                best_state["max_logvar"], best_state["min_logvar"] = state["max_logvar"].clone(), state["min_logvar"].clone()
                epochs_since_update = 0
            else:
                epochs_since_update += 1
            bar.update(1)
            if progress:
                with torch.no_grad():
                    shown = loss + self.l2_penalty()
                bar.set_postfix(loss=f"{shown.item():.3f}", holdout_mse=f"{mse.mean().item():.4g}")
            done = epochs_since_update >= cfg.max_epochs_since_update or bool(cfg.max_epochs and epoch >= cfg.max_epochs)
            if not progress and (epoch % LOG_EVERY_EPOCHS == 0 or done):
                elites = torch.argsort(best)[: cfg.num_elites]
                logger.info("dynamics epoch %d: holdout MSE mean %.4g, best of elites %s %.4g, %d epoch(s) since an "
                         "improvement, %.0f s", epoch, mse.mean().item(), elites.tolist(), best[elites].mean().item(),
                         epochs_since_update, seconds + time.perf_counter() - t0)
            if done:
                break
            if on_epoch is not None:
                on_epoch(epoch, state_fn)
        bar.close()
        self.__dict__.pop("_fused_step_cache", None)   # the op's view of this fit's optimizer
        self.load_state_dict(best_state)
        final = self.holdout_error(x_hold, y_hold)
        self.holdout_mse.copy_(final)
        self.elites.copy_(torch.argsort(final)[: cfg.num_elites])
        seconds += time.perf_counter() - t0
        return {"dynamics/epochs": epoch, "dynamics/holdout_mse_elites": final[self.elites].mean().item(),
                "dynamics/samples_per_s": samples / seconds, "dynamics/seconds": seconds}

    def holdout_split(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(train indices [n - H], holdout indices [H]) of a random split, H = min(ratio * n, max_holdout)."""
        perm = torch.randperm(n, generator=generator)
        n_hold = min(int(n * self.config.holdout_ratio), self.config.max_holdout)
        return perm[n_hold:], perm[:n_hold]

    def member_indices(self, train_idx: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training rows of each member [E, n_train]: a bootstrap resample of ``train_idx`` per
        member (``config.bootstrap``, drawn once per fit, as MBPO) or ``train_idx`` itself for all."""
        E, n_train = self.config.ensemble_size, train_idx.shape[0]
        if not self.config.bootstrap:
            return train_idx.expand(E, n_train)
        draw = torch.randint(n_train, (E, n_train), generator=generator).to(train_idx.device)
        return train_idx[draw]                                                          # [E, n_train]

    def train_epoch(self, x: Tensor, y: Tensor, train_idx: Tensor, optim: torch.optim.Optimizer,
                    generator: torch.Generator | None = None, l2_in_loss: bool = False) -> tuple[Tensor, int]:
        """One pass over the training rows in minibatches, each member on its own shuffle.

        x [N, S+A] normalized inputs, y [N, S+1] targets; ``train_idx`` [n_train] (the same rows
        for every member) or [E, n_train] (each member's rows, see :meth:`member_indices`). ``l2_in_loss=False`` expects the
        optimizer of :meth:`make_optimizer` (L2 as per-layer weight decay); True adds the L2 term
        to the loss (any optimizer; the benches' reference). Returns the last loss (without L2
        when ``l2_in_loss`` is False) and the number of member-samples seen.
        """
        samples = 0
        for loss, batch_samples in self.train_batches(x, y, self.shuffle(train_idx, generator), optim, l2_in_loss):
            samples += batch_samples
        return loss, samples

    def shuffle(self, train_idx: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Each member's own shuffle of its rows (``train_idx`` [n_train] or [E, n_train]):
        [E, n_train] (the epoch's only RNG draw)."""
        E, n_train = self.config.ensemble_size, train_idx.shape[-1]
        rows = train_idx.expand(E, n_train)                                              # [E, n_train]
        return rows.gather(1, torch.argsort(torch.rand(E, n_train, generator=generator), dim=1).to(rows.device))

    def train_batches(self, x: Tensor, y: Tensor, idx: Tensor, optim: torch.optim.Optimizer,
                      l2_in_loss: bool = False, first_batch: int = 0):
        """Minibatch updates over the shuffle ``idx`` [E, n_train] from batch ``first_batch`` on;
        yields (loss, member-samples) after each update. Each update is one ``dynamics_fit_step``
        op where :meth:`fused_step_backend` allows, else the loss, ``backward`` and ``optim.step()``."""
        batch_size = self.config.batch_size
        backend = None if l2_in_loss else self.fused_step_backend(optim, x)
        for start in range(first_batch * batch_size, idx.shape[1], batch_size):
            b = idx[:, start:start + batch_size]                                         # [E, b]
            rows = b.reshape(-1)                  # index_select: ~4x faster than x[b]'s advanced indexing
            x_b = x.index_select(0, rows).view(*b.shape, x.shape[-1])                    # [E, b, S+A]
            y_b = y.index_select(0, rows).view(*b.shape, y.shape[-1])                    # [E, b, S+1]
            if backend is not None:
                loss = self._fused_step(backend, optim, x_b, y_b)
            else:
                loss = self.loss(x_b, y_b, l2=l2_in_loss)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
            yield loss.detach(), b.numel()

    def fused_step_backend(self, optim: torch.optim.Optimizer, x: Tensor) -> str | None:
        """The one place that decides whether :meth:`train_batches` runs the ``dynamics_fit_step`` op:
        its backend ("cpp"; "triton" only when requested by name, see
        :func:`pyscorepen.ops.dynamics_fit_step.resolve`, for ``config.batch_size`` rows per member
        like ``x``), or None for the module path: when
        ``config.fused_step`` is off, or ``optim`` is not :meth:`make_optimizer`'s grouping (one
        group per weight with its ``layer_decays`` entry, then every other parameter without decay;
        one lr, betas and eps; no amsgrad / maximize / decoupled decay)."""
        if not self.config.fused_step or type(optim) is not torch.optim.Adam:
            return None
        weights, groups = self.net.weights(), optim.param_groups
        if len(groups) != len(weights) + 1:
            return None
        for group, weight, decay in zip(groups, weights, self.layer_decays()):
            if len(group["params"]) != 1 or group["params"][0] is not weight or group["weight_decay"] != decay:
                return None
        ids = {id(w) for w in weights}
        if {id(p) for p in groups[-1]["params"]} != {id(p) for p in self.parameters() if id(p) not in ids} \
                or groups[-1]["weight_decay"] != 0.0:
            return None
        shared = ("lr", "betas", "eps")
        if any(g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or g.get("capturable")
               or g.get("decoupled_weight_decay") or any(g[k] != groups[0][k] for k in shared) for g in groups):
            return None
        try:
            backend = _fit_step.resolve(x, rows=self.config.batch_size)
        except BackendUnavailableError:   # an explicit request this op cannot serve: the modules' ops honour it
            return None
        return backend if backend in ("cpp", "triton") else None

    def _fused_step(self, backend: str, optim: torch.optim.Optimizer, x_b: Tensor, y_b: Tensor) -> Tensor:
        """One minibatch step as the ``dynamics_fit_step`` op on the optimizer's own state tensors."""
        key = (optim, optim.state)   # load_state_dict replaces the state dict: rebuild the lists then
        cached = getattr(self, "_fused_step_cache", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
            weights, biases = self.net.weights(), self.net.biases()
            states = adam_states(optim, [*weights, *biases, self.max_logvar, self.min_logvar])
            exp_avgs, exp_avg_sqs, steps = (list(t) for t in zip(*states))
            cached = (key, dict(weights=weights, biases=biases, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                                steps=steps, decays=self.layer_decays()))
            self._fused_step_cache = cached
        t, group = cached[1], optim.param_groups[0]
        return _fit_step.run(backend, x_b, y_b, t["weights"], t["biases"], self.max_logvar, self.min_logvar,
                             t["exp_avgs"], t["exp_avg_sqs"], t["steps"], t["decays"], group["lr"],
                             *group["betas"], group["eps"], self.config.logvar_bound_coef)

    @torch.no_grad()
    def holdout_error(self, x_hold: Tensor, y_hold: Tensor) -> Tensor:
        mean, _ = self(x_hold)                                                          # [E, H, S+1]
        return (mean - y_hold).square().mean(dim=(1, 2))                                # [E]


def requires_all_members(penalties) -> bool:
    """Whether any generation-time penalty needs every ensemble member evaluated on each row
    (plug-ins without a ``requires_all_members`` attribute are assumed to, the safe side)."""
    return any(getattr(p, "requires_all_members", True) for p in penalties)


@torch.no_grad()
def rollout(dynamics: EnsembleDynamics, policy, start_obs: Tensor, rollout_length: int, buffer: ReplayBuffer,
            penalties=(), termination_fn=None, score_params: tuple[list[Tensor], list[Tensor]] | None = None,
            chunk_size: int = 4096, generator: torch.Generator | None = None,
            all_members: bool | None = None) -> dict[str, float]:
    """h-step branched rollouts from dataset states (MOPO Alg. 2 / ScorePen Alg. 1, line 4).

    For each chunk of start states and each step: a ~ pi(s); one fused ``rollout_step`` gives
    (s', r) from a random elite together with the raw penalties; generation-time penalty
    plug-ins turn them into a stored per-transition penalty sum_k c_k p_k(s, a); transitions
    go straight into ``buffer``; terminated rollouts stop.
    ``policy``: obs [B, S] -> actions [B, A].

    Penalty-aware: unless a penalty plug-in says ``requires_all_members`` (MOPO's max-std
    uncertainty; a plug-in without the attribute counts as needing them), each row evaluates
    only its sampled elite (:meth:`EnsembleDynamics.step_members`): the same distribution of
    (s', r), about E times fewer ensemble FLOPs. ``all_members`` forces one path (None: decide
    from ``penalties``).
    """
    if all_members is None:
        all_members = requires_all_members(penalties)
    zero = start_obs.new_zeros(())
    sums = {"reward": zero.clone(), "penalty": zero.clone(), **{f"raw_{p.name}": zero.clone() for p in penalties}}
    transitions = 0
    for chunk in start_obs.split(chunk_size):
        obs = chunk                                                                     # [B, S]
        for _ in range(rollout_length):
            actions = policy(obs)                                                       # [B, A]
            out = dynamics.step(obs, actions, score_params=score_params, generator=generator,
                                all_members=all_members)
            penalty = torch.zeros_like(out.rewards)                                     # [B]
            for p in penalties:
                raw = p(obs, actions, out)
                sums[f"raw_{p.name}"] += raw.sum()
                penalty += p.coef * raw
            done = (termination_fn(obs, actions, out.next_obs) if termination_fn is not None
                    else torch.zeros_like(out.rewards, dtype=torch.bool))               # [B]
            buffer.add(obs, actions, out.rewards, out.next_obs, done, penalty)
            transitions += obs.shape[0]
            sums["reward"] += out.rewards.sum()
            sums["penalty"] += penalty.sum()
            if termination_fn is None:
                obs = out.next_obs
            else:   # terminated rollouts stop (one host sync per step, only with a termination fn)
                obs = out.next_obs[~done]
                if obs.shape[0] == 0:
                    break
    n = max(transitions, 1)
    return {"rollout/transitions": float(transitions),
            **{f"rollout/{k}_mean": v.item() / n for k, v in sums.items()}}
