"""``rmm-predict``: per-patient risk with uncertainty, route and modality attributions. Offline.

    rmm-predict --model BUNDLE_OR_RUN_DIR --data SITE_DIR [--patient ID ...] [--horizons 12,36,60]
                [--json-only | --table] [--out FILE.jsonl] [--top-k 3] [--seed 0] [--steps 32]
    rmm-predict --model RUN_DIR --save-bundle model.rmm      # export one portable file (no --data needed)

The site folder is validated with ``load_site`` against the model's modality schema; a bad folder
(or an unusable model) prints ONE error naming the file/field and the fix, and exits 2. Nothing is
sent anywhere: no network, no Flower.

Every patient of the site is predicted (so a patient's output does not depend on which others were
asked for: MC dropout and Tier 2 sampling are seeded per batch; attributions agree up to float32
rounding), then the requested ones are written:
one JSON object per line on stdout (or ``--out``), and a readable table on stderr (on stdout with
``--table``; none with ``--json-only``).

JSON keys (``null`` where not applicable):

* ``patient_id``, ``site``, ``context``
* ``route`` (tier1 | tier2 | abstain), ``route_reason`` and ``route_flags``: ``high-risk-context`` (a
  declared high-risk context: referred when something is missing, kept with Tier 1 when nothing is),
  ``tier2-not-used`` (referred, but the run's gate found that Tier 2 did not beat Tier 1 on federated
  masked validation, so the risk is Tier 1's; rmm-predict says so once on stderr)
* ``risk``: the system risk on the common scale (z-score of the answering head's training risk,
  :class:`~rmmfed.core.routing.two_tier.RiskScale`); ``null`` when abstained. ``tier1_risk`` (raw log-hazard),
  ``tier2_risk`` (raw, referred patients only)
* ``risk_interval`` [low, high] on the same scale and ``risk_interval_basis``: the central 95% of the
  answering tier's risks across its own draws of the missing features (Tier 1's MC-dropout estimates
  plus its predicted variance, or Tier 2's diffusion draws; zero width when nothing is missing; for a referred patient whose risk
  the gate kept with Tier 1, the hull of both, i.e. wider), :mod:`rmmfed.core.routing.risk_interval`. It
  covers missing-modality uncertainty only; ``null`` when abstained
* ``risk_group``: low | intermediate | high by tertiles of the TRAINING system risk when the bundle
  carries them (``risk_cutpoints``: a run computes them from the sites' histograms,
  :mod:`rmmfed.core.survival.risk_groups`), otherwise of this site's own non-abstained patients (all splits);
  ``risk_group_basis`` says which
* ``risk_conformal_interval`` [low, high] and ``risk_conformal_coverage``: where the risk would lie once the
  missing exams are done, mean +- q-hat x SD of the answering tier's risk draws, with the run's federated
  split-conformal q-hat (:mod:`rmmfed.core.routing.conformal`: marginal coverage 1 - alpha over patients with
  modalities missing); ``null`` when nothing is missing, when abstained, or when the bundle has no finite
  q-hat for that tier
* ``which_exam``: per missing modality, ranked, the expected |change in risk| (system scale) if that exam
  were done and the probability that the risk group would change (:mod:`rmmfed.core.routing.value_of_information`)
* ``sigma2`` (Tier 1 uncertainty), ``theta`` (compared with the bundle's routing score: the risk SD or sigma2); ``tier2_uncertainty`` and ``abstain_bound`` when referred
* ``modalities_present``, ``modalities_missing``, ``modalities_recovered`` and ``recovered_by``
  (Tier 1's estimator, or Tier 2's diffusion recovery when routed there)
* ``survival``: ``median`` (first grid time with S <= 0.5, null when not reached) and ``at``
  {horizon: S(horizon)} from the bundle's Breslow baseline hazard, evaluated at the system risk mapped
  to Tier 1's log-hazard scale (tier1_mean + tier1_std * risk); without a baseline: ``available`` false
  and the note 'no baseline hazard in this bundle'
* ``attributions`` {modality: IG attribution of Tier 1's risk} (0 for missing modalities),
  ``attribution_baseline_risk`` (Tier 1's risk with every modality absent; attributions sum to
  tier1_risk minus it), ``top_instances`` {modality: [{"index": file row, "weight": attention}]}
  (present modalities, largest weight first). Attributions explain TIER 1's risk, also for a patient
  answered by Tier 2; abstained patients get none.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.model.attribution import bag_row_indices, integrated_gradients, top_instances
from ..core.survival.baseline_hazard import median_survival, survival_at
from ..core.outputs.bundle import ModelBundle, check_site_schema, load_model, save_bundle
from ..core.errors import RmmError
from ..core.routing.routing import ABSTAIN, TIER2
from ..core.data.site_data import SiteData, load_site
from ..core.site.site_seed import site_seed
from ..core.data.tensors import build_tensors
from ..core.routing.two_tier import predict_two_tier
from ..core.routing.value_of_information import exam_values

EXIT_OK, EXIT_BAD_INPUT = 0, 2
NO_BASELINE = "no baseline hazard in this bundle"
GROUPS = ("low", "intermediate", "high")
RECORD_KEYS = ("patient_id", "site", "context", "route", "route_reason", "route_flags", "risk", "risk_interval",
               "risk_interval_basis", "risk_conformal_interval", "risk_conformal_coverage", "which_exam",
               "risk_group", "risk_group_basis",
               "tier1_risk", "tier2_risk", "sigma2", "theta", "tier2_uncertainty", "abstain_bound",
               "modalities_present", "modalities_missing", "modalities_recovered", "recovered_by", "survival",
               "attributions", "attribution_baseline_risk", "top_instances")


class PredictError(RmmError):
    """A command-line value is unusable (unknown patient, bad horizons); the message says the fix."""


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def conform_site(bundle: ModelBundle, site: SiteData) -> SiteData:
    """The site with exactly the model's modalities (after :func:`check_site_schema`)."""
    check_site_schema(bundle, site.modalities)
    n = len(site.patient_ids)
    return replace(site, modalities=dict(bundle.modalities),
                   bags={m: site.bags.get(m, [None] * n) for m in bundle.modalities})


def load_site_for(bundle: ModelBundle, path: str | Path) -> SiteData:
    """Validate a site folder (SiteDataError on bad files) and its schema against the model."""
    p = Path(path)
    if p.is_dir() and not (p / "patients.csv").is_file():
        sites = sorted(c.name for c in p.iterdir() if (c / "patients.csv").is_file())
        if sites:
            raise PredictError(f"{p} is a cohort folder (sites {', '.join(sites)}), not a site folder. Fix: pass one "
                               f"site, e.g. --data {p / sites[0]}")
    return conform_site(bundle, load_site(p))


def predict_site(bundle: ModelBundle, site: SiteData, *, patient_ids: Sequence[str] | None = None,
                 horizons: Sequence[float] = (12.0, 36.0, 60.0), top_k: int = 3, seed: int = 0, steps: int = 32,
                 tier1=None, tier2=None) -> list[dict[str, Any]]:
    """One record per requested patient (all patients when ``patient_ids`` is None), in request order."""
    cfg = bundle.run_config
    tier1 = tier1 if tier1 is not None else bundle.build_tier1()
    tier2 = tier2 if tier2 is not None else bundle.build_tier2()
    site = conform_site(bundle, site) if list(site.modalities) != list(bundle.modalities) else site
    mods = tuple(bundle.modalities)
    tseed = site_seed(cfg.seed, site.site)  # the bag subsample the site used in training/evaluation
    data = build_tensors(site, bundle.stats(), seed=tseed)
    rows = bag_row_indices(site, mods, seed=tseed)
    if patient_ids is None:
        sel = np.arange(len(site.patient_ids))
    else:
        index = {p: i for i, p in enumerate(site.patient_ids)}
        unknown = [p for p in patient_ids if p not in index]
        if unknown:
            raise PredictError(f"patient(s) {', '.join(map(repr, unknown))} not in {site.root / 'patients.csv'}. "
                               "Fix: pass patient_id values exactly as written in patients.csv")
        sel = np.array([index[p] for p in patient_ids], dtype=np.int64)

    fitted = bundle.fitted
    pred = predict_two_tier(tier1, tier2, data, cfg, fitted=fitted, seed=seed, with_interval=True)
    names = pred.route_names
    system = pred.system_risk
    if fitted.cutpoints_ is not None:
        cuts, basis = np.asarray(fitted.cutpoints_, dtype=np.float64), "training tertiles"
    else:
        finite = system[np.isfinite(system)]
        cuts = np.quantile(finite, [1 / 3, 2 / 3]) if len(finite) >= 3 else None
        basis = f"site tertiles ({site.site}, {len(finite)} patients not abstained)"

    explain = np.array([i for i in sel if names[i] != ABSTAIN], dtype=np.int64)
    attr_of: dict[int, int] = {}
    att = None
    if len(explain):
        sub = data.subset(explain)
        att = integrated_gradients(tier1, list(sub.x), list(sub.inst_mask), sub.present, steps=steps)
        attr_of = {int(i): r for r, i in enumerate(explain)}

    hz = fitted.baseline_hazard_
    scale = fitted.risk_scale_
    present = data.present.cpu().numpy()
    exams = exam_values(tier1, data, seed=seed + 11, mean=scale.tier1_mean, sd=scale.tier1_std,
                        cutpoints=None if cuts is None else list(cuts))
    records = []
    for i in sel:
        i = int(i)
        route = str(names[i])
        abstained = route == ABSTAIN
        pres = [m for k, m in enumerate(mods) if present[i, k]]
        miss = [m for k, m in enumerate(mods) if not present[i, k]]
        if abstained:
            recovered, by = [], None
        elif route == TIER2 and tier2 is not None and fitted.tier2_used:
            recovered, by = miss, "tier2 diffusion recovery"
        elif route == TIER2 and tier2 is not None:
            recovered = miss
            by = "tier1 estimator (Tier 2 not used: it did not beat Tier 1 on the run's federated validation)"
        else:
            recovered = miss
            by = ("tier1 estimator" if cfg.model.estimator else "tier1 pseudo-embedding") if miss else None
            if route == TIER2 and miss:
                by += " (no Tier 2 in this bundle)"
        risk = None if abstained else _num(system[i])
        group = None
        if risk is not None and cuts is not None:
            group = GROUPS[int(np.searchsorted(cuts, risk, side="right"))]
        referred = np.isfinite(pred.tier2_risk[i])
        rec: dict[str, Any] = {
            "patient_id": site.patient_ids[i], "site": site.site, "context": site.context[i] or None,
            "route": route, "route_reason": pred.routes[i].reason, "route_flags": list(pred.routes[i].flags),
            "risk": risk,
            "risk_interval": None if abstained else [_num(pred.risk_low[i]), _num(pred.risk_high[i])],
            "risk_interval_basis": pred.interval_basis[i], "risk_group": group, "risk_group_basis": basis if group is not None else None,
            "tier1_risk": None if abstained else _num(pred.tier1_risk[i]),
            "tier2_risk": None if abstained or not referred else _num(pred.tier2_risk[i]),
            "sigma2": _num(pred.sigma2[i]), "theta": _num(fitted.theta_),
            "tier2_uncertainty": _num(pred.tier2_uncertainty[i]) if referred else None,
            "abstain_bound": _num(fitted.abstain_bound_) if referred else None,
            "modalities_present": pres, "modalities_missing": miss, "modalities_recovered": recovered,
            "recovered_by": by,
        }
        q = fitted.conformal_q_.get(str(pred.draw_tier[i]), math.nan)  # absent: that tier has no q-hat
        shown = not abstained and bool(miss) and math.isfinite(q)
        rec["risk_conformal_interval"] = [_num(pred.draw_mean[i] - q * pred.draw_sd[i]),
                                          _num(pred.draw_mean[i] + q * pred.draw_sd[i])] if shown else None
        rec["risk_conformal_coverage"] = 1.0 - fitted.conformal_alpha_ if shown else None
        rec["which_exam"] = exams[i] if not abstained else []
        rec["survival"] = _survival(hz, None if risk is None else scale.tier1_mean + scale.tier1_std * risk, horizons)
        if i in attr_of and att is not None:
            r = attr_of[i]
            rec["attributions"] = {m: float(att.values[r, k]) for k, m in enumerate(mods)}
            rec["attribution_baseline_risk"] = float(att.baseline_risk[r])
            rec["top_instances"] = {
                m: [{"index": idx, "weight": w} for idx, w in
                    top_instances(att.attention[k][r], att.inst_mask[k][r], top_k, rows[m][i])]
                for k, m in enumerate(mods) if present[i, k]}
        else:
            rec["attributions"] = rec["attribution_baseline_risk"] = rec["top_instances"] = None
        records.append({k: rec[k] for k in RECORD_KEYS})  # the documented order
    return records


def _survival(hz, log_hazard: float | None, horizons: Sequence[float]) -> dict[str, Any] | None:
    if log_hazard is None:
        return None
    if hz is None:
        return {"available": False, "note": NO_BASELINE}
    med = median_survival(log_hazard, hz.times, hz.cumhaz)
    at = survival_at(log_hazard, list(horizons), hz.times, hz.cumhaz)
    out = {"available": True, "median": _num(med), "median_reached": bool(np.isfinite(med)),
           "at": {_hkey(h): _num(s) for h, s in zip(horizons, at)}, "grid_end": float(hz.times[-1])}
    if not np.isfinite(med):
        out["note"] = f"median not reached by t = {hz.times[-1]:g}"
    if any(h > hz.times[-1] for h in horizons):
        out["note"] = (out.get("note", "") + "; " if "note" in out else "") + \
            f"horizons beyond t = {hz.times[-1]:g} are null (the baseline hazard ends there)"
    return out


def _hkey(h: float) -> str:
    return f"{h:g}"


# ---- table -----------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def render_table(records: list[dict[str, Any]], horizons: Sequence[float]) -> str:
    with_surv = any((r["survival"] or {}).get("available") for r in records)
    head = ["patient", "route", "risk", "95% range", "group", "sigma2", "present", "recovered"]
    if with_surv:
        head += ["median"] + [f"S({_hkey(h)})" for h in horizons]
    rows = []
    for r in records:
        s = r["survival"] or {}
        surv = ([_f(s.get("median"), ".1f") if s.get("median_reached") else ("n.r." if s.get("available") else "-")]
                + [_f((s.get("at") or {}).get(_hkey(h)), ".2f") for h in horizons]) if with_surv else []
        band = r.get("risk_interval") or [None, None]
        span = "-" if band[0] is None else f"{band[0]:+.2f}..{band[1]:+.2f}"
        rows.append([r["patient_id"], r["route"], _f(r["risk"], "+.2f"), span, r["risk_group"] or "-",
                     _f(r["sigma2"], ".2g"),
                     ",".join(r["modalities_present"]) or "-", _recovered(r)] + surv)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    notes = set()
    for r, cells in zip(records, rows):
        out.append(line(cells))
        flags = f" [{', '.join(r['route_flags'])}]" if r.get("route_flags") else ""
        out.append(f"    reason: {r['route_reason']}{flags}")
        if r["attributions"] is not None:
            parts = []
            for m, v in sorted(r["attributions"].items(), key=lambda kv: -abs(kv[1])):
                if m in r["modalities_present"]:
                    top = ", ".join(f"#{t['index']} {t['weight']:.2f}" for t in r["top_instances"].get(m, []))
                    parts.append(f"{m} {v:+.3f} [{top}]")
            out.append(f"    attributions of Tier 1 risk {r['tier1_risk']:+.3f} (all modalities absent: "
                       f"{r['attribution_baseline_risk']:+.3f}): " + "; ".join(parts))
        if r.get("which_exam"):
            out.append("    which exam: " + "; ".join(
                f"{e['modality']} |change| {e['expected_change']:.2f}"
                + (f", P(group changes) {e['p_group_change']:.2f}" if e["p_group_change"] is not None else "")
                for e in r["which_exam"]))
        if r["survival"] and not r["survival"].get("available", True):
            notes.add(r["survival"]["note"])
        if r["risk_group_basis"]:
            notes.add(f"risk group: {r['risk_group_basis']}")
    out += [f"note: {n}" for n in sorted(notes)]
    return "\n".join(out)


def _recovered(r: dict[str, Any]) -> str:
    text = ",".join(r["modalities_recovered"]) or "-"
    return f"{text} (tier2)" if r["recovered_by"] == "tier2 diffusion recovery" else text


# ---- CLI -------------------------------------------------------------------------------------
def _horizons(text: str) -> list[float]:
    try:
        hs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        hs = []
    if not hs or any(not (h > 0 and math.isfinite(h)) for h in hs):
        raise PredictError(f"--horizons {text!r} is not a comma-separated list of positive times. "
                           "Fix: e.g. --horizons 12,36,60 (in the time unit of patients.csv)")
    return hs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmm-predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="model bundle file, or a finished run folder (model.pt)")
    p.add_argument("--data", type=Path, help="site folder (patients.csv + <modality>/<patient_id>.npy)")
    p.add_argument("--patient", nargs="+", action="extend", metavar="ID", help="only these patients (default: all)")
    p.add_argument("--horizons", default="12,36,60", help="survival horizons, comma-separated (default 12,36,60)")
    p.add_argument("--top-k", type=int, default=3, help="top attention instances per present modality (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of MC dropout and Tier 2 sampling (default 0)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients path steps (default 32)")
    p.add_argument("--out", type=Path, help="write the JSON lines to this file instead of stdout")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json-only", action="store_true", help="no table")
    g.add_argument("--table", action="store_true", help="print the table on stdout (JSON lines only with --out)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--save-bundle", type=Path, metavar="FILE", help="also write the model as one bundle file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.data is None and args.save_bundle is None:
            raise PredictError("nothing to do. Fix: pass --data SITE_DIR to predict, or --save-bundle FILE to export")
        if args.top_k < 0 or args.steps < 1:
            raise PredictError("--top-k must be >= 0 and --steps >= 1")
        horizons = _horizons(args.horizons)
        bundle = load_model(args.model)
        if args.save_bundle is not None:
            save_bundle(bundle, args.save_bundle)
            print(f"rmm-predict: wrote bundle {args.save_bundle}", file=sys.stderr)
        if args.data is None:
            return EXIT_OK
        site = load_site_for(bundle, args.data)
        if bundle.tier2 is not None and not bundle.gate.open:
            print(f"rmm-predict: note: Tier 2 is not used for referred patients in this model: {bundle.gate.reason}",
                  file=sys.stderr)
        records = predict_site(bundle, site, patient_ids=args.patient, horizons=horizons, top_k=args.top_k,
                               seed=args.seed, steps=args.steps)
    except RmmError as exc:
        print(f"rmm-predict: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    lines = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(lines)
    elif not args.table:
        sys.stdout.write(lines)
        sys.stdout.flush()
    if not args.json_only:
        print(render_table(records, horizons), file=sys.stdout if args.table else sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
