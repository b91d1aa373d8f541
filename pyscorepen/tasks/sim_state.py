"""Put a task's true simulator into the state an observation describes (for model-error checks).

* MuJoCo (Gymnasium v5 Hopper, HalfCheetah, Walker2d): the observation is ``qpos[1:]`` then
  ``qvel`` (``exclude_current_positions_from_observation=True`` drops the x position; Hopper and
  Walker2d clip the velocities to ±10 in the observation). So ``qpos = [0, obs[:nq-1]]`` and
  ``qvel = obs[nq-1:]``, set with ``env.unwrapped.set_state(qpos, qvel)``. The x position does not
  enter the dynamics or the reward (the forward reward uses its change), so x = 0 loses nothing.
  A velocity at the ±10 clip of Hopper / Walker2d is only a lower bound of the true one: from such
  an observation the simulator continues from a different state.
  With ``exclude_current_positions_from_observation=False`` the observation is ``[qpos, qvel]``.
* The 2-D cliff and risky tasks (:class:`pyscorepen.tasks.cliff.CliffEnv`): the state *is* the
  observation (``env.unwrapped.state``).

Any other env is refused with a :class:`~pyscorepen.errors.PyScorePenError`.
"""
from __future__ import annotations

import numpy as np

from pyscorepen.errors import PyScorePenError


def _mujoco_layout(unwrapped, obs_dim: int) -> int | None:
    """Positions dropped from the observation (1 or 0) if ``obs = [qpos[k:], qvel]``, else None."""
    model = getattr(unwrapped, "model", None)
    if model is None or not hasattr(unwrapped, "set_state"):
        return None
    nq, nv = int(model.nq), int(model.nv)
    excluded = 1 if getattr(unwrapped, "_exclude_current_positions_from_observation", False) else 0
    return excluded if obs_dim == nq - excluded + nv else None


def set_state_from_obs(env, obs: np.ndarray) -> np.ndarray:
    """Set ``env``'s simulator to the state of ``obs`` [S] (call after ``env.reset()``); returns the
    observation the env now reports (equal to ``obs`` up to float32 rounding: the round trip)."""
    obs = np.asarray(obs, dtype=np.float64).reshape(-1)
    unwrapped = env.unwrapped
    excluded = _mujoco_layout(unwrapped, obs.shape[0])
    if excluded is not None:
        nq = int(unwrapped.model.nq)
        qpos = np.concatenate([np.zeros(excluded), obs[: nq - excluded]])
        qvel = obs[nq - excluded:]
        unwrapped.set_state(qpos, qvel)
        return np.asarray(unwrapped._get_obs(), dtype=np.float64)
    from pyscorepen.tasks.cliff import CliffEnv
    if isinstance(unwrapped, CliffEnv):   # cliff / risky (a CliffEnv): the state is the observation
        unwrapped.state = obs.astype(np.asarray(unwrapped.state).dtype).copy()
        return np.asarray(unwrapped.state, dtype=np.float64).copy()
    spec = getattr(env, "spec", None)
    raise PyScorePenError(
        f"Cannot put the simulator of '{spec.id if spec else type(unwrapped).__name__}' into the state of an "
        f"observation of size {obs.shape[0]}: supported are Gymnasium v5 MuJoCo envs whose observation is "
        "[qpos (x excluded), qvel] (Hopper, HalfCheetah, Walker2d) and the cliff / risky tasks.")
