"""query.cox: the exact Cox core's per-site sums (gradient, Hessian and design sums over a whole split) at
the coefficients the coordinator sends, within max-cox-queries per run. Asked by server/cox_phase.py;
computed by core/site/site_cox.cox_release."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..messages import metric_names as M
from ..messages.record_names import CONFIG, COX_RECORD, METRICS, Records
from ..messages.replies import arrays_of, scalars_of
from ..privacy import request_checks as C
from ..site.site_cox import cox_release
from .phase import Phase
from .site_call import SiteCall


@dataclass
class CoxRequest:
    """The Cox core's sums at raw-design coefficients ``coef`` on ``split``."""

    coef: np.ndarray
    split: str = "train"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")

    def to_records(self) -> Records:
        return {COX_RECORD: {"coef": np.asarray(self.coef, dtype=np.float64)}, CONFIG: {"split": self.split}}

    @classmethod
    def from_records(cls, r: Records) -> "CoxRequest":
        split = str((r.get(CONFIG) or {}).get("split", "train"))
        return cls(np.asarray(r[COX_RECORD]["coef"], dtype=np.float64).reshape(-1), split)


@dataclass
class CoxReply:
    """One site's stratum: arrays (training split only) and scalars."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    KEYS: ClassVar[tuple[str, ...]] = ("grad", "hess", "sum", "sumsq")

    def to_records(self) -> Records:
        return {**({COX_RECORD: dict(self.arrays)} if self.arrays else {}), METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "CoxReply":
        return cls(arrays_of(r, COX_RECORD), scalars_of(r))


def answer(req: CoxRequest, site: SiteCall) -> CoxReply:
    s = site.session
    return CoxReply(*cox_release(s.model(), s.split(req.split), req.coef, req.split, site.floor()))


COX = Phase("cox", "query.cox", "cox", (COX_RECORD, CONFIG), (COX_RECORD, METRICS), (M.COX_LOGLIK, M.COX_N, M.COX_EVENTS),
            request_type=CoxRequest, reply_type=CoxReply, checks=(C.cox_query(),), answer=answer)
