"""Server-side checkpoints: what a restarted coordinator needs to continue a run (``--resume``).

Written after every aggregated round (atomically: temporary file, then rename) under the run's output
folder. Holds the phase, the last completed round, the global weights, the model-selection state,
the per-round history, the optimiser state of adaptive strategies (FedAdam's moments), and the
Tier 1 weights once Tier 1 is done. Nothing in it comes from a patient row: it is what the server
already holds. It is written as plain containers and tensors (numpy arrays become tensors) and read
with ``torch.load(weights_only=True)``, so opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import renamed_keys
from ..core.errors import RmmError



def _to_plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _from_plain(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if isinstance(x, dict):
        return {k: _from_plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_plain(v) for v in x]
    return x


class CheckpointMismatch(RmmError):
    """The checkpoint belongs to another run configuration."""


class Checkpoint:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def load(self, config_flat: dict[str, Any]) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        state = _from_plain(torch.load(self.path, weights_only=True))
        if state.get("config") is not None:  # a checkpoint written under older key names resumes as well
            state["config"] = renamed_keys(state["config"], warn=False)
        if state.get("config") != config_flat:
            raise CheckpointMismatch(
                f"{self.path} was written by a run with another configuration. Fix: resume with the same "
                "consortium config, or start a new run without --resume (or in another output folder).")
        return state

    def saved_config(self) -> dict[str, Any] | None:
        """The flat run config the checkpoint was written with (None without one)."""
        if self.path is None or not self.path.is_file():
            return None
        saved = _from_plain(torch.load(self.path, weights_only=True)).get("config")
        return None if saved is None else renamed_keys(saved, warn=False)

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(_to_plain(state), tmp)
        os.replace(tmp, self.path)
