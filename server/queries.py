"""How the ServerApp talks to sites: one query to many nodes with retries, and reading merged releases.

Plain helpers over a Flower Grid; every phase of :mod:`rmmfed.server.federation` goes through them.
"""

from __future__ import annotations

import math
import time
from logging import ERROR, WARNING

import numpy as np
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.aggregates.merged_histogram import MergedBins, QuantileBracket, spread
from ..core.privacy.private_histogram import noise_std
from ..flower.records import records_of, to_content
from ..flower.refusal import refused_key
from .repeated_warnings import sites

class Replies(dict):
    """The successful replies by node; ``refused`` maps each node whose site policy refused to the policy key."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[int, str] = {}


def ask(grid: Grid, nodes: list[int], phase: P.Phase, timeout: float, request=None, *, retries: int = 1,
        reconnect_pause_s: float = 2.0, say_refusals: bool = True) -> Replies:
    """Send the same request (``phase``'s request payload, core/phases/) to each node as ``phase``'s message
    type; return the successful replies by node (errors logged; refusals logged unless ``say_refusals`` is
    off, for a caller that names them with the sites that did not answer).

    Every message sent this way is a query a site can answer twice with the same result (schema,
    statistics, setup, histograms, hazard sums, evaluation), so a node that answered with an error
    (e.g. a ClientApp task lost while its SuperNode reconnected) is asked again, up to ``retries``
    times, within the same ``timeout``. A node the SuperLink reports unavailable (its SuperNode missed
    its heartbeats: it is reconnecting after a restart, with a back-off of up to tens of seconds) is
    asked again every ``reconnect_pause_s`` until the timeout, without using up ``retries``. A node
    that does not answer at all uses up the timeout. A node whose site policy refused the request (its
    reason names the policy key) is not asked again.
    """
    message_type = phase.message_type
    records = phase.encode_request(request)  # a request of another phase's type is refused here, before sending
    deadline = time.monotonic() + timeout
    out = Replies()
    refused: set[int] = set()
    refusals: dict[str, list[int]] = {}  # policy key -> the nodes that refused under it: one line each, at the end
    pending = list(nodes)
    attempt = 0
    while pending and attempt <= retries:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        unavailable: set[int] = set()
        msgs = [Message(to_content(records), dst_node_id=n, message_type=message_type) for n in pending]
        for rep in grid.send_and_receive(msgs, timeout=left):
            nid = rep.metadata.src_node_id
            if rep.has_error() and (key := refused_key(rep.error)):
                # The site's own policy refused: the same request would be refused again.
                refusals.setdefault(key, []).append(nid)
                refused.add(nid)
            elif rep.has_error() and rep.error.code == ErrorCode.NODE_UNAVAILABLE:
                unavailable.add(nid)
            elif rep.has_error():
                log(ERROR, "%s: node %s replied with an error: %s", message_type, nid, rep.error.reason)
            else:
                out[nid] = rep
        pending = [n for n in pending if n not in out and n not in refused]
        if not pending:
            break
        if unavailable and set(pending) <= unavailable:
            # every node still missing is reconnecting: wait for it, this is not a failed attempt
            left = deadline - time.monotonic()
            if left <= reconnect_pause_s:
                log(ERROR, "%s: node(s) %s still unavailable (not reconnected) when the timeout ran out",
                    message_type, ", ".join(map(str, sorted(unavailable))))
                break
            log(WARNING, "%s: node(s) %s unavailable (reconnecting?); asking again in %.0f s", message_type,
                ", ".join(map(str, sorted(unavailable))), reconnect_pause_s)
            time.sleep(reconnect_pause_s)
            continue
        attempt += 1
        if attempt <= retries:
            log(WARNING, "%s: asking node(s) %s again (attempt %d of %d)", message_type,
                ", ".join(map(str, pending)), attempt + 1, retries + 1)
    out.refused = {n: key for key, nids in refusals.items() for n in nids}
    for key, nids in refusals.items() if say_refusals else ():
        log(WARNING, "%s: %s (%s): node(s) %s", message_type, sites(len(nids), "refused by {its} site policy"), key,
            ", ".join(map(str, nids)))
    return out


def no_answer(phase: str, missing: list[str], refused: dict[str, str]) -> str:
    """One line naming the sites that did not answer ``phase``, with the policy key of those whose site
    policy refused (``refused``: site -> key), e.g. ``calibration: no answer from B, C (2 sites refused by
    their site policy: min-patients)``."""
    by_key: dict[str, list[str]] = {}
    for site, key in refused.items():
        by_key.setdefault(key, []).append(site)
    why = "; ".join(f"{sites(len(names), 'refused by {its} site policy')}: {key}"
                    for key, names in sorted(by_key.items()))
    return f"{phase}: no answer from {', '.join(missing)}" + (f" ({why})" if why else "")


def decode(reply: Message, payload):
    """A reply's content as the protocol's ``payload`` class (core/messages/protocol.py)."""
    return payload.from_records(records_of(reply.content))


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > timeout:
            return nodes
        time.sleep(0.5)


def isotonic(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest to ``y`` in least squares (pool-adjacent-violators)."""
    values, weights, sizes = [], [], []
    for v in np.asarray(y, dtype=float):
        values.append(v), weights.append(1.0), sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2], sizes[-2] = w, sizes[-2] + sizes[-1]
            values.pop(), weights.pop(), sizes.pop()
    return np.repeat(values, sizes)


def merged_parts(replies: dict[int, Message], n_bins: int, noisy: bool, floor: float = 0.0,
                 support: np.ndarray | None = None) -> list[MergedBins]:
    """The sites' merged histograms (core/aggregates/merged_histogram.py); noisy counts are clipped after
    summing (``floor``, ``support``: :func:`pool_noisy`)."""
    decoded = [decode(r, P.HistogramReply) for r in replies.values()]
    parts = [MergedBins.from_arrays(d.counts, n_bins) for d in decoded]
    eps = [d.metrics.get(M.NOISED, 0.0) for d in decoded]  # a site's epsilon-DP counts carry their epsilon
    noisy = noisy or any(e > 0 for e in eps)
    return pool_noisy(parts, eps, n_bins, floor, support) if noisy and parts else parts


def pool_noisy(parts: list[MergedBins], epsilons: list[float], n_bins: int, floor: float = 0.0,
               support: np.ndarray | None = None) -> list[MergedBins]:
    """Unclipped noisy counts of several sites as one part: spread and summed, bins outside ``support``
    zeroed (a boolean mask from an earlier release of the same values: where it found no mass, a count
    is noise), bins within ``floor`` noise standard deviations zeroed (for a tail quantile: the floors of
    server/noised_quantile.py), then the nearest monotone CDF (least squares; a running maximum would
    pile noise peaks into the tail). Post-processing only: no privacy cost."""
    total = spread(parts, n_bins)
    if support is not None and (inside := np.where(support, total, 0.0)).sum() > 0:
        total = inside  # nothing left inside: the support was wrong, keep every bin
    sd = math.sqrt(sum(noise_std(e) ** 2 for e in epsilons if e > 0))
    floored = np.where(total > floor * sd, total, 0.0) if floor > 0 else total
    total = floored if floored.sum() > 0 else total  # tiny sites: every bin is within the noise
    cdf = np.clip(isotonic(np.cumsum(total)), 0, None)
    fine = np.diff(np.concatenate(([0.0], cdf)))  # fractional: a quantile inside a bin stays exact
    nz = np.flatnonzero(fine)
    return [MergedBins(nz, nz, fine[nz], n_bins)] if nz.size else []


def per_site(replies: dict[int, Message], parts: list[MergedBins], site_of: dict[int, str]) -> dict:
    """Per site: values binned, merged bins sent, widest merged bin (fine bins). Exact parts only."""
    if len(parts) != len(replies):  # noisy counts were pooled into one part
        return {}
    return {site_of[n]: {"values": int(np.asarray(p.counts).sum()), "merged_bins": int(p.first.size),
                         "widest_merged_bin": p.widest()} for n, p in zip(replies, parts)}


def bracket_doc(b: QuantileBracket, parts: list[MergedBins]) -> dict:
    """What a merged release leaves open about a quantile: where the exact pooled value must lie."""
    return {"estimate": b.estimate, "low": b.low, "high": b.high if math.isfinite(b.high) else None,
            "bracket_ratio": b.ratio if math.isfinite(b.ratio) else None,
            "widest_merged_bin": max((p.widest() for p in parts), default=0)}
