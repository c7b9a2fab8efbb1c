"""Every phase of the server (run_federation) against the sites' real ClientApps, in one process.

No Flower engine, no network: an in-process Grid (simulations/in_process_grid.py) hands each message
to the destination site's ClientApp (mods, policy, egress guard, ledger and all) and returns its reply. A message type, a
config key or a reply key that the two sides do not agree on fails here in seconds instead of in
the slow runs through the simulation engine or a SuperLink.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.core.messages import protocol as P
from rmmfed.client.client_app import make_client_app
from rmmfed.core.config import RunConfig
from rmmfed.core.privacy.site_policy import PHASES, phases_line
from rmmfed.server.federation import run_federation
from rmmfed.server.progress import Progress
from rmmfed.server import few_events
from rmmfed.server.outputs import build_metrics
from rmmfed.server.summary import summary_lines
from rmmfed.simulations.in_process_grid import InProcessGrid

from conftest import DIMS, WITH_VALIDATION, write_site

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"model.embed-dim": 8, "model.prompt-dim": 3, "model.attn-dim": 4, "model.hidden-dim": 16,
        "model.mc-samples": 4, "model.max-instances": 6, "model.anat-partitions": 2, "batch-size": 32,
        "rounds": 2, "tier2.rounds": 2, "tier2.hidden-dim": 16, "tier2.time-dim": 8, "tier2.samples": 2,
        "tier2.sample-steps": 3, "tier2.local-steps": 5, "hist-bins": 128, "hazard-points": 16,
        "round-timeout-s": 60.0,
        # DP noise from the run's seed (the sites below accept it): a test's outcome must not depend on
        # an OS-entropy draw; with 120-patient toy sites an unlucky draw can zero the whole noised
        # calibration histogram
        "dp.seeded-noise": True}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _grid(tmp_path: Path, policy: str | None = None) -> InProcessGrid:
    policy_file = None
    if policy is not None:
        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(policy)
    sites = {}
    for node, (name, seed) in enumerate((("site-A", 1), ("site-B", 2)), start=1):
        path = write_site(tmp_path / name, name=name, n=120, seed=seed, absent_rate=0.3)
        node_config = {"data-dir": str(path), "ledger": str(tmp_path / f"{name}.ledger.jsonl"), "device": "cpu"}
        context = Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={})
        sites[node] = (make_client_app(simulated_seeded_noise=True, policy=policy_file), context)
    return InProcessGrid(sites)


@pytest.fixture
def grid(tmp_path: Path) -> InProcessGrid:
    return _grid(tmp_path)


def test_every_phase_runs_against_the_real_client_apps_in_process(tmp_path, monkeypatch):
    # the default policy plus the opt-in phases (exact Cox core sums, per-round validation), so that every
    # handler is asked; the few-events line raised above these sites' 61-63 training events, so that the
    # coordinator's caution must travel into metrics.json
    monkeypatch.setattr(few_events, "MIN_TRAIN_EVENTS", 100)
    grid = _grid(tmp_path, phases_line(PHASES))
    cfg = RunConfig().with_overrides(TINY)
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))

    assert [s.site for s in res.handshake.accepted] == ["site-A", "site-B"]
    # every handler, each phase's own type; the gate's noised release only where no site validates (below)
    assert set(grid.sent) == {p.message_type for p in P.PHASES} - {P.TIER2_GATE.message_type}
    assert len(res.history) == 2 and all(h["sites"] == 2 and h["failed"] == 0 for h in res.history)
    assert res.tier2_weights is not None and len(res.tier2_history) == 2
    assert all("val-sums" in h and h["val-sites"] == 2 for h in res.tier2_history)  # Tier 2 validation answered
    assert res.fitted.gate_ is not None and res.tier2_round in (1, 2)
    assert np.isfinite(res.fitted.theta_) and res.fitted.baseline_hazard_ is not None
    assert set(res.per_site) == {"site-A", "site-B"}
    for m in res.per_site.values():
        assert m["n-test"] > 0 and "uncertainty-error-spearman" in m and "tier2-used" in m
    assert all(sites == ["site-A", "site-B"] for sites in res.participation.values()), res.participation
    doc = build_metrics(res)  # metrics.json: the Cox core beside Tier 1, and Tier 1's survival figures
    few = few_events.few_events_warning(res.config.dp.enabled, res.handshake.accepted)
    assert few is not None and doc["cautions"] == [few]  # the coordinator's caution reaches metrics.json
    assert doc["cox_core"]["penalizer"] in res.config.model.penalizers() and "c_index_combined_pairs" in doc["cox_core"]
    assert 0 < doc["survival"]["ibs"] < 1 and len(doc["survival"]["td_auc"]["auc"]) == 3
    assert sum(g["n"] for g in doc["survival"]["calibration"]["groups"]) == doc["survival"]["n_patients"]
    # each tier's conformal q-hat from the summed score histograms, and what evaluation measured with it
    assert set(res.conformal) == {"tier1", "tier2"} and res.conformal["tier1"]["n_scores"] > 0
    assert res.thresholds and res.thresholds[-1] == float("inf") and len(res.fitted.cutpoints_) == 2
    assert np.isnan(res.fitted.gate_.width_tier1) and np.isnan(res.conformal["tier1"]["val_width"])  # noised: no SD sums
    assert doc["risk_uncertainty"]["routing_score"] == "risk-sd" and "spearman_change" in doc["risk_uncertainty"]
    if np.isfinite(res.conformal["tier1"]["q_hat"]):
        assert 0 <= doc["conformal"]["tier1"]["coverage"] <= 1 and doc["conformal"]["tier1"]["n_rows"] > 0
    assert doc["risk_coverage"]["points"][-1]["referral_rate"] == 0.0  # no threshold: every test patient kept
    assert "capture_ratio" in doc["value_of_information"]
    text = "\n".join(summary_lines(doc, tmp_path))
    assert "Tier 1 survival:" in text and "Tier 1's Cox core:" in text
    paths = {str(ctx.node_config["data-dir"]) for _, ctx in grid.sites.values()}
    assert not [k for _, (app, _) in grid.sites.items() for k in app.rmm_sessions.keys() if k[1] in paths]  # released


def test_a_new_run_at_a_site_releases_the_session_of_the_previous_one(tmp_path):
    path = write_site(tmp_path / "site-A", name="site-A", n=40, seed=3)
    app = make_client_app()
    for run_id in (11, 12):
        context = Context(run_id=run_id, node_id=1, node_config={"data-dir": str(path), "device": "cpu"},
                          state=RecordDict(), run_config={})
        reply = app(Message(RecordDict(), dst_node_id=1, message_type="query.schema"), context)
        assert not reply.has_error()
    assert [k[0] for k in app.rmm_sessions.keys() if k[1] == str(path)] == [12]


def test_a_dp_sgd_run_sends_only_what_the_protocol_lists(grid):
    """DP-SGD rounds reply with extra metrics (epsilon, delta, noise): the egress guard must know them."""
    cfg = RunConfig().with_overrides({**TINY, "rounds": 1, "tier2.rounds": 0, "dp.enabled": True,
                                      "dp.target-epsilon": 8.0, "dp.time-cuts": "5,10,20"})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    assert res.history[0]["sites"] == 2 and res.history[0]["failed"] == 0
    assert 0 < res.history[0]["dp-epsilon"] <= 8.0 + 1e-6


def test_a_run_without_dp_sgd_asks_noised_histograms_coarse_then_zoomed(tmp_path):
    """Sites that noise their releases (the default dp.release-epsilon) under a policy that lets training go
    without DP-SGD: the handshake says so, and calibration asks a coarse grid, then a zoom (two grids of
    at most 34 bins, never the run's 128-bin grid of noisy counts, whose summed noise can swamp a small set)."""
    policy = tmp_path / "policy.toml"
    policy.write_text("[dp]\nrequired = false\nallow-seeded-noise = true\n")
    sites = {}
    for node, (name, seed) in enumerate((("site-A", 1), ("site-B", 2)), start=1):
        path = write_site(tmp_path / name, name=name, n=120, seed=seed, absent_rate=0.3)
        context = Context(run_id=1, node_id=node, node_config={"data-dir": str(path), "device": "cpu"},
                          state=RecordDict(), run_config={})
        sites[node] = (make_client_app(policy=policy), context)
    grid = RecordingGrid(sites)
    cfg = RunConfig().with_overrides({**TINY, "rounds": 1, "tier2.rounds": 0, "dp.enabled": False})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    calibration_bins = [n for t, n in grid.bins if t == P.CALIBRATION.message_type]
    assert len(calibration_bins) == 2 * 2 and max(calibration_bins) <= 34, calibration_bins  # 2 grids x 2 sites
    assert np.isfinite(res.fitted.theta_)


class RecordingGrid(InProcessGrid):
    """The in-process grid, also noting each histogram request's number of bins."""

    def __init__(self, sites) -> None:
        super().__init__(sites)
        self.bins: list[tuple[str, int]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:
            conf = msg.content.config_records.get(P.CONFIG)
            if conf is not None and "hist-bins" in conf:
                self.bins.append((msg.metadata.message_type, int(conf["hist-bins"])))
        return super().send_and_receive(messages, timeout=timeout)


def test_under_the_default_policy_no_round_is_validated_and_each_tier_keeps_its_last_round(tmp_path):
    """Per-round validation is exact, so a lying coordinator could bisect it over rounds with crafted weights:
    it is opt-in. Under the default policy the coordinator asks no validation, training replies carry none,
    Tier 1 keeps its last round, and Tier 2's gate reads one noised release per site instead."""
    grid = _grid(tmp_path)  # no policy file: the defaults
    said: list[str] = []
    cfg = RunConfig().with_overrides({**TINY, "rounds": 3})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS), progress=_Said(said))
    assert not {P.TIER1_VALIDATION.message_type, P.TIER2_VALIDATION.message_type} & set(grid.sent)
    assert res.best_round == 3 and res.tier2_round == 2
    assert all("val-c-index" not in h and "val-pairs" not in h for h in res.history + res.tier2_history)
    assert grid.sent.count(P.TIER2_GATE.message_type) == 2  # once per site
    assert "noised federated validation" in res.fitted.gate_.reason
    assert any(line.startswith("validation: off") for line in said), said


def test_a_site_that_opts_into_validation_gets_its_rounds_scored_and_the_best_kept(tmp_path):
    grid = _grid(tmp_path, WITH_VALIDATION)
    cfg = RunConfig().with_overrides({**TINY, "rounds": 3})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    assert P.TIER1_VALIDATION.message_type in grid.sent and P.TIER2_VALIDATION.message_type in grid.sent
    assert all("val-c-index" in h for h in res.history)
    assert "on federated validation" in res.fitted.gate_.reason  # decided on the exact validation sums
    assert P.TIER2_GATE.message_type not in grid.sent


def test_a_site_past_its_lifetime_evaluations_is_left_out_and_the_run_reports_the_others(tmp_path):
    """The test evaluation is exact, so each site answers at most max-evaluations of them in its life. A site
    that has used them trains with the others and refuses only the evaluation; the run reports the sites that
    answered, and the figures of the combined sections come from them."""
    from rmmfed.core.privacy.privacy_budget import PrivacyBudget

    grid = _grid(tmp_path, "max-evaluations = 1\n")
    _, ctx_b = grid.sites[2]
    ctx_b.node_config["state-dir"] = str(tmp_path / "state-B")  # each hospital has its own budget file
    PrivacyBudget(tmp_path / "state-B", 50.0).count_evaluation("an earlier run", 1)
    cfg = RunConfig().with_overrides({**TINY, "tier2.rounds": 0})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    assert res.history[-1]["sites"] == 2  # site-B trained
    assert set(res.per_site) == {"site-A"} and res.participation["evaluation"] == ["site-A"]
    doc = build_metrics(res)
    assert set(doc["federated"]["per_site"]) == {"site-A"} and doc["participation"]["evaluation"] == ["site-A"]
    assert doc["federated"]["c_index_combined_pairs"] == pytest.approx(res.per_site["site-A"]["c-index"])
    assert summary_lines(doc, tmp_path)


def test_a_run_whose_every_site_has_used_its_evaluations_still_ends_with_its_model(tmp_path):
    """No site answers the evaluation: the run keeps what it trained and fitted, and its metrics say that no
    test figure came back (NaN, no per-site rows) instead of failing after the training it paid for."""
    from rmmfed.core.privacy.privacy_budget import PrivacyBudget

    grid = _grid(tmp_path, "max-evaluations = 1\n")
    for node, state in ((1, "state-A"), (2, "state-B")):
        grid.sites[node][1].node_config["state-dir"] = str(tmp_path / state)
        PrivacyBudget(tmp_path / state, 50.0).count_evaluation("an earlier run", 1)
    cfg = RunConfig().with_overrides({**TINY, "tier2.rounds": 0})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    assert res.per_site == {} and res.participation["evaluation"] == [] and np.isfinite(res.fitted.theta_)
    doc = build_metrics(res)
    assert doc["federated"]["per_site"] == {} and doc["federated"]["c_index_combined_pairs"] is None  # NaN in JSON
    assert summary_lines(doc, tmp_path)
    from rmmfed.server.run_outputs import RunOutputs

    out = RunOutputs(tmp_path / "out", res)  # the whole output folder, as the ServerApp writes it
    out.write()
    out.finish()
    assert {"model.pt", "metrics.json", "report.md"} <= {f.name for f in (tmp_path / "out").iterdir()}


class _Said(Progress):
    """A Progress that keeps the phase lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def phase(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.parametrize("policy, spacing", [("[dp]\nrequired = false\nrelease-epsilon = 0\n", "quantile"),
                                             (None, "uniform")])
def test_the_breslow_grid_sits_at_the_follow_up_quantiles_for_exact_sums_and_evenly_for_noised_ones(
        tmp_path, policy, spacing):
    """Exact Breslow sums come merged to the floor, and the server spreads a group back over its intervals:
    at the follow-up quantiles each interval holds about as many leavers. Noised sums (the default policy)
    are not merged and keep the even grid, where their few steps cover the whole follow-up."""
    grid = _grid(tmp_path, policy)
    over = {**TINY, "rounds": 1, "tier2.rounds": 0, **({"dp.enabled": False} if policy else {})}
    res = run_federation(grid, RunConfig().with_overrides(over), n_sites=2, expected_dims=dict(DIMS))
    doc = build_metrics(res)
    assert doc["privacy_floor"]["baseline_hazard"]["grid_spacing"] == spacing
    times = np.asarray(res.fitted.baseline_hazard_.times)
    steps = np.diff(np.concatenate([[0.0], times]))
    even = np.allclose(steps, steps[0], rtol=1e-9)
    assert even == (spacing == "uniform"), steps
    assert times[-1] == pytest.approx(doc["privacy_floor"]["hazard_max_time"]["estimate"])


def test_exact_breslow_sums_centred_at_the_risk_groups_give_the_same_baseline_as_uncentred_ones(tmp_path):
    """The sites send sums of exp(risk - centre); the server multiplies the cumulative hazard by
    exp(-centre), so where nothing is clipped (exact sums) the centre changes nothing."""
    policy = "[dp]\nrequired = false\nrelease-epsilon = 0\n"
    out = {}
    for center in ("zero", "risk-groups"):
        (tmp_path / center).mkdir()
        grid = _grid(tmp_path / center, policy)
        over = {**TINY, "rounds": 1, "tier2.rounds": 0, "dp.enabled": False, "hazard-center": center}
        res = run_federation(grid, RunConfig().with_overrides(over), n_sites=2, expected_dims=dict(DIMS))
        out[center] = (res, build_metrics(res))
    (zero, zdoc), (mid, mdoc) = out["zero"], out["risk-groups"]
    assert zdoc["privacy_floor"]["baseline_hazard"]["risk_center"] == 0.0
    center = mdoc["privacy_floor"]["baseline_hazard"]["risk_center"]
    assert center == pytest.approx(float(np.mean(mid.fitted.cutpoints_))) and center != 0.0
    h0, h1 = zero.fitted.baseline_hazard_, mid.fitted.baseline_hazard_
    assert np.array_equal(h0.times, h1.times)
    assert np.allclose(h0.cumhaz, h1.cumhaz, rtol=1e-5, atol=1e-9)


def test_under_the_default_policy_average_last_keeps_the_mean_of_the_last_rounds_weights(tmp_path, monkeypatch):
    """Tail averaging is the coordinator's post-processing of the DP-SGD iterates it already holds: the
    kept (and frozen) Tier 1 is the mean of the last K rounds' aggregates, and the sites are asked nothing more."""
    from rmmfed.server import tail_average

    seen: dict[int, dict] = {}
    add = tail_average.TailAverage.add

    def spy(self, rnd, weights):
        seen[rnd] = {k: np.array(v, copy=True) for k, v in weights.items()}
        add(self, rnd, weights)

    monkeypatch.setattr(tail_average.TailAverage, "add", spy)
    said: list[str] = []
    cfg = RunConfig().with_overrides({**TINY, "rounds": 3, "tier2.rounds": 0, "average-last": 2})
    grid = _grid(tmp_path)
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS), progress=_Said(said))
    assert sorted(seen) == [1, 2, 3] and res.best_round == 3  # every round offered, rounds 2-3 averaged
    for k, v in res.weights.items():
        if np.issubdtype(v.dtype, np.floating):
            np.testing.assert_allclose(v, (seen[2][k].astype(np.float64) + seen[3][k]) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(v, seen[3][k]) for k, v in res.weights.items())  # not simply the last round
    assert any("mean of rounds 2-3" in line for line in said), said
    assert not {P.TIER1_VALIDATION.message_type, P.TIER2_VALIDATION.message_type} & set(grid.sent)
