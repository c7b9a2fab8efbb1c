"""Pydantic models for the site-data contract and the run-wide modality schema.

`PatientRow` validates one row of a site's ``patients.csv``; `SiteSchema` is what a site
reports about itself (modality names and dims, counts); `merge_schemas` turns the schemas of
all sites into the run's ``modality -> dim`` map.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import SchemaMismatchError

SPLITS: tuple[str, ...] = ("train", "val", "test")


class PatientRow(BaseModel):
    """One validated row of ``patients.csv``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    patient_id: str = Field(min_length=1)
    time: float = Field(gt=0, allow_inf_nan=False)
    event: int
    split: Literal["train", "val", "test"]
    context: str = ""

    @field_validator("patient_id", mode="before")
    @classmethod
    def _strip_id(cls, value: object) -> object:
        """Trim surrounding whitespace so ``" 0012"`` matches the file ``0012.npy``."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("event")
    @classmethod
    def _event_is_binary(cls, value: int) -> int:
        """Only 1 (event observed) and 0 (censored) are meaningful."""
        if value not in (0, 1):
            raise ValueError("event must be 1 (event observed) or 0 (censored)")
        return value


class SiteSchema(BaseModel):
    """What a site reports about its data: modality dims (None = folder without files)."""

    model_config = ConfigDict(frozen=True)

    site: str
    modalities: dict[str, int | None]
    n_patients: int = Field(ge=0)
    n_events: int = Field(ge=0)
    rmm_version: str = ""


def merge_schemas(schemas: list[SiteSchema]) -> dict[str, int]:
    """Union of the sites' modalities with one agreed dim each, sorted by modality name.

    Raises SchemaMismatchError when sites disagree on a modality's dim, when a modality has
    no file at any site (dim None everywhere), or when no schema is given.
    """
    if not schemas:
        raise SchemaMismatchError(
            "no site schemas to merge. Fix: point --data at a cohort folder with site folders"
        )
    seen: dict[str, dict[int, list[str]]] = {}
    for schema in schemas:
        for modality, dim in schema.modalities.items():
            by_dim = seen.setdefault(modality, {})
            if dim is not None:
                by_dim.setdefault(dim, []).append(schema.site)
    merged: dict[str, int] = {}
    for modality in sorted(seen):
        by_dim = seen[modality]
        if not by_dim:
            holders = sorted(s.site for s in schemas if modality in s.modalities)
            raise SchemaMismatchError(
                f"modality '{modality}' has a folder but no .npy file at any site "
                f"(sites: {', '.join(holders)}). Fix: remove the empty '{modality}/' folder "
                f"or provide at least one '{modality}/<patient_id>.npy' file"
            )
        if len(by_dim) > 1:
            detail = "; ".join(
                f"dim {dim} at {', '.join(sorted(sites))}" for dim, sites in sorted(by_dim.items())
            )
            raise SchemaMismatchError(
                f"modality '{modality}' has different feature dims across sites ({detail}). "
                f"Fix: extract '{modality}' features with the same encoder at every site so "
                f"every file is [n_instances, dim] with one shared dim"
            )
        merged[modality] = next(iter(by_dim))
    return merged


def encode_schema(modalities: dict[str, int | None]) -> str:
    """``{"a": 3, "b": None}`` -> ``"a:3,b:-1"`` (flat string for a config record)."""
    return ",".join(f"{m}:{-1 if d is None else int(d)}" for m, d in modalities.items())


def decode_schema(text: str) -> dict[str, int | None]:
    """The inverse of :func:`encode_schema`."""
    out: dict[str, int | None] = {}
    for part in filter(None, text.split(",")):
        name, _, dim = part.rpartition(":")
        out[name] = None if int(dim) < 0 else int(dim)
    return out
