"""query.schema, the handshake: the site's modalities, counts, rmm version and what its policy takes part
in. Asked by server/handshake.py (through server/federation.py); answered from the site's data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ... import __version__
from ..data.schema import decode_schema, encode_schema
from ..messages import metric_names as M
from ..messages.record_names import CONFIG, Records
from .phase import Phase
from .site_call import SiteCall


@dataclass
class SchemaReply:
    site: str
    dims: dict[str, int | None]
    rmm_version: str
    n_patients: int
    n_events: int
    n_train: int
    n_val: int
    n_test: int
    release_epsilon: float = 0.0  # the site policy's dp.release-epsilon: > 0 when its releases are noised
    cox: bool = False  # the site policy takes part in the cox phase (exact Cox core sums)
    validation: bool = False  # the site policy takes part in the opt-in per-round validation phase
    COUNTS: ClassVar[tuple[str, ...]] = (M.N_PATIENTS, M.N_EVENTS, M.N_TRAIN, M.N_VAL, M.N_TEST)

    def to_records(self) -> Records:
        return {CONFIG: {"site": self.site, "schema": encode_schema(self.dims), "rmm-version": self.rmm_version,
                         **self.counts, "release-epsilon": float(self.release_epsilon), "cox": bool(self.cox),
                         "validation": bool(self.validation)}}

    @classmethod
    def from_records(cls, r: Records) -> "SchemaReply":
        c = r[CONFIG]
        return cls(str(c["site"]), decode_schema(str(c["schema"])), str(c["rmm-version"]),
                   *(int(c[k]) for k in cls.COUNTS), float(c.get("release-epsilon", 0.0)), bool(c.get("cox", False)),
                   bool(c.get("validation", False)))

    @property
    def counts(self) -> dict[str, int]:
        return dict(zip(self.COUNTS, (self.n_patients, self.n_events, self.n_train, self.n_val, self.n_test)))


SCHEMA_KEYS = frozenset({"site", "schema", "rmm-version", *SchemaReply.COUNTS, "release-epsilon", "cox",
                         "validation"})  # the only config a reply carries


def answer(req: None, site: SiteCall) -> SchemaReply:
    d = site.session.data
    return SchemaReply(site.site_name, d.modalities, __version__, len(d.patient_ids), int(d.event.sum()),
                       len(d.indices("train")), len(d.indices("val")), len(d.indices("test")),
                       site.policy.policy.dp.release_epsilon, "cox" in site.policy.policy.phases,
                       "validation" in site.policy.policy.phases)


SCHEMA = Phase("handshake", "query.schema", None, (), (CONFIG,), reply_type=SchemaReply, answer=answer)
