"""Offline tasks from Minari datasets (``--task mujoco/hopper/medium-v0`` or a local path).

:func:`load_minari_task` finds the dataset, checks every episode, flattens the episodes into
a :class:`~pyscorepen.data.TransitionDataset` of float32 tensors and rebuilds the evaluation
env from the dataset metadata (``eval_env_spec``, else ``env_spec``).

Where a dataset is looked up, for an id:  ``$MINARI_DATASETS_PATH/<id>/data`` if the variable
is set, else Minari's default ``~/.minari/datasets/<id>/data``. A path may point at the
dataset folder (holding ``data/``) or at the ``data/`` folder itself.

Errors are :class:`MinariTaskError` subclasses whose message is meant to be printed as is
(the CLIs show it without a stack trace):

* :class:`DatasetNotFoundError` names the ``minari download`` command and the
  ``python -m pyscorepen.collect`` alternative;
* :class:`DatasetIntegrityError` names the episode and the field (NaN/inf, mismatched
  lengths, observation/action sizes that do not match the env). Nothing is dropped unless
  ``drop_invalid_episodes=True``, and then every dropped episode is reported.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from pyscorepen.data import TransitionDataset
from pyscorepen.errors import PyScorePenError
from pyscorepen.evaluation_metrics import resolve_reference_scores
from pyscorepen.tasks import Task
from pyscorepen.tasks.termination import resolve_termination_fn

COLLECT_NAMESPACE = "pyscorepen"
"""Namespace of the datasets written by ``python -m pyscorepen.collect``."""

CHECKSUMS_FILE = "pyscorepen_checksums.json"
"""Next to a dataset's ``data/`` folder: sha256 of each file in it, written by ``pyscorepen.collect``."""


class MinariTaskError(PyScorePenError):
    """A dataset problem with a user-facing, one-paragraph message (no stack trace needed)."""


class DatasetNotFoundError(MinariTaskError, FileNotFoundError):
    pass


class DatasetIntegrityError(MinariTaskError, ValueError):
    pass


def minari_datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH`` or Minari's default ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def env_id_for_dataset_name(dataset_id: str) -> str | None:
    """Guess the Gymnasium env of a Minari id: 'mujoco/hopper/medium-v0' -> 'Hopper-v5'.

    Picks the newest registered version of the env family whose lowercase name matches the
    id's env component. Only used to phrase error messages; loading uses the metadata.
    """
    parts = dataset_id.strip("/").split("/")
    if len(parts) < 2:
        return None
    name = parts[-2].lower()
    best: tuple[int, str] | None = None
    for env_id in gym.registry:
        family, _, version = env_id.rpartition("-v")
        if "/" in family or family.lower() != name or not version.isdigit():
            continue
        if best is None or int(version) > best[0]:
            best = (int(version), env_id)
    return best[1] if best else None


def collect_command(dataset_id: str) -> str:
    """The ``pyscorepen.collect`` command producing a local stand-in for ``dataset_id``."""
    env_id = env_id_for_dataset_name(dataset_id) or "<EnvId>-v5"
    level = dataset_id.strip("/").split("/")[-1].rsplit("-v", 1)[0] or "medium"
    return f"python -m pyscorepen.collect --env-id {env_id} --levels {level}"


def collected_dataset_id(env_id: str, level: str, namespace: str = COLLECT_NAMESPACE, version: int = 0) -> str:
    """Id of a dataset written by collect: ('Hopper-v5', 'medium') -> 'pyscorepen/hopper/medium-v0'."""
    family = env_id.split("/")[-1].split("-v")[0].lower()
    return f"{namespace}/{family}/{level}-v{version}"


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~"))


def resolve_dataset_location(spec: str) -> tuple[Path, Path]:
    """``(dataset_root, data_path)`` of a Minari dataset id or path; raises DatasetNotFoundError."""
    candidate = Path(spec).expanduser()
    if candidate.exists():
        if (candidate / "data" / "metadata.json").is_file():
            return candidate, candidate / "data"
        if (candidate / "metadata.json").is_file():
            return candidate.parent, candidate
        raise DatasetNotFoundError(
            f"'{spec}' exists but is not a Minari dataset: expected '{candidate}/data/metadata.json' "
            f"(a dataset folder) or '{candidate}/metadata.json' (its data/ folder).")
    if _looks_like_path(spec):
        raise DatasetNotFoundError(
            f"No Minari dataset at path '{spec}' (it does not exist). Pass an existing dataset folder, or a "
            f"dataset id looked up under {minari_datasets_root()}.")
    root = minari_datasets_root() / spec
    if (root / "data" / "metadata.json").is_file():
        return root, root / "data"
    where = ("MINARI_DATASETS_PATH" if os.environ.get("MINARI_DATASETS_PATH")
             else "Minari's default location; set MINARI_DATASETS_PATH to look elsewhere")
    collect = collect_command(spec)
    family_id = collected_dataset_id(env_id_for_dataset_name(spec) or "env-v5",
                                     spec.strip("/").split("/")[-1].rsplit("-v", 1)[0])
    hint = (f"then train on it with `--task {family_id}`" if not spec.startswith(COLLECT_NAMESPACE + "/")
            else "which writes exactly this id")
    raise DatasetNotFoundError(
        f"Minari dataset '{spec}' was not found: there is no '{root / 'data'}' ({minari_datasets_root()} is "
        f"{where}). Download it with `minari download {spec}` (needs internet access; it is stored under "
        f"that same folder), or generate a comparable dataset on this machine with the library's own SAC "
        f"with `{collect}` ({hint}; see docs/mujoco.md for how long each level takes).")


def data_checksums(data_path: Path) -> dict[str, str]:
    """{file name: sha256} of the files in a dataset's ``data/`` folder."""
    import hashlib
    sums = {}
    for path in sorted(Path(data_path).iterdir()):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            sums[path.name] = digest.hexdigest()
    return sums


def write_checksums(root: Path, data_path: Path) -> None:
    import json
    (Path(root) / CHECKSUMS_FILE).write_text(json.dumps(data_checksums(data_path), indent=2) + "\n")


def verify_checksums(spec: str, root: Path, data_path: Path) -> None:
    """Datasets written by ``pyscorepen.collect`` carry checksums: any changed byte is an error (other
    datasets cannot be checked this way; their fields are still checked episode by episode)."""
    import json
    path = Path(root) / CHECKSUMS_FILE
    if not path.is_file():
        return
    try:
        expected = json.loads(path.read_text())
        assert isinstance(expected, dict)
    except (ValueError, AssertionError, UnicodeDecodeError) as err:
        raise DatasetIntegrityError(f"Minari dataset '{spec}': {path} is corrupt ({err}).") from err
    actual = data_checksums(data_path)
    bad = sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
    if bad:
        raise DatasetIntegrityError(
            f"Minari dataset '{spec}': {', '.join(str(Path(data_path) / n) for n in bad)} changed since "
            f"pyscorepen.collect wrote it (sha256 differs from {path}): the file is truncated or corrupt. "
            f"Regenerate the dataset, or delete {path} if the change was intended.")


def _env_spec_from_metadata(metadata: dict) -> gym.envs.registration.EnvSpec | None:
    for key in ("eval_env_spec", "env_spec"):
        text = metadata.get(key)
        if text:
            text = (text.replace('"order_enforce": true,', "")            # gymnasium 1.0 compat,
                    .replace('"apply_api_compatibility": false,', "")     # as in minari
                    .replace('"autoreset": false, ', ""))
            return gym.envs.registration.EnvSpec.from_json(text)
    return None


def _episode_problems(ep, obs_dim: int | None, action_dim: int | None) -> list[str]:
    """Human-readable problems of one episode (empty list = valid)."""
    problems: list[str] = []
    fields = {"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
              "terminations": ep.terminations, "truncations": ep.truncations}
    for name, value in fields.items():
        if not isinstance(value, np.ndarray):
            problems.append(f"field '{name}' is a {type(value).__name__}, only flat Box spaces are supported")
    if problems:
        return problems
    num_steps = len(ep.rewards)
    if num_steps == 0:
        return ["the episode has no steps"]
    expected = {"observations": num_steps + 1, "actions": num_steps, "terminations": num_steps,
                "truncations": num_steps}
    for name, n in expected.items():
        if fields[name].shape[0] != n:
            problems.append(f"field '{name}' has {fields[name].shape[0]} rows, expected {n} "
                            f"(rewards has {num_steps} steps)")
    obs, actions = ep.observations, ep.actions
    if obs.ndim != 2 or (obs_dim is not None and obs.shape[1] != obs_dim):
        problems.append(f"field 'observations' has shape {tuple(obs.shape)}, the env's observations have "
                        f"{obs_dim} dims")
    if actions.ndim != 2 or (action_dim is not None and actions.shape[1] != action_dim):
        problems.append(f"field 'actions' has shape {tuple(actions.shape)}, the env's actions have "
                        f"{action_dim} dims")
    for name in ("observations", "actions", "rewards"):
        value = fields[name]
        if np.issubdtype(value.dtype, np.number):
            bad = ~np.isfinite(value)
            if bad.any():
                rows = np.nonzero(bad.reshape(bad.shape[0], -1).any(-1))[0]
                problems.append(f"field '{name}' has {int(bad.sum())} NaN/inf value(s), first at step {int(rows[0])}")
    term = np.asarray(ep.terminations, dtype=bool)
    if term.shape[0] == num_steps and term[:-1].any():
        problems.append(f"field 'terminations' is true at step {int(np.nonzero(term[:-1])[0][0])}, "
                        f"before the episode's last step {num_steps - 1}")
    return problems


_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError, AssertionError,
                EOFError, UnicodeDecodeError)
"""What h5py / minari raise on a truncated or corrupted file (OSError: bad HDF5 structure; KeyError:
a missing group or field; ValueError/TypeError: a field of the wrong shape or kind; ...)."""


def _episodes(mdataset, dataset_id: str, data_path: Path):
    """The dataset's episodes; a read failure of the HDF5 file becomes a :class:`DatasetIntegrityError`."""
    index = 0
    try:
        episodes = mdataset.iterate_episodes()
        while True:
            try:
                ep = next(episodes)
            except StopIteration:
                return
            yield ep
            index += 1
    except _READ_ERRORS as err:
        raise DatasetIntegrityError(
            f"Dataset '{dataset_id}' ({data_path}): episode {index} cannot be read, the file is truncated or "
            f"corrupt ({type(err).__name__}: {str(err)[:200]}). Regenerate or re-download the dataset.") from err


def load_minari_task(spec: str, ref_min: float | None = None, ref_max: float | None = None,
                     drop_invalid_episodes: bool = False, learned_termination_steps: int = 2000) -> Task:
    """Load a Minari dataset (id or path) as a :class:`Task`.

    Transitions are (obs_t, action_t, reward_t, obs_{t+1}, terminal_t) with terminal = the env's
    ``terminated`` (a time-out is stored separately in ``timeouts``). Reference scores follow
    :func:`pyscorepen.evaluation_metrics.resolve_reference_scores`; the termination function
    follows :func:`pyscorepen.tasks.termination.resolve_termination_fn`.
    """
    import minari  # local import: minari is only needed for Minari tasks

    root, data_path = resolve_dataset_location(spec)
    verify_checksums(spec, root, data_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mdataset = minari.MinariDataset(data_path)
    except _READ_ERRORS as err:
        raise DatasetIntegrityError(f"Minari dataset '{spec}' at {data_path} cannot be opened: {err}") from err
    try:
        metadata = mdataset.storage.metadata
    except _READ_ERRORS as err:
        raise DatasetIntegrityError(f"Minari dataset '{spec}' at {data_path}: its metadata cannot be read "
                                    f"({type(err).__name__}: {err})") from err
    dataset_id = metadata.get("dataset_id", spec)

    env_spec = _env_spec_from_metadata(metadata)
    if env_spec is None:
        raise DatasetIntegrityError(
            f"Minari dataset '{dataset_id}' has neither 'eval_env_spec' nor 'env_spec' in its metadata "
            f"({data_path / 'metadata.json'}), so the evaluation env cannot be recovered.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe_env = gym.make(env_spec)
    except Exception as err:  # noqa: BLE001 - any failure to build the env is reported the same way
        raise DatasetIntegrityError(
            f"The evaluation env '{env_spec.id}' of dataset '{dataset_id}' cannot be created: {err}") from err
    obs_space, action_space = probe_env.observation_space, probe_env.action_space
    probe_env.close()
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
        raise DatasetIntegrityError(f"Dataset '{dataset_id}': env '{env_spec.id}' must have Box observation and "
                                    f"action spaces, got {obs_space} and {action_space}.")
    obs_dim, action_dim = int(np.prod(obs_space.shape)), int(np.prod(action_space.shape))

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminals", "timeouts")}
    dropped: list[dict] = []
    episode_returns: list[float] = []
    for ep in _episodes(mdataset, dataset_id, data_path):
        problems = _episode_problems(ep, obs_dim, action_dim)
        if problems:
            if not drop_invalid_episodes:
                raise DatasetIntegrityError(
                    f"Dataset '{dataset_id}' ({data_path}), episode {ep.id}: " + "; ".join(problems)
                    + ". Fix or regenerate the dataset, or pass --drop-invalid-episodes (Python: "
                      "drop_invalid_episodes=True) to skip such episodes; each dropped one is reported.")
            dropped.append({"episode": int(ep.id), "problems": problems})
            continue
        obs = ep.observations.reshape(len(ep.observations), -1)
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["actions"].append(ep.actions.reshape(len(ep.actions), -1))
        parts["rewards"].append(ep.rewards)
        parts["terminals"].append(ep.terminations)
        parts["timeouts"].append(ep.truncations)
        episode_returns.append(float(np.sum(ep.rewards)))
    if dropped:
        lines = "; ".join(f"episode {d['episode']}: {', '.join(d['problems'])}" for d in dropped[:10])
        more = f" (and {len(dropped) - 10} more)" if len(dropped) > 10 else ""
        print(f"[pyscorepen] dropped {len(dropped)} invalid episode(s) of '{dataset_id}' "
              f"(drop_invalid_episodes=True): {lines}{more}", file=sys.stderr)
    if not parts["obs"]:
        raise DatasetIntegrityError(f"Dataset '{dataset_id}' ({data_path}) has no valid episode"
                                    + (f" ({len(dropped)} dropped as invalid)." if dropped else "."))

    def cat(key: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts[key]).astype(np.float32))

    dataset = TransitionDataset(cat("obs"), cat("actions"), cat("rewards"), cat("next_obs"),
                                cat("terminals"), cat("timeouts"))

    ref_min_score, ref_max_score, ref_source = resolve_reference_scores(
        metadata, ref_min, ref_max, dataset_root=root, dataset_name=dataset_id,
        ref_scores_command=f"python -m pyscorepen.collect --ref-scores-only --task {spec} --expert-return "
                           f"<expert return> (or --expert-run-dir <a finished collect run of {env_spec.id}>)")
    termination_fn, termination_source = resolve_termination_fn(
        env_spec.id, dataset, env_spec.kwargs, learned_steps=learned_termination_steps)

    info = {
        "dataset_id": dataset_id,
        "dataset_path": str(data_path),
        "env_id": env_spec.id,
        "num_episodes": len(episode_returns),
        "num_transitions": len(dataset),
        "dataset_return_mean": float(np.mean(episode_returns)),
        "dropped_episodes": dropped,
        "termination_source": termination_source,
        "ref_scores_source": ref_source,
        "algorithm_name": metadata.get("algorithm_name"),
    }
    return Task(name=dataset_id, dataset=dataset, make_env=functools.partial(gym.make, env_spec),
                termination_fn=termination_fn, ref_min_score=ref_min_score, ref_max_score=ref_max_score,
                info=info)
