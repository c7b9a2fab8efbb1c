"""Fault injection for simulations: one site that sends broken or hostile Tier 1 updates.

Used to show that the server's defences (non-finite filter, norm bound, robust aggregation) keep the
global model sound when one hospital is broken (NaN) or hostile (an update scaled by 1e6). A
ClientApp mod, applied to ``train`` replies of the chosen site only; never used outside simulations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from ..core.messages import protocol as P

FAULTS = ("nan", "scale")


def fault_mod(site: str, fault: str, site_of: Callable[[Context], str]):
    if fault not in FAULTS:
        raise ValueError(f"unknown fault '{fault}'. Fix: use one of {', '.join(FAULTS)}")

    def mod(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type != P.TIER1_ROUND.message_type or reply.has_error() or Path(site_of(context)).name != site:
            return reply
        sent = {k: a.numpy() for k, a in msg.content[P.ARRAYS].items()}
        local = {k: a.numpy() for k, a in reply.content[P.ARRAYS].items()}
        if fault == "nan":
            bad = {k: np.full_like(v, np.nan) for k, v in local.items()}
        else:  # the update (local - global) blown up a million times
            bad = {k: sent[k] + 1e6 * (v - sent[k]) for k, v in local.items()}
        reply.content[P.ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in bad.items()})
        return reply

    return mod
