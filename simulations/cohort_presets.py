"""Named variants of the synthetic cohort: ``rmm-simulate --preset NAME`` (with ``--patients N``).

- ``default``: the FUSCC-style cohort at compact widths (pathology 64, radiology 32, report 24) and
  small bags, so the four-center study runs in minutes on a laptop.
- ``wsi``: the same patients, latent state, missingness and survival at the widths and bag sizes of
  real feature extractors: pathology 1,024-d x 500-4,000 patches per slide (a foundation-model patch
  encoder), radiology 512-d x 16-128 slices, report 768-d x 4-16 sections (a text encoder). About
  7-8 MiB per patient on disk (measured by bench_scale: 2.74 GiB for 400 patients, 5.56 GiB for a
  700-patient site), so about 12 GiB for the full 1,679-patient cohort.
  The generator writes one bag at a time, so it never holds the cohort in memory.
"""

from __future__ import annotations

from .cohort_config import CohortConfig

PRESETS: dict[str, dict] = {
    "default": {},
    "wsi": {"dims": {"pathology": 1024, "radiology": 512, "report": 768},
            "instances": {"pathology": (500, 4000), "radiology": (16, 128), "report": (4, 16)}},
}


def preset_config(name: str, **overrides) -> CohortConfig:
    """The CohortConfig of preset ``name`` with ``overrides`` (e.g. n_patients, seed) on top."""
    if name not in PRESETS:
        from ..core.errors import ConfigError

        raise ConfigError(f"unknown cohort preset {name!r}. Fix: use one of {', '.join(PRESETS)}")
    return CohortConfig(**{**PRESETS[name], **overrides})
