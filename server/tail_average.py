"""The mean of a training phase's last rounds' aggregated weights (tail averaging of the iterates).

Under DP-SGD every round's global weights carry the noise of that round's steps at every site. Without
per-round validation (the default site policy answers none) a phase keeps its last round, one noisy
iterate. The mean of the last K rounds' aggregates averages part of that noise away, as Polyak-Ruppert
averaging does for SGD's iterates. It is computed by the coordinator from the weights it already holds, so
it is post-processing: it costs no privacy and asks the sites nothing.

Floating-point arrays are averaged; any other array (an integer counter) keeps the last round's value.
"""

from __future__ import annotations

import numpy as np


class TailAverage:
    """Running sum of the aggregated weights of rounds ``first`` .. the phase's last."""

    def __init__(self, first: int) -> None:
        self.first = int(first)
        self.sums: dict[str, np.ndarray] = {}
        self.last: dict[str, np.ndarray] = {}
        self.rounds: list[int] = []

    def add(self, rnd: int, weights: dict[str, np.ndarray]) -> None:
        """Round ``rnd``'s aggregate (ignored before ``first``; a round already added is not added twice)."""
        if rnd < self.first or rnd in self.rounds:
            return
        for k, v in weights.items():
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating):
                self.sums[k] = self.sums[k] + v.astype(np.float64) if k in self.sums else v.astype(np.float64)
        self.last = {k: np.asarray(v) for k, v in weights.items()}
        self.rounds.append(int(rnd))

    def __len__(self) -> int:
        return len(self.rounds)

    def mean(self) -> dict[str, np.ndarray]:
        """The averaged weights, each array in its own dtype (the last round's where not floating-point)."""
        if not self.rounds:
            raise ValueError("no round was averaged. Fix: ask for the mean only after a round at or after "
                             f"round {self.first} was aggregated")
        n = len(self.rounds)
        return {k: (self.sums[k] / n).astype(v.dtype) if k in self.sums else v for k, v in self.last.items()}

    def describe(self) -> str:
        return f"rounds {min(self.rounds)}-{max(self.rounds)}" if self.rounds else "no round"

    # ---- checkpoints ----------------------------------------------------------------------------
    def to_plain(self) -> dict:
        return {"first": self.first, "sums": self.sums, "last": self.last, "rounds": self.rounds}

    @classmethod
    def from_plain(cls, plain: dict) -> "TailAverage":
        t = cls(int(plain["first"]))
        t.sums = {k: np.asarray(v, dtype=np.float64) for k, v in plain["sums"].items()}
        t.last = {k: np.asarray(v) for k, v in plain["last"].items()}
        t.rounds = [int(r) for r in plain["rounds"]]
        return t
