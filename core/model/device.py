"""Pick the torch device: ``auto`` uses CUDA when present."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is visible. Fix: use --device auto or cpu.")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{name}'. Fix: use auto, cpu or cuda.")
    return torch.device(name)
