"""The site policy file (core/privacy/site_policy.py), the merged releases (core/aggregates/merged_histogram.py,
core/survival/merged_hazard.py) and ``rmm-client --check --policy``."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.client.cli import main as client_main
from rmmfed.core.survival.baseline_hazard import baseline_from_sums, local_hazard_sums, time_grid
from rmmfed.core.aggregates.histogram import HistogramGrid, quantile_from_counts
from rmmfed.core.survival.merged_hazard import fine_sums, merge_intervals
from rmmfed.core.aggregates.merged_histogram import merge_bins, merged_quantile
from rmmfed.core.privacy.site_policy import DEFAULT_PHASES, DEFAULT_POLICY, PolicyFileError, load_policy


# ---- the file ----------------------------------------------------------------------------------
def test_no_file_gives_the_safe_defaults():
    p = load_policy(None)
    assert p == DEFAULT_POLICY
    assert (p.min_patients, p.max_bins, p.one_grid_per_kind, p.phases, p.dp.required) == (10, 512, True, DEFAULT_PHASES, True)
    assert "cox" not in p.phases  # exact Cox core sums are opt-in
    assert (p.dp.max_epsilon, p.dp.total_epsilon, p.dp.allow_seeded_noise) == (8.0, 50.0, False)
    assert p.training.max_lr == 0.01 and p.training.max_weight == 1000.0
    assert p.max_evaluations == 5  # exact test evaluations in the site's lifetime


def test_a_toml_file_sets_every_key(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text('min-patients = 20\nmax-bins = 64\nmin-bin-ratio = 1.1\none-grid-per-kind = false\n'
                 'max-rounds = 5\nphases = ["statistics", "tier1"]\n[dp]\nrequired = true\nmax-epsilon = 3.0\n')
    p = load_policy(f)
    assert (p.min_patients, p.max_bins, p.min_bin_ratio, p.one_grid_per_kind, p.max_rounds) == (20, 64, 1.1, False, 5)
    assert p.phases == ("statistics", "tier1") and p.dp.required and p.dp.max_epsilon == 3.0


def test_a_json_file_works_too(tmp_path):
    f = tmp_path / "policy.json"
    f.write_text('{"min-patients": 15, "dp": {"required": true}}')
    assert load_policy(f).min_patients == 15 and load_policy(f).dp.required


@pytest.mark.parametrize("text, key", [
    ("min-patient = 10\n", "min-patient"),
    ("[dp]\nrequire = true\n", "dp.require"),
    ("min-patients = 1\n", "min-patients"),
    ('min-patients = "ten"\n', "min-patients"),
    ('phases = ["tier3"]\n', "phases"),
    ("[dp]\nmax-epsilon = -1\n", "dp.max-epsilon"),
    ("min-patients = \n", "-"),
])
def test_a_bad_file_gives_one_error_naming_the_file_the_key_and_the_fix(tmp_path, text, key):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(PolicyFileError) as err:
        load_policy(f)
    assert err.value.key == key and str(f) in str(err.value) and "Fix:" in str(err.value)
    assert isinstance(err.value, ValueError)


# ---- merged histograms -------------------------------------------------------------------------
def test_merged_bins_hold_k_patients_and_keep_the_total():
    rng = np.random.default_rng(0)
    values, who = rng.lognormal(-5, 1, 600), np.tile(np.arange(100), 6)
    m = merge_bins(HistogramGrid(), values, who, 10)
    fine = np.searchsorted(HistogramGrid().edges(), values, side="right") - 1
    assert m.counts.sum() == 600
    assert all(len(np.unique(who[(fine >= a) & (fine <= b)])) >= 10 for a, b in zip(m.first, m.last))
    assert merge_bins(HistogramGrid(), values[:9], np.arange(9), 10) is None


def test_the_merged_quantile_is_bracketed_and_exact_without_merging():
    rng = np.random.default_rng(1)
    grid = HistogramGrid()
    sites = [rng.lognormal(-5, 1, n) for n in (300, 120, 60)]
    parts = [merge_bins(grid, v, np.arange(len(v)), 10) for v in sites]
    b = merged_quantile(grid, parts, 0.95)
    exact = np.percentile(np.concatenate(sites), 95)
    assert b.low <= exact <= b.high and b.low <= b.estimate <= b.high
    plain = [merge_bins(grid, v, np.arange(len(v)), 1) for v in sites]
    counts = sum(grid.counts(v) for v in sites)
    assert merged_quantile(grid, plain, 0.95).estimate == pytest.approx(quantile_from_counts(grid, counts, 0.95))


# ---- merged Breslow sums -----------------------------------------------------------------------
def test_merged_breslow_groups_have_k_events_and_k_leavers_and_h0_stays_close():
    rng = np.random.default_rng(2)
    t, e, r = rng.exponential(30, 400), rng.random(400) < 0.6, rng.normal(size=400)
    grid = time_grid(float(np.quantile(t, 0.95)), 64)
    m = merge_intervals(t, e, r, grid, 10)
    j = np.searchsorted(grid, t, side="left")
    ends = np.append(m.first[1:], len(grid))
    for a, b, d in zip(m.first, ends, m.events):
        leave = (j >= a) & (j < b)
        assert d >= 10 and leave.sum() >= 10 and d == e[leave].sum()
    exact = baseline_from_sums(grid, *local_hazard_sums(t, e, r, grid))
    merged = baseline_from_sums(grid, *fine_sums([m], len(grid)))
    assert np.abs(merged - exact).max() < 0.1 * exact[-1]
    bounds = np.append(m.first[1:], len(grid)) - 1  # H0 at each group's last point: exact up to the risk sets
    assert np.abs(merged[bounds] - exact[bounds]).max() < 0.05 * exact[-1]
    assert merge_intervals(t[:9], e[:9], r[:9], grid, 10) is None  # 9 patients cannot reach the floor


# ---- rmm-client --check --policy ---------------------------------------------------------------
def test_client_check_prints_the_effective_policy(site_factory, tmp_path, capsys):
    site = site_factory(n=20)
    f = tmp_path / "p.toml"
    f.write_text("min-patients = 25\n[dp]\nrequired = true\n")
    assert client_main(["--site", "A", "--data", str(site), "--check", "--device", "cpu", "--policy", str(f)]) == 0
    out = capsys.readouterr().out
    assert f"site policy  {f}" in out and "min-patients       25" in out and "dp.required        true" in out


def test_client_refuses_a_bad_policy_before_anything_connects(site_factory, tmp_path, capsys):
    site = site_factory(n=20)
    f = tmp_path / "p.toml"
    f.write_text("min-patients = 0\n")
    assert client_main(["--site", "A", "--data", str(site), "--check", "--policy", str(f)]) == 2
    err = capsys.readouterr().err
    assert "min-patients" in err and str(f) in err and "Fix:" in err


# ---- rmm-simulate --policy and rmm-client's node config ------------------------------------------
def test_simulate_refuses_a_bad_policy_file_before_anything_runs(tmp_path, capsys):
    from rmmfed.simulations.cohort import CohortConfig, generate_cohort
    from rmmfed.simulations.simulate import main as simulate_main

    cohort = tmp_path / "cohort"
    generate_cohort(CohortConfig(n_patients=60, seed=1), cohort)
    bad = tmp_path / "policy.toml"
    bad.write_text("max-bin = 64\n")
    out = tmp_path / "out"
    assert simulate_main(["--data", str(cohort), "--out", str(out), "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'max-bin'" in err and "Fix:" in err
    assert not out.exists()


def test_a_site_folders_own_policy_wins_over_the_simulation_wide_one(tmp_path):
    from rmmfed.simulations.cohort import CohortConfig, generate_cohort
    from rmmfed.simulations.simulate import check_policies

    cohort = tmp_path / "cohort"
    generate_cohort(CohortConfig(n_patients=60, seed=1), cohort)
    (cohort / "site-B" / "policy.toml").write_text("min-patients = 30\n")
    wide = tmp_path / "all.toml"
    wide.write_text("min-patients = 12\n")
    got = check_policies(sorted(p for p in cohort.iterdir() if p.is_dir()), wide)
    assert got["site-B"][1].min_patients == 30 and got["site-A"][1].min_patients == 12


def test_rmm_client_hands_its_policy_to_the_supernode_node_config(tmp_path):
    from rmmfed.client.cli import parse_args, supernode_command

    f = tmp_path / "p.toml"
    f.write_text("min-patients = 12\n")
    args = parse_args(["--site", "A", "--data", str(tmp_path), "--superlink", "127.0.0.1:9092", "--insecure",
                       "--policy", str(f)])
    cmd = supernode_command(args, tmp_path, 9400)  # builds the command line, starts nothing
    node = cmd[cmd.index("--node-config") + 1]
    assert f"policy='{f.resolve()}'" in node
