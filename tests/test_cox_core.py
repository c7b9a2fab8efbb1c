"""Tier 1's Cox core (core/survival/cox_core.py, server/cox_phase.py): the exact federated site-stratified ridge Cox
model, fitted through the sites' real ClientApps, against lifelines on the pooled design; the network
residual on top of it; and the policy that keeps its exact sums opt-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index

from rmmfed.client.client_app import make_client_app
from rmmfed.core.messages import protocol as P
from rmmfed.core.config import RunConfig
from rmmfed.core.survival.cox_core import CoxCore, keep_residual, with_cox
from rmmfed.core.site.site_cox import cox_design
from rmmfed.core.site.site_session import SiteSession
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.train import predict_risk
from rmmfed.core.model.weights import get_weights, set_weights
from rmmfed.server.federation import run_federation
from rmmfed.simulations.pooled import pooled_cox_core

from conftest import DIMS, write_site
from test_hostile_coordinator import Site
from rmmfed.simulations.in_process_grid import InProcessGrid
from test_phases_in_process import TINY

pytestmark = pytest.mark.usefixtures("single_thread", "task_identity")

ALL_PHASES = '["statistics", "cox", "tier1", "validation", "calibration", "baseline-hazard", "tier2", "risk-groups", "evaluation"]'
COX_POLICY = f"phases = {ALL_PHASES}\n[dp]\nrequired = false\nrelease-epsilon = 0\n"
NAMES = (("site-A", 1, 150), ("site-B", 2, 110), ("site-C", 3, 90))


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _sites(tmp_path: Path, policy: str | None) -> tuple[InProcessGrid, list[Path]]:
    policy_file = None
    if policy is not None:
        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(policy)
    sites, paths = {}, []
    for node, (name, seed, n) in enumerate(NAMES, start=1):
        path = write_site(tmp_path / name, name=name, n=n, seed=seed, absent_rate=0.3)
        paths.append(path)
        context = Context(run_id=1, node_id=node, node_config={"data-dir": str(path), "device": "cpu"},
                          state=RecordDict(), run_config={})
        sites[node] = (make_client_app(policy=policy_file, simulated_seeded_noise=True), context)
    return InProcessGrid(sites), paths


def _pooled_design(res, paths: list[Path], split: str) -> pd.DataFrame:
    """The design every site computes, pooled here (only a test may): one stratum per site."""
    frames = []
    for path in paths:
        s = SiteSession(path, device="cpu")
        s.bind_schema(dict(DIMS))
        s.setup(res.config, res.stats)
        t = s.split(split)
        x = cox_design(s.model(), t)
        frames.append(pd.DataFrame({**{f"x{j}": x[:, j] for j in range(x.shape[1])}, "T": t.time.numpy(),
                                    "E": t.event.numpy().astype(int), "site": s.data.site}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def cox_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cox")
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    grid, paths = _sites(tmp, COX_POLICY)
    cfg = RunConfig().with_overrides({**TINY, "rounds": 2, "tier2.rounds": 0, "dp.enabled": False})
    res = run_federation(grid, cfg, n_sites=len(NAMES), expected_dims=dict(DIMS))
    torch.set_num_threads(threads)
    return res, paths, grid


def test_the_federated_cox_core_equals_lifelines_stratified_cox_on_the_pooled_design(cox_run):
    res, paths, grid = cox_run
    assert res.config.model.cox_core and res.cox is not None
    assert res.participation["cox"] == ["site-A", "site-B", "site-C"]
    df = _pooled_design(res, paths, "train")
    coef = np.asarray(res.cox["coef"])
    cols = [c for c in df.columns if c.startswith("x")]
    varying = [c for c in cols if df[c].std() > 0]  # a column constant over the pooled patients is left out
    assert res.cox["columns_used"] == len(varying) < len(cols)  # toy modality "a" is present for everyone
    ref = CoxPHFitter(penalizer=res.cox["penalizer"]).fit(
        df[varying + ["T", "E", "site"]], "T", "E", strata=["site"],
        fit_options={"precision": 1e-12, "r_precision": 1e-15})
    idx = [cols.index(c) for c in varying]
    np.testing.assert_allclose(coef[idx], ref.params_[varying].to_numpy(), atol=1e-6, rtol=0)
    assert np.all(coef[[i for i in range(len(cols)) if i not in idx]] == 0)
    test = _pooled_design(res, paths, "test")
    ours = test[cols].to_numpy() @ coef
    theirs = ref.predict_log_partial_hazard(test[varying + ["site"]]).to_numpy()
    assert concordance_index(test["T"], -ours, test["E"]) == pytest.approx(
        concordance_index(test["T"], -theirs, test["E"]), abs=1e-12)
    # the penalty kept is the one with the best validation log partial likelihood on the path
    path = res.cox["path"]
    assert res.cox["penalizer"] == max(path, key=lambda p: p["val_loglik"])["penalizer"]
    assert res.cox["queries"] <= 4 * len(path) + 1  # a warm path: a few Newton rounds per penalizer
    assert grid.sent.count(P.COX.message_type) == res.cox["queries"] * len(NAMES)


def test_the_simulation_pooled_twin_fits_the_same_cox_core(cox_run):
    res, paths, _ = cox_run
    trains, vals, model = [], [], None
    for path in paths:
        s = SiteSession(path, device="cpu")
        s.bind_schema(dict(DIMS))
        s.setup(res.config, res.stats)
        model = s.model()
        trains.append(s.split("train"))
        vals.append(s.split("val"))
    core = pooled_cox_core(model, trains, vals, res.config.model.penalizers())
    np.testing.assert_allclose(core.coef, res.cox["coef"], atol=1e-9)
    assert core.penalizer == res.cox["penalizer"]
    assert core.val_pll_per_event == pytest.approx(res.cox["val_pll_per_event_cox"], abs=1e-9)


def test_tier1_sends_the_cox_coefficients_and_the_sites_never_train_them(cox_run):
    res, _, _ = cox_run
    np.testing.assert_allclose(res.weights["linear.weight"].ravel(), res.cox["coef"], rtol=1e-6, atol=1e-7)


def test_the_default_policy_refuses_the_cox_phase_and_the_run_trains_the_network_only_tier1(tmp_path):
    grid, _ = _sites(tmp_path, None)
    cfg = RunConfig().with_overrides({**TINY, "rounds": 1, "tier2.rounds": 0, "dp.enabled": True,
                                      "dp.time-cuts": "5,10,20"})
    assert cfg.model.cox_core
    res = run_federation(grid, cfg, n_sites=len(NAMES), expected_dims=dict(DIMS))
    assert not res.config.model.cox_core and res.cox is None
    assert P.COX.message_type not in grid.sent


def test_a_default_policy_site_refuses_exact_cox_sums_from_a_lying_coordinator(tmp_path):
    """Exact Cox sums at coefficients the coordinator picks would let it weight one patient into the
    gradient: the default policy refuses the phase before anything is computed."""
    site = Site(tmp_path)
    site.join()
    width = sum(DIMS.values()) + len(DIMS)
    coef = np.zeros(width)
    coef[0] = 50.0  # one feature's largest value dominates every risk set
    reason = site.refusal(site.send(P.COX, P.CoxRequest(coef, "train")))
    assert "[phases]" in reason
    assert site.last_ledger_line()["status"] == "refused"


def test_a_site_answers_at_most_max_cox_queries_per_run(tmp_path):
    site = Site(tmp_path, policy=f"phases = {ALL_PHASES}\nmax-cox-queries = 3\n[dp]\nrequired = false\n",
                **{"dp.enabled": False})
    site.join()
    width = sum(DIMS.values()) + len(DIMS)
    for i in range(3):
        reply = site.send(P.COX, P.CoxRequest(np.full(width, 0.01 * i), "train"))
        assert not reply.has_error(), reply.error.reason
        assert set(reply.content.array_records[P.COX_RECORD]) == {"grad", "hess", "sum", "sumsq"}
    assert "[max-cox-queries]" in site.refusal(site.send(P.COX, P.CoxRequest(np.zeros(width), "val")))


def test_a_validation_cox_reply_carries_only_its_likelihood(tmp_path):
    site = Site(tmp_path, policy=f"phases = {ALL_PHASES}\n[dp]\nrequired = false\n", **{"dp.enabled": False})
    site.join()
    reply = site.send(P.COX, P.CoxRequest(np.zeros(sum(DIMS.values()) + len(DIMS)), "val"))
    assert not reply.has_error(), reply.error.reason
    assert set(reply.content) == {P.METRICS}
    wrong = site.send(P.COX, P.CoxRequest(np.zeros(3), "train"))  # not one coefficient per design column
    assert wrong.has_error()


def _core(coef: np.ndarray, val_pll: float) -> CoxCore:
    p = coef.shape[0]
    return CoxCore(coef, 0.1, np.zeros(p), np.ones(p), np.ones(p, bool), val_pll * 10, 10, 100)


def test_when_the_network_adds_nothing_on_validation_tier1_is_the_cox_model(tier1_cfg, dims):
    cfg = tier1_cfg.model_copy(update={"cox_core": True})
    model = build_model(dims, cfg, seed=0)
    rng = np.random.default_rng(0)
    coef = rng.normal(0, 0.5, sum(dims.values()) + len(dims))
    trained = {k: (v + rng.normal(0, 0.1, v.shape).astype(v.dtype)) for k, v in
               with_cox(get_weights(model), _core(coef, -2.0)).items() if k != "linear.weight"}
    trained["linear.weight"] = coef.astype(np.float32)[None, :]
    history = [{"round": 1, "val-pll": -2.1}, {"round": 2, "val-pll": -2.05}]
    weights, doc = keep_residual(trained, history, 2, _core(coef, -2.0))
    assert doc["residual_kept"] is False
    set_weights(model, weights)
    write_dir = build_batch_site(dims)
    risk = predict_risk(model, write_dir)
    design = cox_design(model, write_dir)
    np.testing.assert_allclose(risk, design @ coef, atol=1e-5)
    kept, doc = keep_residual(trained, history, 2, _core(coef, -2.2))
    assert doc["residual_kept"] is True and kept is trained


def build_batch_site(dims):
    """A small SiteTensors batch (conftest's seeded bags), for the model-level check above."""
    from conftest import make_batch
    from rmmfed.core.data.tensors import SiteTensors
    xs, masks, present = make_batch(dims, 24, 5, seed=3)
    return SiteTensors(tuple(dims), tuple(xs), tuple(masks), tuple(torch.zeros(24, d) for d in dims.values()),
                       present, torch.arange(24, dtype=torch.float32) + 1, torch.ones(24), ("",) * 24)


def test_a_residual_gain_within_the_noise_margin_leaves_tier1_the_cox_model():
    coef = np.zeros(4)
    weights = {"head.0.weight": np.ones((2, 2), np.float32), "head.0.bias": np.ones(2, np.float32),
               "head.3.weight": np.ones((1, 2), np.float32), "head.3.bias": np.ones(1, np.float32),
               "linear.weight": coef[None, :].astype(np.float32)}
    history = [{"round": 4, "val-pll": -1.95}]  # 10 validation events: 0.5 nats above the Cox core's -2.0
    out, doc = keep_residual(weights, history, 4, _core(coef, -2.0), min_gain=2.0)
    assert doc["residual_kept"] is False and doc["val_gain_nats"] == pytest.approx(0.5)
    assert not out["head.3.weight"].any() and not out["head.3.bias"].any() and out["head.0.weight"].all()
    out, doc = keep_residual(weights, [{"round": 4, "val-pll": -1.7}], 4, _core(coef, -2.0), min_gain=2.0)
    assert doc["residual_kept"] is True and out is weights  # 3 nats: kept
    _, doc = keep_residual(weights, [{"round": 4}], 4, _core(coef, -2.0), min_gain=2.0)
    assert doc["residual_kept"] is True  # no validation in the run: nothing to judge by


def test_the_penalizer_path_is_a_list_and_one_number_is_a_list_of_one():
    assert RunConfig().model.penalizers() == (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)  # strongest first
    assert RunConfig.from_flat({"model.cox-penalizers": 0.1}).model.penalizers() == (0.1,)  # --set ...=0.1
    for bad in ("", "a,b", "-1", "inf"):
        with pytest.raises(Exception, match="cox-penalizers"):
            RunConfig.from_flat({"model.cox-penalizers": bad})
