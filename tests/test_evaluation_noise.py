"""simulations/evaluation_noise.py: the sd that Laplace noise on the pair counts would add to the C-index."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.survival.concordance import concordance_counts
from rmmfed.simulations.evaluation_noise import C_REF, main, noise_sd

from conftest import write_site


def _tests(rng, sizes):
    out = []
    for s, n in enumerate(sizes):
        t, e = rng.exponential(1.0, n), rng.random(n) < 0.6
        out.append((f"S{s}", t, e, [f"S{s}-{i}" for i in range(n)]))
    return out


def test_the_noise_sd_matches_drawn_laplace_noise_and_shrinks_as_one_over_epsilon():
    rng = np.random.default_rng(0)
    tests = _tests(rng, (200, 300))
    sd, comp = noise_sd(tests, 20.0)
    assert comp == sum(concordance_counts(t, np.zeros(len(t)), e).comparable for _, t, e, _ in tests)
    comps = np.array([concordance_counts(t, np.zeros(len(t)), e).comparable for _, t, e, _ in tests], float)
    scale = np.array([2.0 * (len(t) - 1) / 20.0 for _, t, _, _ in tests])
    draws = 20000
    conc = C_REF * comps + rng.laplace(0, scale, (draws, 2))
    den = comps + rng.laplace(0, scale, (draws, 2))
    assert np.std(conc.sum(1) / den.sum(1)) == pytest.approx(sd, rel=0.05)
    assert noise_sd(tests, 2.0)[0] == pytest.approx(10 * sd)


def test_it_prints_one_row_per_cohort(tmp_path, capsys):
    for name, seed in (("site-A", 1), ("site-B", 2)):
        write_site(tmp_path / "cohort", name=name, n=60, seed=seed)
    assert main(["--cohorts", str(tmp_path / "cohort"), "--draws", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cohort |") and "sites" not in line]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "2" and rows[0].rstrip().endswith("n/a |")
