"""One simulated study: Flower simulation engine run + simulation-only references + outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..client.client_app import make_client_app, site_dir
from ..core.concordance import c_index
from ..core.config import RunConfig
from ..core.site_data import SiteData
from ..core.site_session import SiteSession
from ..server.federation import FederationResult
from ..server.outputs import build_metrics, render_report, write_outputs
from ..server.server_app import make_server_app
from .faults import fault_mod
from .pooled import oracle_c_index, train_pooled_reference


def run_flower(cfg: RunConfig, paths: list[Path], out: Path, resume: bool = False,
               fault: tuple[str, str] | None = None, policy: Path | None = None) -> FederationResult:
    """Run the ServerApp and one ClientApp per site on Flower's simulation engine (in-process)."""
    from flwr.simulation import run_simulation

    holder: list[FederationResult] = []
    sites = [str(p) for p in paths]
    mods = [fault_mod(fault[0], fault[1], lambda ctx: site_dir(ctx, sites))] if fault else []
    gpus = 1.0 / len(paths) if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else 0.0
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus},
               "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}}
    run_simulation(server_app=make_server_app(cfg, n_sites=len(paths), sink=holder.append, out_dir=str(out),
                                              resume=resume),
                   client_app=make_client_app(sites, ledger_dir=str(out / "ledger"), extra_mods=mods,
                                              policy=str(policy.resolve()) if policy else None),
                   num_supernodes=len(paths), backend_config=backend)
    if not holder:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return holder[0]


def run_study(cfg: RunConfig, cohort: Path, paths: list[Path], sites: list[SiteData], dims: dict[str, int],
              out: Path, *, pooled: bool = True, t0: float | None = None, resume: bool = False,
              fault: tuple[str, str] | None = None, policy: Path | None = None) -> dict:
    t0 = time.perf_counter() if t0 is None else t0
    res = run_flower(cfg, paths, out, resume, fault, policy)
    t_fed = time.perf_counter()

    # Simulation-only: the federated model's pooled test C-index and the exact calibration percentile.
    risks, times, events, ids, calib = [], [], [], [], []
    for p in paths:
        s = SiteSession(p, device=cfg.device)
        s.bind_schema(res.handshake.dims)
        s.setup(cfg, res.stats)
        r, t, e, pid = s.test_predictions(res.weights)
        risks.append(r), times.append(t), events.append(e), ids.append(pid)
        calib.append(s.calibration_values(res.weights))
    time_all, event_all = np.concatenate(times), np.concatenate(events)
    extra: dict = {"federated_pooled_c_index": c_index(time_all, np.concatenate(risks), event_all),
                   "theta_exact_pooled": float(np.percentile(np.concatenate(calib), 100 * cfg.quantile))}
    oracle = oracle_c_index(cohort / "truth.csv", [Path(p).name for p in paths], ids,
                            time_all, event_all)
    if oracle is not None:
        extra["oracle"] = {"c_index": oracle, "note": "true risk from the generator's truth file"}
    t_pool = time.perf_counter()
    if pooled:
        print("[rmm] training the pooled reference (simulation only) ...")
        extra["pooled_reference"] = train_pooled_reference(sites, dims, cfg)
    extra["timing_s"] = {"federation": t_fed - t0, "pooled_reference": time.perf_counter() - t_pool,
                         "total": time.perf_counter() - t0}
    metrics = build_metrics(res, extra)
    write_outputs(out, res, extra, report=render_report(metrics))
    return metrics
