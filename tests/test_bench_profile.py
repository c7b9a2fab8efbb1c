"""bench_profile: the sites' compute from their ledgers against the coordinator's wall time per phase."""

import json

import pytest

from rmmfed.simulations.bench_profile import ProfileError, format_profile, main, profile


def _line(site_time, mtype, group, seconds, nbytes=1000):
    return json.dumps({"time": site_time, "message_type": mtype, "group_id": group, "compute_s": seconds,
                       "total_bytes": nbytes, "status": "ok"})


def _run(tmp_path):
    run = tmp_path / "run"
    (run / "ledger").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"timing_s": {"handshake": 2.0, "tier1": 30.0, "federation": 40.0,
                                                               "total": 50.0}}))
    for site, (a, b) in {"site-A": (4.0, 6.0), "site-B": (2.0, 8.0)}.items():
        (run / "ledger" / f"{site}.jsonl").write_text("\n".join([
            _line("2026-01-01T00:00:00.000+00:00", "query.schema", "", 0.5),
            _line("2026-01-01T00:00:01.000+00:00", "query.followup", "", 0.25),
            _line("2026-01-01T00:00:02.000+00:00", "train", "", a),
            _line("2026-01-01T00:00:03.000+00:00", "train", "", b),
            _line("2026-01-01T00:00:04.000+00:00", "query.followup", "", 0.25)]) + "\n")
    return run


def test_the_profile_sums_the_sites_compute_and_the_slowest_site_per_round(tmp_path):
    p = profile(_run(tmp_path), cores=1)
    rows = {r["phase"]: r for r in p["rows"]}
    assert rows["tier1"]["sites_s"] == pytest.approx(20.0)  # 4 + 6 + 2 + 8
    assert rows["tier1"]["slowest_s"] == pytest.approx(12.0)  # max(4, 2) + max(6, 8)
    assert rows["tier1"]["bound_s"] == pytest.approx(20.0)  # one core: everything in turn
    assert rows["tier1"]["overhead_s"] == pytest.approx(10.0)
    assert rows["statistics"]["sites_s"] == pytest.approx(0.5)  # the follow-up asked before Tier 1
    assert rows["baseline_hazard"]["sites_s"] == pytest.approx(0.5)  # and the one after
    assert p["wall_over_sites"] == pytest.approx(40.0 / 22.0)
    assert p["by_tier"]["Tier 1 training"] == pytest.approx(20.0)
    assert profile(_run(tmp_path / "two"), cores=4)["rows"][1]["bound_s"] == pytest.approx(12.0)
    assert "federation wall / sum of the sites' compute: 1.82" in format_profile(p)


def test_a_run_without_compute_times_is_refused_with_the_fix(tmp_path, capsys):
    run = tmp_path / "old"
    (run / "ledger").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "ledger" / "site-A.jsonl").write_text(json.dumps({"time": "t", "message_type": "train"}) + "\n")
    with pytest.raises(ProfileError, match="compute_s"):
        profile(run, cores=2)
    assert main(["--run", str(run)]) == 2
    assert "Fix" in capsys.readouterr().err
