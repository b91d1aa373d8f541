"""Score penalty ||h_xi(x)||^2 of a frozen denoising score MLP (ScorePen-MORL Eq. 20).

``score_penalty_ref`` is the pure-PyTorch specification; ``score_penalty`` dispatches
to the fastest available backend. x is the *normalized* (s, a) the score model was
trained on, so the penalty is in normalized units.
"""
from __future__ import annotations

from torch import Tensor

from pyscorepen.ops import backend as _backend
from pyscorepen.ops.rollout_step import mlp_ref


def score_penalty_ref(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """x: [B, D]; weights[l]: [in_l, out_l]; biases[l]: [out_l]. Returns [B]."""
    return mlp_ref(x, weights, biases).square().sum(-1)


_backend.register_reference("score_penalty", score_penalty_ref)


def score_penalty(x: Tensor, weights: list[Tensor], biases: list[Tensor], *, backend: str | None = None) -> Tensor:
    """Score penalty ||h_xi(x)||_2^2 of the frozen score MLP (ScorePen-MORL Eq. 20), one value per row.

    x: [B, D] normalized (s, a); weights[l]: [in_l, out_l]; biases[l]: [out_l]. Returns [B].
    ``backend`` picks the kernel (``ref``/``cpp``/``triton``/``cuda``, default:
    ``$PYSCOREPEN_BACKEND`` or automatic, see :mod:`pyscorepen.ops.backend`). Inference only.
    """
    name = _backend.resolve_backend("score_penalty", x, backend, rows=x.shape[0])
    return _backend.get_kernel("score_penalty", name)(x, list(weights), list(biases))
