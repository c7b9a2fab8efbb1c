"""query.setup: the run config and the federated feature statistics. The site checks the config against its
policy, reserves the run's DP-SGD epsilon on its lifetime budget, and keeps both for the run. Asked by
server/federation.py; applied by core/site/site_session.SiteSession.setup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..data.schema import encode_schema
from ..messages import metric_names as M
from ..messages.record_names import CONFIG, METRICS, STATS_RECORD, Records
from ..messages.replies import MetricsReply, arrays_of
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import SiteCall
from .statistics import dims_of


@dataclass
class SetupRequest:
    config: dict[str, Any]  # the flat run config (RunConfig.to_flat)
    dims: dict[str, int]
    stats: dict[str, np.ndarray]  # FeatureStats.to_arrays

    def to_records(self) -> Records:
        return {CONFIG: {**self.config, "schema": encode_schema(self.dims)}, STATS_RECORD: dict(self.stats)}

    @classmethod
    def from_records(cls, r: Records) -> "SetupRequest":
        conf = dict(r[CONFIG])
        dims = dims_of(conf.pop("schema"))
        return cls(conf, dims, arrays_of(r, STATS_RECORD))


def answer(req: SetupRequest, site: SiteCall) -> MetricsReply:
    cfg = RunConfig.from_flat(req.config)
    if cfg.dp.enabled:  # the whole run's epsilon, reserved on disk before any round computes
        site.reserve(cfg.dp.target_epsilon, cfg.dp.target_delta, "tier1+tier2 DP-SGD")
    site.keep_setup()
    return MetricsReply({M.READY: 1.0})


SETUP = Phase("setup", "query.setup", None, (CONFIG, STATS_RECORD), (METRICS,), (M.READY,),
              request_type=SetupRequest, reply_type=MetricsReply, checks=(C.setup(),), answer=answer)
