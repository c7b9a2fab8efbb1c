"""Robust aggregation for the Tier 1 / Tier 2 rounds: drop broken updates, bound update norms,
robust Flower strategies and central DP.

- :func:`finite_update_filter`: a reply whose arrays hold NaN or Inf is dropped (and its node logged)
  before aggregation; one broken site must not turn the global model into NaN.
- :func:`bound_update_norms`: the update of a site is its weights minus the current global weights.
  With ``max_update_norm`` C > 0 an update with L2 norm > C is, by default, SCALED DOWN to norm C
  (``action="clip"``): an honest site with a large early-round step still contributes its direction,
  and any one site can move a FedAvg mean by at most its weight times C. ``action="drop"`` removes
  it instead (stricter; loses honest but large updates). Neither stops a site from inflating its
  ``num-examples`` weight: use FedMedian / trimmed mean / Krum when sites are not trusted.
- :class:`DefendedAggregation`: a mixin doing both before ``super().aggregate_train``; it composes
  with any message-API strategy, including the ``_restricted`` factory of
  :mod:`rmmfed.server.strategies`: ``_restricted(defended(FedAvg))(..., max_update_norm=5.0)``.
- :func:`robust_strategy` builds Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum (or FedAvg) with
  the mixin; :func:`central_dp` wraps a strategy in ``DifferentialPrivacyServerSideFixedClipping``.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (DifferentialPrivacyServerSideFixedClipping, FedAvg, FedMedian, FedTrimmedAvg,
                                     Krum, MultiKrum)

from ..core.errors import RmmError

__all__ = ["DefenceError", "finite_update_filter", "update_norm", "bound_update_norms", "DefendedAggregation",
           "defended", "ROBUST_STRATEGIES", "robust_strategy", "central_dp"]

NormAction = Literal["clip", "drop"]


class DefenceError(RmmError):
    """A defence is misconfigured."""


def _array_records(reply: Message) -> list[tuple[str, ArrayRecord]]:
    return list(reply.content.array_records.items())


def _node(reply: Message) -> int:
    return int(reply.metadata.src_node_id)


def finite_update_filter(replies: Iterable[Message]) -> tuple[list[Message], list[int]]:
    """(kept replies, node ids dropped because an array holds NaN/Inf). Error replies are kept: the
    strategy counts them as failures."""
    kept, dropped = [], []
    for reply in replies:
        if not reply.has_error() and any(
                not np.isfinite(a.numpy()).all() for _, rec in _array_records(reply) for a in rec.values()
                if np.issubdtype(np.dtype(a.dtype), np.floating)):
            log(WARNING, "defence: dropped the update of node %s: its arrays contain NaN or Inf", _node(reply))
            dropped.append(_node(reply))
        else:
            kept.append(reply)
    return kept, dropped


def update_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of ``arrays - reference`` over all floating-point arrays (same names required)."""
    if set(arrays) != set(reference):
        raise DefenceError("an update's array names differ from the global model's. Fix: sites must send "
                           "exactly the arrays they received (the egress guard enforces this).")
    total = 0.0
    for key, ref in reference.items():
        r = ref.numpy()
        if np.issubdtype(r.dtype, np.floating):
            total += float(np.sum((arrays[key].numpy().astype(np.float64) - r.astype(np.float64)) ** 2))
    return float(np.sqrt(total))


def _scaled(arrays: ArrayRecord, reference: ArrayRecord, factor: float) -> ArrayRecord:
    out = {}
    for key, ref in reference.items():
        r, a = ref.numpy(), arrays[key].numpy()
        out[key] = (r + factor * (a - r)).astype(a.dtype) if np.issubdtype(r.dtype, np.floating) else a
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out.items()})


def bound_update_norms(replies: Iterable[Message], reference: ArrayRecord, max_norm: float,
                       action: NormAction = "clip") -> tuple[list[Message], list[int]]:
    """Clip (scale to ``max_norm``) or drop updates whose distance from ``reference`` exceeds it.

    Returns (replies to aggregate, node ids clipped or dropped). Clipping replaces the reply's arrays.
    """
    if action not in ("clip", "drop"):
        raise DefenceError(f"norm_action={action!r}. Fix: use 'clip' or 'drop'.")
    kept, hit = [], []
    for reply in replies:
        if reply.has_error():
            kept.append(reply)
            continue
        over = False
        for name, rec in _array_records(reply):
            norm = update_norm(rec, reference)
            if norm > max_norm:
                over = True
                if action == "clip":
                    reply.content[name] = _scaled(rec, reference, max_norm / norm)
                log(WARNING, "defence: update of node %s has norm %.3g > %.3g: %s", _node(reply), norm, max_norm,
                    "scaled down" if action == "clip" else "dropped")
        if over:
            hit.append(_node(reply))
        if not (over and action == "drop"):
            kept.append(reply)
    return kept, hit


class DefendedAggregation:
    """Mixin: filters non-finite updates and bounds update norms before the base strategy aggregates.

    Place it before the strategy class in the bases (``defended(FedAvg)``). Keyword arguments:
    ``max_update_norm`` (0 = no bound), ``norm_action`` ("clip" or "drop"). The global weights of the
    round are taken from ``configure_train`` (or :meth:`set_reference`). ``last_defence`` says what
    the last aggregation dropped or clipped.
    """

    def __init__(self, *args, max_update_norm: float = 0.0, norm_action: NormAction = "clip", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if max_update_norm < 0 or norm_action not in ("clip", "drop"):
            raise DefenceError(f"max_update_norm={max_update_norm!r}, norm_action={norm_action!r}. "
                               "Fix: a norm >= 0 (0 = off) and 'clip' or 'drop'.")
        self.max_update_norm, self.norm_action = float(max_update_norm), norm_action
        self.reference_arrays: ArrayRecord | None = None
        self.last_defence: dict = {}

    def set_reference(self, arrays: ArrayRecord) -> None:
        """The global weights updates are measured from (set by configure_train in a real run)."""
        self.reference_arrays = arrays
        if hasattr(self, "current_arrays"):  # Flower's central-DP wrappers clip against this
            self.current_arrays = arrays

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.reference_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept, nonfinite = finite_update_filter(replies)
        bounded: list[int] = []
        if self.max_update_norm > 0 and self.reference_arrays is not None:
            kept, bounded = bound_update_norms(kept, self.reference_arrays, self.max_update_norm, self.norm_action)
        self.last_defence = {"round": server_round, "dropped-nonfinite": nonfinite,
                             f"norm-{'clipped' if self.norm_action == 'clip' else 'dropped'}": bounded}
        return super().aggregate_train(server_round, kept)


def defended(base: type) -> type:
    """``base`` with :class:`DefendedAggregation` in front (a new class, ``Defended<Base>``)."""
    return type(f"Defended{base.__name__}", (DefendedAggregation, base), {})


ROBUST_STRATEGIES: dict[str, type] = {"fedavg": FedAvg, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
                                      "krum": Krum, "multikrum": MultiKrum}


def robust_strategy(name: str, **kwargs) -> FedAvg:
    """A defended Flower strategy by name; ``kwargs`` go to its constructor (e.g. ``beta`` for
    fedtrimmedavg, ``num_malicious_nodes`` for krum, plus ``num_nodes_to_select`` for multikrum) and
    to the mixin (``max_update_norm``, ``norm_action``)."""
    if name not in ROBUST_STRATEGIES:
        raise DefenceError(f"unknown robust strategy {name!r}. Fix: use one of {sorted(ROBUST_STRATEGIES)}.")
    return defended(ROBUST_STRATEGIES[name])(**kwargs)


def central_dp(strategy: FedAvg, *, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
               max_update_norm: float = 0.0) -> DifferentialPrivacyServerSideFixedClipping:
    """Central DP (server-side fixed clipping, Gaussian noise on the aggregate) around ``strategy``,
    with non-finite updates dropped first (Flower's wrapper skips a round on any error reply and
    clipping a NaN update yields NaN)."""
    return defended(DifferentialPrivacyServerSideFixedClipping)(
        strategy, noise_multiplier, clipping_norm, num_sampled_clients, max_update_norm=max_update_norm)
