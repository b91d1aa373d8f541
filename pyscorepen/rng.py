"""Capture and restore every random-number state a training stage draws from, so that a
stage resumed from a checkpoint continues with exactly the numbers it would have drawn."""
from __future__ import annotations

import numpy as np
import torch


def stage_seed(seed: int, stage: str) -> int:
    """A seed of its own for each stage ('dynamics', 'score', 'policy') of run ``seed``: a stage
    then draws the same numbers whether the stages before it ran in this process, were loaded
    from the run folder, or were resumed from a checkpoint."""
    words = [seed & 0xFFFFFFFF, *stage.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state(generator: torch.Generator | None = None) -> dict:
    """Global torch (CPU and initialized CUDA) and numpy RNG states, plus ``generator``'s."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(),
            "generator": None if generator is None else generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        np.random.set_state(state["numpy"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
