"""Server-side checkpoints: what a restarted coordinator needs to continue a run (``--resume``).

Written after every aggregated round (atomically: temporary file, then rename) under the run's output
folder. Holds the phase, the last completed round, the global weights, the model-selection state,
the per-round history, the optimiser state of adaptive strategies (FedAdam's moments), and the
Tier 1 weights once Tier 1 is done. Nothing in it comes from a patient row: it is what the server
already holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import RmmError

STRATEGY_STATE = ("current_arrays", "m_t", "v_t")  # FedOpt family (FedAdam, FedYogi, FedAdagrad)


class CheckpointMismatch(RmmError):
    """The checkpoint belongs to another run configuration."""


class Checkpoint:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def load(self, config_flat: dict[str, Any]) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=False)
        if state.get("config") != config_flat:
            raise CheckpointMismatch(
                f"{self.path} was written by a run with another configuration. Fix: resume with the same "
                "consortium config, or start a new run without --resume (or in another output folder).")
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def strategy_state(strategy: Any) -> dict[str, Any]:
    return {k: getattr(strategy, k) for k in STRATEGY_STATE if getattr(strategy, k, None) is not None}


def restore_strategy_state(strategy: Any, state: dict[str, Any]) -> None:
    for k, v in state.items():
        setattr(strategy, k, v)
