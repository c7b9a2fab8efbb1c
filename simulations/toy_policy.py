"""A lowered privacy floor for toy-sized cohorts (tests, speed benchmarks), written where a site's
ClientApp looks for its own policy: ``policy.toml`` in each site folder (client/policy_mod.py).

The default floor of 10 patients (docs/privacy.md) is sized for real sites; a 30-patient test site
holds 2-3 held-out complete cases, so every calibration histogram would be refused. Anything that
lowers the floor says so in the file it writes.
"""

from __future__ import annotations

from pathlib import Path


def lower_floor(cohort: str | Path, min_patients: int = 2, why: str = "toy-sized sites",
                seeded_noise: bool = False) -> list[Path]:
    """Write ``policy.toml`` with ``min-patients`` into every site folder of ``cohort``; the files written.
    ``seeded_noise``: the sites also accept ``dp.seeded-noise`` (tests that compare two runs to the digit)."""
    text = f"# {why}: the privacy floor is lowered on purpose (docs/privacy.md)\nmin-patients = {int(min_patients)}\n"
    if seeded_noise:
        text += "# and DP noise from the run's seed, replayable: for tests that compare runs, never a hospital\n" \
                "[dp]\nallow-seeded-noise = true\n"
    written = []
    for site in sorted(Path(cohort).iterdir()):
        if (site / "patients.csv").is_file():
            (site / "policy.toml").write_text(text)
            written.append(site / "policy.toml")
    return written
