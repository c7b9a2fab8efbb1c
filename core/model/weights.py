"""Model weights as named numpy arrays (what a site sends), and back."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    expected = model.state_dict()
    if set(weights) != set(expected):
        missing, extra = set(expected) - set(weights), set(weights) - set(expected)
        raise ValueError(f"weights do not match the model (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}); "
                         "the sites and the server must run the same rmm version and model config")
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
