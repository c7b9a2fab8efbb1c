"""How much of the risk change a score could know: the risk SD against a per-pattern oracle.

    python -m rmmfed.simulations.evidence.risk_sd_ceiling --run runs/risk-routing/default/seed-0 [--data DIR]

On the masked complete test cases of a finished run (every complete test case of every site under every
masking pattern; simulation only: the rows are pooled here), prints Spearman's rho of |risk hidden - risk
seen| with:

* the run's risk SD (core/routing/risk_interval.tier1_risk_draws, what routing reads), pooled and within each
  masking pattern;
* an in-sample oracle that knows each pattern's mean |change| exactly and nothing about the patient:
  the best any score can do when all it knows is which modalities are hidden (optimistic: fitted on the
  very rows it is scored on).

Within-pattern rho near 0 means the draws' spread carries no per-patient information (f_phi's error is
about as large for every patient), and the pooled rho is then bounded by the oracle's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from ...core.outputs.bundle import load_model
from ...core.routing.risk_interval import tier1_risk_draws
from ...core.data.site_data import discover_sites, load_site
from ...core.site.site_seed import site_seed
from ...core.data.tensors import build_tensors
from ...core.model.train import predict_risk
from ...core.routing.uncertainty import complete_case_indices, masking_patterns


def rows(run: Path, data: Path) -> dict[str, np.ndarray]:
    bundle = load_model(run)
    cfg, tier1 = bundle.run_config, bundle.build_tier1()
    out: dict[str, list] = {"sd": [], "gap": [], "pattern": []}
    for path in discover_sites(data):
        site = load_site(path, expected=dict(bundle.modalities))
        tensors = build_tensors(site, bundle.stats(), seed=site_seed(cfg.seed, site.site))
        test = tensors.subset(site.indices("test"))
        sub = test.subset(complete_case_indices(test))
        if len(sub) == 0:
            continue
        seen = predict_risk(tier1, sub)
        for p_i, pattern in enumerate(masking_patterns(len(bundle.modalities))):
            obs = torch.tensor(pattern).expand(len(sub), -1)
            out["gap"].append(np.abs(predict_risk(tier1, sub, obs) - seen))
            out["sd"].append(tier1_risk_draws(tier1, sub, seed=cfg.seed + p_i, observed=obs).std(axis=1))
            out["pattern"].append(np.full(len(sub), p_i))
    return {k: np.concatenate(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a finished run folder (model.pt)")
    p.add_argument("--data", type=Path, help="its cohort folder (default: RUN/cohort, else the evidence's cohorts)")
    args = p.parse_args(argv)
    data = args.data or args.run / "cohort"
    r = rows(args.run, data)
    oracle = np.zeros_like(r["gap"])
    within = {}
    for p_i in np.unique(r["pattern"]):
        m = r["pattern"] == p_i
        oracle[m] = r["gap"][m].mean()
        within[int(p_i)] = float(spearmanr(r["sd"][m], r["gap"][m])[0])
    print(json.dumps({"rows": int(len(r["gap"])),
                      "spearman_risk_sd": float(spearmanr(r["sd"], r["gap"])[0]),
                      "spearman_pattern_oracle": float(spearmanr(oracle, r["gap"])[0]),
                      "spearman_risk_sd_within_pattern": within}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
