"""query.stats: each site's feature sums (and second moments for the federated PCA) over at least the floor's
patients. Asked by server/federation.py (feature statistics); computed by
core/site/site_session.SiteSession.feature_sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.schema import decode_schema, encode_schema
from ..messages.record_names import CONFIG, SUMS, Records
from ..messages.replies import ArraysPayload
from .phase import Phase
from .site_call import SiteCall


def dims_of(text: Any) -> dict[str, int]:
    """A schema string's modalities with their widths (absent modalities dropped)."""
    return {k: int(v) for k, v in decode_schema(str(text)).items() if v is not None}


@dataclass
class StatsRequest:
    dims: dict[str, int]
    min_stat_count: int = 0
    reduce_above: int = 0
    reduce_dim: int = 0

    def to_records(self) -> Records:
        return {CONFIG: {"schema": encode_schema(self.dims), "min-stat-count": int(self.min_stat_count),
                         "reduce-above": int(self.reduce_above), "reduce-dim": int(self.reduce_dim)}}

    @classmethod
    def from_records(cls, r: Records) -> "StatsRequest":
        c = r[CONFIG]
        return cls(dims_of(c["schema"]), int(c.get("min-stat-count", 0)), int(c.get("reduce-above", 0)),
                   int(c.get("reduce-dim", 0)))


class SumsReply(ArraysPayload):
    RECORD = SUMS
    sums = ArraysPayload.alias()


def answer(req: StatsRequest, site: SiteCall) -> SumsReply:
    s = site.session
    s.bind_schema(req.dims)
    # the site's floor, or the coordinator's min-stat-count when it is stricter
    return SumsReply(s.feature_sums(site.policy.floor(req.min_stat_count), reduce_above=req.reduce_above,
                                    reduce_dim=req.reduce_dim, second_moments=site.policy.policy.second_moments))


STATISTICS = Phase("statistics", "query.stats", "statistics", (CONFIG,), (SUMS,), request_type=StatsRequest,
                   reply_type=SumsReply, answer=answer)
