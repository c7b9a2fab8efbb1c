"""The DP-cost benchmark's summarising (pure: rows in, table and goal verdicts out; no Flower run)."""

from __future__ import annotations

import math

import pytest

from rmmfed.simulations.bench_dp_cost import (DEFAULT_POLICY, PERMISSIVE, _cohort_data, epsilon_spent, noise_label,
                                              summarise)

DIFF = "difference (default − permissive)"


def run(cohort, seed, policy, c, status="ok", eps1=None, eps2=None, wall=10.0, error=""):
    return {"cohort": cohort, "seed": seed, "policy": policy, "status": status, "c_index": c,
            "eps_tier1": eps1, "eps_tier2": eps2, "wall_s": wall, "error": error}


def pairs(cohort, perm, dflt, **kw):
    rows = []
    for seed, (a, b) in enumerate(zip(perm, dflt)):
        rows += [run(cohort, seed, PERMISSIVE, a), run(cohort, seed, DEFAULT_POLICY, b, eps1=5.9, eps2=1.9, **kw)]
    return rows


def by_cohort(summary):
    return {r["cohort"]: r for r in summary.table}, {v.cohort: v for v in summary.verdicts}


def test_noise_label():
    assert noise_label([]) == "n/a"
    assert noise_label([-0.05]) == "one seed, no error bar"
    assert noise_label([-0.01, 0.01, -0.02, 0.015]) == "within noise"  # mean -0.00125, SE ~0.008
    assert noise_label([-0.050, -0.052, -0.048]) == "beyond noise"  # mean -0.05, SE ~0.001
    assert noise_label([0.0, 0.0]) == "within noise"  # no difference at all


def test_small_cost_within_noise_meets_the_goal():
    rows = pairs("a", [0.70, 0.72, 0.68], [0.69, 0.73, 0.665])  # diffs -0.01, +0.01, -0.015
    table, verdicts = by_cohort(summarise(rows))
    assert table["a"]["seeds"] == "3"
    assert table["a"]["noise"] == "within noise"
    assert table["a"][DIFF].startswith("-0.005 (SE ")
    assert table["a"]["C-index permissive"] == "0.700 ± 0.020"
    assert table["a"]["epsilon spent per site (default policy)"] == "Tier 1 5.90 + Tier 2 1.90 = 7.80"
    assert verdicts["a"].met is True and verdicts["a"].text.startswith("met (cost +0.005, within noise")


def test_large_cost_beyond_noise_misses_the_goal_and_the_overall_line_says_so():
    rows = pairs("ok", [0.70, 0.70], [0.70, 0.70]) + pairs("bad", [0.80, 0.81, 0.79], [0.75, 0.759, 0.741])
    s = summarise(rows)
    table, verdicts = by_cohort(s)
    assert table["bad"]["noise"] == "beyond noise"
    assert verdicts["bad"].met is False and verdicts["bad"].text.startswith("not met (cost +0.050")
    assert verdicts["ok"].met is True
    assert s.mean_difference == pytest.approx((0.0 - 0.05) / 2)
    goal = [ln for ln in s.text.splitlines() if ln.startswith("goal: default policy costs <= 0.02 C-index")]
    assert len(goal) == 1 and ": not met (" in goal[0] and "bad not met" in goal[0] and "ok met" in goal[0]
    assert "mean difference over 2 cohort(s) (default − permissive): -0.025" in s.text


def test_one_seed_has_no_error_bar_and_the_goal_is_judged_on_the_mean():
    table, verdicts = by_cohort(summarise(pairs("k", [0.70], [0.71])))
    assert table["k"]["noise"] == "one seed, no error bar"
    assert table["k"][DIFF] == "+0.010"
    assert verdicts["k"].met is True and "one seed, no error bar" in verdicts["k"].text
    assert summarise(pairs("k", [0.70], [0.70])).text.splitlines()[-1].startswith(
        "goal: default policy costs <= 0.02 C-index on every cohort: met")


def test_a_failed_run_is_recorded_not_raised():
    refusal = "rc 1: rmm-simulate: error: no site accepted the run: site policy [dp.required] refuses this request"
    rows = [run("g", 0, PERMISSIVE, 0.70), run("g", 0, DEFAULT_POLICY, None, status="failed", error=refusal),
            run("g", 1, PERMISSIVE, 0.72), run("g", 1, DEFAULT_POLICY, 0.71, eps1=6.0)]
    s = summarise(rows)
    table, verdicts = by_cohort(s)
    assert table["g"]["seeds"] == "1 of 2"
    assert "default-policy seed 0: " + refusal in table["g"]["failed runs"]
    assert table["g"]["epsilon spent per site (default policy)"] == "Tier 1 6.00"
    assert verdicts["g"].met is False and "failed on seed(s) 0" in verdicts["g"].text
    # only the permissive run failed: judged on the seeds that have both, the failure listed
    rows = [run("h", 0, PERMISSIVE, None, status="failed", error="rc 2: boom"), run("h", 0, DEFAULT_POLICY, 0.7)]
    table, verdicts = by_cohort(summarise(rows))
    assert verdicts["h"].met is None and table["h"][DIFF] == "n/a" and "permissive seed 0: rc 2: boom" in \
        table["h"]["failed runs"]
    assert "undecided" in summarise(rows).text


def test_skipped_cohort_and_wall_time():
    rows = pairs("a", [0.7, 0.7], [0.69, 0.69], wall=30.0) + [
        run("tcga-x", 0, PERMISSIVE, None, status="skipped"), run("tcga-x", 0, DEFAULT_POLICY, None, status="skipped")]
    s = summarise(rows)
    assert [r["cohort"] for r in s.table] == ["a"]
    assert s.table[0]["wall time per run"] == "permissive 10 s, default-policy 30 s"
    assert "skipped (no cohort folder): tcga-x" in s.text
    assert "| cohort | seeds | C-index permissive |" in s.text


def test_epsilon_spent_reads_the_last_figure_of_each_tier():
    m = {"history": [{"round": 1, "dp-epsilon": 1.2}, {"round": 2, "dp-epsilon": 6.0}, {"round": 3}],
         "two_tier": {"history": [{"round": 3, "dp-epsilon": 1.0}, {"round": 4, "dp-epsilon": 2.0}]}}
    assert epsilon_spent(m) == (6.0, 2.0)
    assert epsilon_spent({"history": [{"round": 1}]}) == (None, None)
    assert not math.isnan(epsilon_spent({"history": [{"dp-epsilon": float("nan")}, {"dp-epsilon": 3.0}]})[0])


def test_default_cohort_is_generated_by_the_first_run_and_read_by_the_second(tmp_path):
    assert _cohort_data(tmp_path, tmp_path / "nowhere", "default", 3, PERMISSIVE) == (None, True)
    assert _cohort_data(tmp_path, tmp_path / "nowhere", "default", 3, DEFAULT_POLICY) == (
        tmp_path / "default" / "seed-3" / PERMISSIVE / "cohort", True)
    assert _cohort_data(tmp_path, tmp_path / "nowhere", "tcga-kirp", 0, DEFAULT_POLICY) == (
        tmp_path / "nowhere" / "tcga-kirp", False)


def test_compare_pairs_two_bench_outputs_by_cohort_and_seed(tmp_path):
    import csv

    from rmmfed.simulations.compare_dp_cost import compare

    def write(folder, rows):
        folder.mkdir()
        with (folder / "dp_cost_raw.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["cohort", "seed", "policy", "status", "c_index"])
            w.writeheader()
            w.writerows(rows)

    def rows(dp):  # cohort x: seeds 0 and 1; cohort y: seed 0 failed under the default policy
        out = []
        for c, s, perm, d in (("x", 0, 0.70, dp[0]), ("x", 1, 0.72, dp[1]), ("y", 0, 0.60, None)):
            out.append({"cohort": c, "seed": s, "policy": "permissive", "status": "ok", "c_index": perm})
            out.append({"cohort": c, "seed": s, "policy": "default-policy", "status": "ok" if d else "failed",
                        "c_index": d or ""})
        return out

    write(tmp_path / "a", rows((0.60, 0.62)))
    write(tmp_path / "b", rows((0.66, 0.66)))
    text = compare(tmp_path / "a", tmp_path / "b", ("all", "linear"))
    x = next(line for line in text.splitlines() if line.startswith("| x "))
    assert "| 2 | 0.710 ± 0.014 | 0.610 ± 0.014 | 0.660 ± 0.000 | +0.050 (SE 0.010) | beyond noise | -0.050 |" in x
    assert "| y " not in text  # no paired default-policy run
    assert "mean linear − all over 1 cohort(s): +0.050; linear worse than all by more than 0.01: none" in text
