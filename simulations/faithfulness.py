"""Faithfulness of the per-modality attributions (a check, not a test; prints a table).

    python -m rmmfed.simulations.faithfulness --model RUN_DIR_OR_BUNDLE --data COHORT_OR_SITE [--split test]

For every patient of the split with >= 2 present modalities: integrated-gradients attributions of
Tier 1's risk (:mod:`rmmfed.core.model.attribution`), then Tier 1's risk again with ONE modality masked
(marked unobserved, so Tier 1 recovers it with its estimator as for a truly missing modality):

* the most-attributed modality (largest |attribution|),
* the least-attributed modality (smallest |attribution|),
* a random present modality (seeded; a reference level).

Reported per site and over all sites: mean |change in risk| for each, and the fraction of
patients where masking the most-attributed modality changes the risk more than masking the
least-attributed one. Faithful attributions give most > least for most patients. Also the mean
|IG completeness gap| (quadrature error) as a sanity figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..core.model.attribution import integrated_gradients, masked_risk
from ..core.outputs.bundle import ModelBundle, load_model
from ..core.data.site_data import PATIENTS_CSV, discover_sites
from ..core.site.site_seed import site_seed
from ..core.data.tensors import build_tensors
from ..client.predict import load_site_for


def site_folders(path: str | Path) -> list[Path]:
    """A single site folder (has patients.csv) or every site of a cohort folder."""
    p = Path(path)
    return [p] if (p / PATIENTS_CSV).is_file() else discover_sites(p)


def site_faithfulness(bundle: ModelBundle, site_dir: Path, *, split: str = "test", steps: int = 32,
                      seed: int = 0, tier1=None) -> dict[str, np.ndarray]:
    """Per eligible patient: |delta risk| when masking the most / least / a random attributed modality."""
    cfg = bundle.run_config
    tier1 = tier1 if tier1 is not None else bundle.build_tier1()
    site = load_site_for(bundle, site_dir)
    data = build_tensors(site, bundle.stats(), seed=site_seed(cfg.seed, site.site))
    idx = site.indices(split) if split != "all" else np.arange(len(site))
    sub = data.subset(idx)
    keep = np.flatnonzero(sub.present.sum(dim=1).cpu().numpy() >= 2)
    empty = {k: np.zeros(0) for k in ("most", "least", "random", "gap")}
    if len(keep) == 0:
        return empty
    sub = sub.subset(keep)
    att = integrated_gradients(tier1, list(sub.x), list(sub.inst_mask), sub.present, steps=steps)
    pres = att.present
    mag = np.where(pres, np.abs(att.values), np.nan)
    most = np.nanargmax(mag, axis=1)
    least = np.nanargmin(mag, axis=1)
    rng = np.random.default_rng(seed)
    rand = np.array([rng.choice(np.flatnonzero(row)) for row in pres])
    base = att.risk
    out = {"gap": np.abs(att.completeness_gap)}
    for name, which in (("most", most), ("least", least), ("random", rand)):
        obs = sub.present.clone()
        obs[torch.arange(len(sub)), torch.as_tensor(which)] = False
        out[name] = np.abs(masked_risk(tier1, sub, obs) - base)
    return out


def summarise(res: dict[str, np.ndarray]) -> dict[str, float]:
    n = len(res["most"])
    if n == 0:
        return {"n": 0}
    return {"n": n, "mean_abs_change_most": float(res["most"].mean()),
            "mean_abs_change_least": float(res["least"].mean()),
            "mean_abs_change_random": float(res["random"].mean()),
            "fraction_most_gt_least": float((res["most"] > res["least"]).mean()),
            "mean_abs_completeness_gap": float(res["gap"].mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="finished run folder or bundle file")
    p.add_argument("--data", type=Path, help="cohort or site folder (default: RUN/cohort)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    tier1 = bundle.build_tier1()
    data = args.data or args.model / "cohort"
    per_site, parts = {}, []
    for s in site_folders(data):
        r = site_faithfulness(bundle, s, split=args.split, steps=args.steps, seed=args.seed, tier1=tier1)
        per_site[s.name] = summarise(r)
        parts.append(r)
    pooled = summarise({k: np.concatenate([r[k] for r in parts]) for k in parts[0]}) if parts else {"n": 0}
    doc = {"split": args.split, "steps": args.steps, "per_site": per_site, "all": pooled}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Faithfulness of IG modality attributions ({args.split} patients with >= 2 present modalities; "
          "mask one modality, |change in Tier 1 risk|)")
    head = f"{'site':<10} {'n':>5} {'most':>8} {'least':>8} {'random':>8} {'most>least':>11} {'|IG gap|':>9}"
    print(head)
    print("-" * len(head))
    for name, v in [*per_site.items(), ("all", pooled)]:
        if v["n"] == 0:
            print(f"{name:<10} {0:>5}")
            continue
        print(f"{name:<10} {v['n']:>5} {v['mean_abs_change_most']:>8.3f} {v['mean_abs_change_least']:>8.3f} "
              f"{v['mean_abs_change_random']:>8.3f} {v['fraction_most_gt_least']:>11.2f} "
              f"{v['mean_abs_completeness_gap']:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
