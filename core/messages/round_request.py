"""The request of a training or validation round (Tier 1 or 2), which four phases share: the weights Flower's
strategy sends and its round config.

A training round's weights are the previous round's aggregate, the weights that round's validation would
score. So with ``validate-sent`` a site scores them on its validation split before it trains and sends the
validation metrics in the training reply: one message per round instead of two. Only the phase's last round
is validated by a message of its own (server/strategies.py)."""

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
    validate_sent: bool = False  # a training round: also score the weights sent (the previous round's aggregate)

    @property
    def run_round(self) -> int:
        """The run's round, across resumes."""
        return self.server_round + self.round_offset

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), CONFIG: {"server-round": self.server_round,
                                                     "round-offset": self.round_offset,
                                                     "proximal-mu": self.proximal_mu,
                                                     "validate-sent": bool(self.validate_sent)}}

    @classmethod
    def from_records(cls, r: Records) -> "RoundRequest":
        c = r.get(CONFIG) or {}
        return cls(arrays_of(r, ARRAYS), int(c.get("server-round", 0)), int(c.get("round-offset", 0)),
                   float(c.get("proximal-mu", 0.0)), bool(c.get("validate-sent", False)))
