"""The one random generator behind ``axon.randn``, dropout and parameter initialisation."""

from __future__ import annotations

import numpy as np

__all__ = ["manual_seed", "get_rng", "seed"]

_state = {"rng": np.random.default_rng(0)}


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed axon's generator (``axon.manual_seed(0)`` makes runs reproducible)."""
    _state["rng"] = np.random.default_rng(int(seed))
    return _state["rng"]


seed = manual_seed


def get_rng() -> np.random.Generator:
    """The current ``np.random.Generator``."""
    return _state["rng"]
