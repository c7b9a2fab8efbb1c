"""The request of a training or validation round (Tier 1 or 2), which four phases share: the weights Flower's
strategy sends and its round config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .record_names import ARRAYS, CONFIG, Records
from .replies import arrays_of


@dataclass
class RoundRequest:
    weights: dict[str, np.ndarray]
    server_round: int = 0  # Flower's round within this submission
    round_offset: int = 0  # rounds completed before a resume
    proximal_mu: float = 0.0  # FedProx

    @property
    def run_round(self) -> int:
        """The run's round, across resumes."""
        return self.server_round + self.round_offset

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), CONFIG: {"server-round": self.server_round,
                                                     "round-offset": self.round_offset,
                                                     "proximal-mu": self.proximal_mu}}

    @classmethod
    def from_records(cls, r: Records) -> "RoundRequest":
        c = r.get(CONFIG) or {}
        return cls(arrays_of(r, ARRAYS), int(c.get("server-round", 0)), int(c.get("round-offset", 0)),
                   float(c.get("proximal-mu", 0.0)))
