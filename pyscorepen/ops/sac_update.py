"""One whole SAC step in one op: critic, actor and temperature losses, their gradients, Adam and
the Polyak average, applied in place to the caller's parameters and optimizer states.

Public API: :func:`sac_update` (dispatching) and :func:`sac_update_ref` (the readable pure-PyTorch
specification, autograd on the same tensors). The user is
:meth:`pyscorepen.algos.sac.SAC.update`, which calls it when :meth:`~pyscorepen.algos.sac.SAC.
fused_update_backend` allows (cpp backend; a critic regulariser only with a fused form, COMBO's
CQL term); :meth:`~pyscorepen.algos.sac.SAC.
update_ref` stays the specification of both.

The math (Haarnoja et al. 2018, SAC Eq. 3, 5, 7 with clipped double Q; Haarnoja et al. 2018b,
Eq. 18 for the temperature), B rows, N critics, alpha = exp(log_alpha) before the step::

    y      = r - penalty [- target_penalty] + gamma (1 - d) [min_k Q'_k(s', a') - alpha log pi(a'|s')],
             a' ~ pi(.|s') drawn with ``target_noise``             (ScorePen-MORL Eq. 20, MOPO Alg. 2)
             [alpha = 0 in this term if ``deterministic_backup`` (COMBO's entropy-free backup);
              y <- max(y, ``target_min``) if given (MOBILE's references clamp at 0)]
    L_Q    = sum_k mean_b (Q_k(s, a) - y)^2                        -> Adam(critic_lr) on the critics
             [+ cql_weight sum_k ( mean_c T logsumexp_j ((Q_k(s_c, a_jc) - log rho_jc) / T)
                                   - sum_b m_b Q_k(s_b, a_b) / sum_b m_b )
              if ``cql_actions`` is given: COMBO Eq. 2's CQL(H) regulariser (Kumar et al. 2020,
              App. F importance sampling), states s_c = ``cql_obs``, K sampled actions a_jc per state
              with log densities log rho_jc, T = ``cql_temperature``, m = ``cql_push_up``]
    L_pi   = mean_b [alpha log pi(a~|s) - min_k Q_k(s, a~)],       a~ ~ pi(.|s) drawn with ``actor_noise``,
             through the critics *after* their step               -> Adam(actor_lr) on the actor
    L_alpha = -mean_b log_alpha (log pi(a~|s) + target_entropy)     -> Adam(alpha_lr) (if ``auto_alpha``)
    theta' <- theta' + tau (theta - theta')                         (Polyak, target critics)

with the tanh-Gaussian actor of :class:`pyscorepen.models.nets.TanhGaussianActor` (log_std clamped,
density on [-1, 1]^A) and ReLU critics on cat(s, a). Adam is torch.optim.Adam's (no amsgrad, not
maximizing; its steps are incremented here). Returns [4]: (the TD part of L_Q, L_pi, mean Q(s, a),
the CQL gap mean_k (push-down - push-up), 0 without ``cql_actions``).

Arguments and layout (every tensor float32, parameters and Adam states contiguous):

* ``actor_weights[l]`` [out_l, in_l], ``actor_biases[l]`` [out_l]: the actor's ``nn.Linear`` layers,
  the last with out = 2A (mu | log_std);
* ``critic_weights[l]`` [N, in_l, out_l], ``critic_biases[l]`` [N, out_l] (and the same for
  ``target_*``): :class:`~pyscorepen.models.nets.QEnsemble`, first in = S + A, last out = 1;
* ``exp_avgs`` / ``exp_avg_sqs`` / ``steps``: the Adam states in the order actor w0, b0, w1, ..., critic
  w0, b0, w1, ..., log_alpha (the last only when ``auto_alpha``): the optimizers' own state tensors;
* ``target_noise``, ``actor_noise`` [B, A]: standard normal draws, made by the caller in the order
  :meth:`~pyscorepen.algos.sac.SAC.update_ref` draws them (so both consume the same random numbers);
* ``target_penalty`` [B] or None: target-time penalties (MOBILE) computed by the caller before the
  step, on the same networks the target uses;
* ``cql_obs`` [C, S], ``cql_actions`` [K, C, A], ``cql_log_density`` [K, C], ``cql_push_up`` [B] (or all
  None): the critic regulariser's push-down states, the K actions sampled per state by the caller
  before the step (COMBO: uniform, pi(.|s), pi(.|s')), their log densities, and the 0/1 mask of the
  batch rows pushed up (the dataset rows); ``cql_weight`` and ``cql_temperature`` scale it.

Hooks: the stored per-transition penalty (MOPO, ScorePen-MORL) is fused; target-time penalties
(MOBILE) enter precomputed as ``target_penalty``, and MOBILE's target clamp as ``target_min``; the
entropy-free backup is ``deterministic_backup``; COMBO's CQL regulariser is fused as the ``cql_*``
arguments (the critics run once on the B batch rows and the K*C sampled rows together); another
critic regulariser has no fused form and its agent takes the module path.

Population (several seeds in one process, not implemented yet): the layouts generalise with a
leading dimension P and no new kernel. The critics are already an ensemble; P agents' N critics
are P*N members of the same ``ensemble_mlp`` kernels ([P*N, in, out]), each reading its agent's
batch (x [P*N, B, in], the kernels' non-shared input). The actor, run here as a 1-member ensemble,
becomes P members ([P, in, out], x [P, B, S]). The loss gradients, the head and min_k are
elementwise or per row ([P, N, B] views), Adam and the Polyak average are foreach kernels over
the same tensors with a leading P, and log_alpha becomes [P].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyscorepen.ops import backend as _backend
from pyscorepen.ops.rollout_step import ensemble_mlp_ref
from pyscorepen.ops.soft_value import relu_mlp_ref, soft_value_ref


def adam_ref_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              steps: list[Tensor], lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Adam (Kingma & Ba 2015, Alg. 1) in torch.optim.Adam's form, in place, one tensor at a time."""
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step += 1
        if weight_decay != 0.0:
            grad = grad + weight_decay * param
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** float(step)
        bias_correction2 = 1 - beta2 ** float(step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def _tanh_gaussian(head: Tensor, noise: Tensor, action_scale: Tensor, action_offset: Tensor,
                   log_std_min: float, log_std_max: float) -> tuple[Tensor, Tensor]:
    """Action [B, A] and log pi [B] from the actor output [B, 2A], as TanhGaussianActor.forward."""
    mu, log_std = head.chunk(2, dim=-1)                                       # [B, A] each
    log_std = log_std.clamp(log_std_min, log_std_max)
    std = log_std.exp()
    u = mu + std * noise                                                      # [B, A]
    action = torch.tanh(u) * action_scale + action_offset
    log_prob = (-0.5 * ((u - mu) / std).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
    return action, log_prob


def sac_update_ref(
    obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,    # [B, S], [B, A], [B], [B, S]
    terminals: Tensor, penalty: Tensor, target_penalty: Tensor | None,  # [B], [B], [B] or None
    target_noise: Tensor, actor_noise: Tensor,                          # [B, A] each
    actor_weights: list[Tensor], actor_biases: list[Tensor],            # [out, in], [out]
    critic_weights: list[Tensor], critic_biases: list[Tensor],          # [N, in, out], [N, out]
    target_weights: list[Tensor], target_biases: list[Tensor],          # like the critics
    log_alpha: Tensor,                                                  # []
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor],
    action_scale: Tensor, action_offset: Tensor,                        # [A]
    gamma: float, tau: float, target_entropy: float, auto_alpha: bool,
    actor_lr: float, critic_lr: float, alpha_lr: float,
    beta1: float, beta2: float, adam_eps: float, weight_decay: float,
    log_std_min: float, log_std_max: float,
    deterministic_backup: bool = False, target_min: float | None = None,
    cql_obs: Tensor | None = None, cql_actions: Tensor | None = None,   # [C, S], [K, C, A]
    cql_log_density: Tensor | None = None, cql_push_up: Tensor | None = None,   # [K, C], [B]
    cql_weight: float = 0.0, cql_temperature: float = 1.0,
) -> Tensor:
    """The step of the module docstring with autograd and :func:`adam_ref_`; updates the
    parameters and states in place and returns [4] (TD critic loss, actor loss, mean Q, CQL gap)."""
    adam = dict(beta1=beta1, beta2=beta2, eps=adam_eps, weight_decay=weight_decay)
    n_actor, n_critic = 2 * len(actor_weights), 2 * len(critic_weights)
    with torch.no_grad():
        alpha = log_alpha.exp()
        actor_w_io = [w.t() for w in actor_weights]                           # [in, out]
        target_alpha = torch.zeros_like(alpha) if deterministic_backup else alpha   # entropy-free backup: alpha = 0
        next_v = soft_value_ref(next_obs, target_noise, actor_w_io, actor_biases, target_weights, target_biases,
                                action_scale, action_offset, target_alpha, log_std_min, log_std_max)   # [B]
        reward = rewards - penalty
        if target_penalty is not None:
            reward = reward - target_penalty
        target = torch.addcmul(reward, 1.0 - terminals, next_v, value=gamma)  # [B]
        if target_min is not None:                                            # MOBILE's clamp (references: 0)
            target = target.clamp_min(target_min)

    critic_params = [p for pair in zip(critic_weights, critic_biases) for p in pair]
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in critic_params]
        q = ensemble_mlp_ref(torch.cat([obs, actions], -1), leaves[0::2], leaves[1::2], F.relu).squeeze(-1)  # [N, B]
        critic_loss = (q - target).square().mean(1).sum()
        gap = torch.zeros(q.shape[0])                                         # [N]
        if cql_actions is not None:                                           # COMBO Eq. 2
            K, C, A = cql_actions.shape
            x_cql = torch.cat([cql_obs.repeat(K, 1), cql_actions.reshape(K * C, A)], -1)   # [K*C, S+A]
            q_cql = ensemble_mlp_ref(x_cql, leaves[0::2], leaves[1::2], F.relu).view(-1, K, C)  # [N, K, C]
            t = cql_temperature
            push_down = (t * torch.logsumexp((q_cql - cql_log_density) / t, dim=1)).mean(1)   # [N]
            push_up = (q * cql_push_up).sum(1) / cql_push_up.sum()            # [N]
            gap = push_down - push_up
        critic_grads = torch.autograd.grad(critic_loss + cql_weight * gap.sum(), leaves)
    with torch.no_grad():
        adam_ref_(critic_params, list(critic_grads), exp_avgs[n_actor:n_actor + n_critic],
                  exp_avg_sqs[n_actor:n_actor + n_critic], steps[n_actor:n_actor + n_critic], critic_lr, **adam)

    actor_params = [p for pair in zip(actor_weights, actor_biases) for p in pair]
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in actor_params]
        head = relu_mlp_ref(obs, [w.t() for w in leaves[0::2]], leaves[1::2])          # [B, 2A]
        action, log_prob = _tanh_gaussian(head, actor_noise, action_scale, action_offset, log_std_min, log_std_max)
        q_new = ensemble_mlp_ref(torch.cat([obs, action], -1), [w.detach() for w in critic_weights],
                                 [b.detach() for b in critic_biases], F.relu).squeeze(-1).min(0).values  # [B]
        actor_loss = (alpha * log_prob - q_new).mean()
        actor_grads = torch.autograd.grad(actor_loss, leaves)
    with torch.no_grad():
        adam_ref_(actor_params, list(actor_grads), exp_avgs[:n_actor], exp_avg_sqs[:n_actor], steps[:n_actor],
                  actor_lr, **adam)
        if auto_alpha:
            grad_log_alpha = -(log_prob.detach() + target_entropy).mean()
            adam_ref_([log_alpha], [grad_log_alpha], exp_avgs[-1:], exp_avg_sqs[-1:], steps[-1:], alpha_lr, **adam)
        for p_target, p in zip([p for pair in zip(target_weights, target_biases) for p in pair], critic_params):
            p_target.lerp_(p, tau)
        return torch.stack([critic_loss.detach(), actor_loss.detach(), q.detach().mean(), gap.detach().mean()])


_backend.register_reference("sac_update", sac_update_ref)


def resolve(obs: Tensor, backend: str | None = None, rows: int | None = None) -> str:
    """Backend of :func:`sac_update` for a batch like ``obs`` [B, S] (``rows``: the critic rows of the
    step when a regulariser adds sampled ones, COMBO's B + K*C; default B): :func:`pyscorepen.ops.backend.
    resolve_backend`, where auto skips cpp above the automatic policy's limit for this op
    (:func:`pyscorepen.ops.backend.cpp_max_rows`: the measured break-even against the module path, per
    ISA and vendor, or this machine's calibration), and without ``triton`` in the automatic order (the Triton step has run under the
    interpreter only, not yet on a GPU; ``backend="triton"`` / ``PYSCOREPEN_BACKEND=triton`` still select it)."""
    skip: tuple[str, ...] = ("triton",)
    if not obs.is_cuda and (obs.shape[0] if rows is None else rows) > _backend.cpp_max_rows("sac_update"):
        skip = (*skip, "cpp")
    return _backend.resolve_backend("sac_update", obs, backend, auto_skip=skip)


def sac_update(*args, backend: str | None = None, **kwargs) -> Tensor:
    """:func:`sac_update_ref`'s step on the chosen backend (``ref`` or ``cpp``; default:
    ``$PYSCOREPEN_BACKEND`` or automatic, see :mod:`pyscorepen.ops.backend`). Same arguments.

    The cpp kernel (csrc/sac_update.cpp) runs every MLP pass through the ISA-dispatching
    ``soft_value`` / ``ensemble_mlp_forward`` / ``ensemble_mlp_backward`` kernels, with no autograd
    graph, and ATen's fused Adam; it is deterministic and independent of the thread count.
    """
    obs = args[0] if args else kwargs["obs"]
    return run(resolve(obs, backend), *args, **kwargs)


def run(name: str, *args, **kwargs) -> Tensor:
    """:func:`sac_update` on the backend ``name`` (callers that resolved it themselves)."""
    return _backend.run_in_place_op("sac_update", name, *args, **kwargs)
