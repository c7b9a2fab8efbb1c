"""FUSCC-style synthetic multi-center multimodal survival cohort in which recovery can matter.

Imitates the colorectal cancer cohort of the method paper (1,679 patients, four centers of unequal
size, pathology / radiology / report bags, many modalities missing) and writes it in the hospitals'
on-disk format (``site-X/patients.csv`` plus one ``<modality>/<patient_id>.npy`` float32 bag per
present modality). ``truth.csv`` holds the latent risks and ``cohort.json`` what the generator
measured on what it made (neither is ever read by the pipeline).

Generative model (details in ``cohort_latent`` and ``cohort_features``):
- a handful of shared disease factors per patient (stage, grade, tumour burden, immune state) that
  every modality sees through its own view, correlated across modalities by
  ``cross_modal_strength`` (0 = independent modalities, the null setting), plus a few factors
  specific to one modality;
- the true risk: a linear plus nonlinear (``risk_nonlinearity``) function of each view, with
  ``shared_risk_share`` of its variance from the shared factors, SD ``risk_sd``; Weibull
  proportional-hazards survival with administrative plus random censoring tuned to ``event_rate``;
- bags of instances: tumour instances express a per-modality nonlinear map of the latents, the
  others are background; the tumour share of a bag grows with the patient's tumour burden;
- per center: a feature offset and scale (``shift_strength``, ``scale_jitter``), its own missing
  rates, and missingness that depends on how sick the patient is (sicker patients skip an exam) at
  every center, with a strength per center (``mnar``, scaled by ``mnar_strength``).

Why these defaults. In real multimodal oncology cohorts the modalities overlap but do not repeat each
other: stage and burden show in the slide, the scan and the report alike (in TCGA, RNA and copy
number of one tumour correlate strongly), while each modality also carries what only it sees. The
defaults (``cross_modal_strength`` 0.75, ``shared_risk_share`` 0.65, tumour instances that stand out
of a quiet background) put the held-out cross-modal R^2 of every modality's mean-pooled features
between 0.2 and 0.6 (about 0.23-0.32 over seeds 0-2, measured in ``cohort.json``): two views of one
factor correlate at 0.75, so two modalities predict about 64% of a third one's view and less of its
features, which also carry its own factors and noise. The true-risk oracle C-index lands near 0.83
as in strong clinical cohorts, and the risk's nonlinearity (0.3) is moderate, so a linear model is
a fair baseline, not a straw man. These values were set from those targets on the cohort's own
measurements (``cohort.json``), never from rmm's results.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from pydantic import BaseModel, model_validator

from rmmfed.core.errors import ConfigError

from .cohort_features import draw_bag, make_map
from .cohort_latent import LatentModel, draw_latents, expected_risk, risk_parts
from .cohort_measure import cross_modal_r2, oracle_c_indices

_FUSCC_FRACTIONS = [700 / 1679, 450 / 1679, 330 / 1679, 199 / 1679]  # the paper's centers
_RATE_TABLE = [  # default missing rate per site (row) and modality
    {"pathology": 0.10, "radiology": 0.20, "report": 0.30},
    {"pathology": 0.15, "radiology": 0.40, "report": 0.20},
    {"pathology": 0.25, "radiology": 0.30, "report": 0.45},
    {"pathology": 0.35, "radiology": 0.15, "report": 0.25},
]
_MNAR_SITE = [0.5, 1.5, 1.0, 0.75]  # default MNAR strength per center (log-odds per SD of sickness)
_MNAR_MOD = {"pathology": 0.5, "radiology": 1.0, "report": 0.8}  # a biopsy is skipped least often
_MOD_DEFAULTS = {  # modality -> (instances, specific risk weight, signal, informative fraction)
    "pathology": ((8, 48), 0.7, 6.0, 0.25),
    "radiology": ((4, 16), 0.5, 5.0, 0.40),
    "report": ((2, 6), 0.4, 5.0, 0.60),
}
_FALLBACK = ((4, 16), 0.5, 5.0, 0.4)


class CohortConfig(BaseModel):
    """All knobs of the synthetic cohort; the defaults give the FUSCC-like cohort (module docstring).

    Per-modality dicts left as ``None`` are filled from built-in defaults for the modalities in
    ``dims``; ``missing_rates[site][modality]`` is the marginal probability that the modality is
    absent at that site; ``mnar[site][modality]`` is the log-odds increase of its missingness per SD
    of the patient's sickness (a noisy reading of the true risk), multiplied by ``mnar_strength``.
    """

    n_patients: int = 1679
    site_names: list[str] = ["A", "B", "C", "D"]
    site_fractions: Optional[list[float]] = None
    dims: dict[str, int] = {"pathology": 64, "radiology": 32, "report": 24}
    instances: Optional[dict[str, tuple[int, int]]] = None
    seed: int = 0
    # latent state and risk
    n_shared_factors: int = 4
    n_specific_factors: int = 2
    cross_modal_strength: float = 0.75
    shared_risk_share: float = 0.65
    risk_nonlinearity: float = 0.3
    risk_sd: float = 1.7
    specific_weights: Optional[dict[str, float]] = None
    # how modalities show it
    map_hidden: int = 6
    map_nonlinearity: float = 0.25
    specific_expression: float = 0.5
    burden_effect: float = 0.5
    signal: Optional[dict[str, float]] = None
    informative_fraction: Optional[dict[str, float]] = None
    patient_noise: float = 0.15
    instance_noise: float = 0.5
    background_scale: float = 0.7
    n_background_prototypes: int = 4
    # centers
    missing_rates: Optional[dict[str, dict[str, float]]] = None
    mnar: Optional[dict[str, dict[str, float]]] = None
    mnar_strength: float = 1.0
    all_missing_fraction: float = 0.005
    shift_strength: float = 0.5
    scale_jitter: float = 0.2
    # survival and splits
    weibull_shape: float = 1.3
    median_time: float = 60.0
    event_rate: float = 0.5
    admin_quantile: float = 0.8
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    high_risk_fraction: float = 0.05

    @model_validator(mode="after")
    def _fill_and_check(self) -> "CohortConfig":
        """Fill per-site/per-modality defaults, then validate every value."""
        sites, mods = self.site_names, list(self.dims)
        if not sites or len(set(sites)) != len(sites) or not all(s.isalnum() for s in sites):
            raise ConfigError(f"site_names must be unique non-empty alphanumeric names, got {sites}")
        if not mods or not all(m.replace("_", "").isalnum() and d > 0 for m, d in self.dims.items()):
            raise ConfigError(f"dims must map folder-safe modality names to positive ints: {self.dims}")
        if self.site_fractions is None:
            w = _FUSCC_FRACTIONS if len(sites) == 4 else [0.75**i for i in range(len(sites))]
            self.site_fractions = [x / sum(w) for x in w]
        fr = self.site_fractions
        if len(fr) != len(sites) or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"site_fractions must be {len(sites)} positive numbers summing to 1: {fr}")
        if self.n_patients < 10 * len(sites):
            raise ConfigError(f"n_patients={self.n_patients} too small: need >= 10 per site")
        for name, idx in (("instances", 0), ("specific_weights", 1), ("signal", 2),
                          ("informative_fraction", 3)):
            val = getattr(self, name)
            if val is None:
                val = {m: _MOD_DEFAULTS.get(m, _FALLBACK)[idx] for m in mods}
                setattr(self, name, val)
            if set(val) != set(mods):
                raise ConfigError(f"{name} keys {sorted(val)} must equal modalities {sorted(mods)}")
        for m, (lo, hi) in self.instances.items():
            if not 1 <= lo <= hi:
                raise ConfigError(f"instances[{m}]=({lo}, {hi}) needs 1 <= min <= max")
        if not all(0 < f <= 1 for f in self.informative_fraction.values()):
            raise ConfigError("informative_fraction values must be in (0, 1]")
        if not all(w >= 0 for w in self.specific_weights.values()) or not any(self.specific_weights.values()):
            raise ConfigError("specific_weights must be >= 0 with at least one > 0")
        for name in ("cross_modal_strength", "shared_risk_share", "risk_nonlinearity", "map_nonlinearity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.n_shared_factors < 1 or self.n_specific_factors < 1 or self.map_hidden < 1:
            raise ConfigError("n_shared_factors, n_specific_factors and map_hidden must be >= 1")
        if self.risk_sd <= 0 or self.mnar_strength < 0:
            raise ConfigError("risk_sd must be > 0 and mnar_strength >= 0")
        if self.missing_rates is None:
            self.missing_rates = {s: {m: _RATE_TABLE[i % 4].get(m, 0.1 + 0.07 * ((2 * i + j) % 5))
                                      for j, m in enumerate(mods)} for i, s in enumerate(sites)}
        if set(self.missing_rates) != set(sites) or any(
                set(r) != set(mods) for r in self.missing_rates.values()):
            raise ConfigError("missing_rates must give a rate for every site and every modality")
        if not all(0 <= r < 1 for rs in self.missing_rates.values() for r in rs.values()):
            raise ConfigError("missing_rates must lie in [0, 1)")
        if self.mnar is None:
            self.mnar = {s: {m: round(_MNAR_SITE[i % 4] * _MNAR_MOD.get(m, 0.8), 4) for m in mods}
                         for i, s in enumerate(sites)}
        if any(s not in sites or not set(v) <= set(mods) for s, v in self.mnar.items()):
            raise ConfigError(f"mnar refers to unknown sites/modalities: {self.mnar}")
        for name in ("all_missing_fraction", "high_risk_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1)")
        if not 0 < self.event_rate < self.admin_quantile <= 1:
            raise ConfigError("need 0 < event_rate < admin_quantile <= 1")
        sf = self.split_fractions
        if min(sf) < 0 or abs(sum(sf) - 1) > 1e-6:
            raise ConfigError(f"split_fractions must be non-negative and sum to 1: {sf}")
        if self.weibull_shape <= 0 or self.median_time <= 0 or self.n_background_prototypes < 1:
            raise ConfigError("weibull_shape, median_time and n_background_prototypes must be > 0")
        return self

    def latent_model(self) -> LatentModel:
        """The latent model these knobs define."""
        return LatentModel(n_factors=self.n_shared_factors, n_specific=self.n_specific_factors,
                           cross_modal=self.cross_modal_strength, shared_share=self.shared_risk_share,
                           nonlinearity=self.risk_nonlinearity, risk_sd=self.risk_sd,
                           specific_weights=np.array([self.specific_weights[m] for m in self.dims], dtype=float))


def _site_sizes(n: int, fractions: list[float]) -> list[int]:
    """Split n into integer site sizes proportional to fractions (largest remainder, exact sum)."""
    raw = np.asarray(fractions) * n
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    return sizes.tolist()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bisect(f, lo: float, hi: float, target: float, iters: int = 60) -> float:
    """Root of the increasing function f(x) = target on [lo, hi] by bisection."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)



def _survival(cfg: CohortConfig, risk: np.ndarray, rng: np.random.Generator):
    """Weibull PH times with administrative + exponential censoring tuned to cfg.event_rate."""
    t = (rng.exponential(size=risk.size) / np.exp(risk)) ** (1.0 / cfg.weibull_shape)
    t *= cfg.median_time / np.median(t)
    tau = np.quantile(t, cfg.admin_quantile)
    e = rng.exponential(size=risk.size) * cfg.median_time

    def event_frac(log_c: float) -> float:  # decreasing in the censoring rate
        return -np.mean(t <= np.minimum(tau, e / np.exp(log_c)))

    log_c = _bisect(event_frac, -20.0, 20.0, -cfg.event_rate)
    cens = np.minimum(tau, e / np.exp(log_c))
    time = np.maximum(np.round(np.minimum(t, cens), 3), 0.001)
    return time, (t <= cens).astype(int)



def _missing(cfg: CohortConfig, site: str, sickness: np.ndarray, rng) -> dict[str, np.ndarray]:
    """Per-modality missing masks of one site: marginal rate cfg.missing_rates, MNAR via sickness."""
    z = (sickness - sickness.mean()) / (sickness.std() + 1e-12)
    masks = {}
    for m in cfg.dims:
        rate = cfg.missing_rates[site][m]
        beta = cfg.mnar_strength * cfg.mnar.get(site, {}).get(m, 0.0)
        off = _bisect(lambda b: _sigmoid(b + beta * z).mean(), -30, 30, rate) if rate > 0 else -np.inf
        masks[m] = rng.random(z.size) < _sigmoid(off + beta * z)
    if cfg.all_missing_fraction > 0:
        chosen = rng.choice(z.size, size=max(1, round(cfg.all_missing_fraction * z.size)),
                            replace=False)
        for m in masks:
            masks[m][chosen] = True  # abstention cases: every modality missing
    return masks


def _split(event: np.ndarray, fractions, rng) -> np.ndarray:
    """Train/val/test labels stratified by event status."""
    out = np.empty(event.size, dtype=object)
    for ev in (0, 1):
        idx = rng.permutation(np.flatnonzero(event == ev))
        n_tr, n_va = round(fractions[0] * idx.size), round(fractions[1] * idx.size)
        out[idx[:n_tr]], out[idx[n_tr:n_tr + n_va]], out[idx[n_tr + n_va:]] = "train", "val", "test"
    return out



def generate_cohort(config: CohortConfig, out_dir: str | Path) -> dict:
    """Generate the cohort into ``out_dir`` (must be empty or absent) and return a summary dict.

    Everything is written into ``<out_dir>.partial`` first and renamed at the end, so a crash never
    leaves a half cohort at ``out_dir``. Summary (also written to ``cohort.json``): per site patients,
    events, per-modality present counts and all-missing count; overall event rate; the measured
    ``cross_modal_r2`` per modality and the oracle C-indices of ``cohort_measure`` on the test split.
    """
    cfg, out = config, Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} is not empty: choose an empty or new folder "
                          "(cohorts are never mixed)")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # stale leftover of a crashed run of this generator
    try:
        summary = _write_cohort(cfg, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above); rename onto it portably
    tmp.rename(out)
    return {**summary, "out_dir": str(out)}



def _write_cohort(cfg: CohortConfig, tmp: Path) -> dict:
    """Draw the whole cohort and write it under ``tmp``; return the summary (without out_dir)."""
    ss = np.random.SeedSequence(cfg.seed)
    g_rng, surv_rng, *site_ss = [np.random.default_rng(s) for s in ss.spawn(2 + len(cfg.site_names))]
    mods, sizes = list(cfg.dims), _site_sizes(cfg.n_patients, cfg.site_fractions)
    lm = cfg.latent_model()
    maps = {m: make_map(d, cfg.n_shared_factors, cfg.n_specific_factors, cfg.map_hidden,
                        cfg.n_background_prototypes, g_rng, cfg.background_scale) for m, d in cfg.dims.items()}
    site_of = np.repeat(np.arange(len(sizes)), sizes)
    lat = draw_latents(lm, cfg.n_patients, len(mods), g_rng)
    shared, specific = risk_parts(lm, lat)
    risk = shared + specific.sum(axis=1)
    sickness = 0.8 * (risk - risk.mean()) / risk.std() + 0.6 * g_rng.standard_normal(cfg.n_patients)
    time, event = _survival(cfg, risk, surv_rng)
    observed = np.zeros((cfg.n_patients, len(mods)), dtype=bool)
    split_all = np.empty(cfg.n_patients, dtype=object)
    summary: dict = {"sites": {}}
    site_feats, site_present, site_split, frames = [], [], [], []
    for si, (site, rng) in enumerate(zip(cfg.site_names, site_ss)):
        idx = np.flatnonzero(site_of == si)
        folder = tmp / f"site-{site}"
        shift = {m: (cfg.shift_strength * rng.standard_normal(d),
                     np.exp(cfg.scale_jitter * rng.standard_normal(d))) for m, d in cfg.dims.items()}
        miss = _missing(cfg, site, sickness[idx], rng)
        split = _split(event[idx], cfg.split_fractions, rng)
        n_ctx = round(cfg.high_risk_fraction * idx.size)
        context = np.full(idx.size, "routine", dtype=object)
        context[rng.choice(idx.size, size=n_ctx, replace=False)] = "oncology-staging"
        ids = [f"{site}{j + 1:04d}" for j in range(idx.size)]
        pooled = {m: np.zeros((idx.size, d)) for m, d in cfg.dims.items()}
        for m in mods:
            (folder / m).mkdir(parents=True)
        for j, p in enumerate(idx):
            for k, m in enumerate(mods):
                code = maps[m].latent_code(lat.views[p, k], lat.specific[p, k], cfg.map_nonlinearity,
                                           cfg.specific_expression)
                bag = draw_bag(maps[m], code, lat.views[p, k], n_range=cfg.instances[m],
                               informative=cfg.informative_fraction[m], burden_effect=cfg.burden_effect,
                               signal=cfg.signal[m], patient_noise=cfg.patient_noise,
                               instance_noise=cfg.instance_noise, rng=rng)
                if not miss[m][j]:
                    offset, scale = shift[m]
                    written = (bag * scale + offset).astype(np.float32)
                    np.save(folder / m / f"{ids[j]}.npy", written)
                    pooled[m][j] = written.mean(axis=0)
        pd.DataFrame({"patient_id": ids, "time": time[idx], "event": event[idx], "split": split,
                      "context": context}).to_csv(folder / "patients.csv", index=False,
                                                  float_format="%.3f", lineterminator="\n")
        present = {m: ~miss[m] for m in mods}
        observed[idx] = np.stack([present[m] for m in mods], axis=1)
        split_all[idx] = split
        site_feats.append(pooled), site_present.append(present), site_split.append(split)
        frames.append((site, idx, ids))
        all_miss = np.logical_and.reduce([miss[m] for m in mods])
        summary["sites"][site] = {"patients": int(idx.size), "events": int(event[idx].sum()),
                                  "present": {m: int((~miss[m]).sum()) for m in mods},
                                  "all_missing": int(all_miss.sum())}
    obs_risk = expected_risk(lm, lat, observed)
    indep_risk = expected_risk(lm, lat, observed, recover=False)
    truth_rows = []
    for site, idx, ids in frames:
        truth = {"site": site, "patient_id": ids, "true_risk": risk[idx], "shared_risk": shared[idx]}
        truth.update({f"{m}_risk": specific[idx, k] for k, m in enumerate(mods)})
        truth.update({"observed_risk": obs_risk[idx], "observed_risk_no_recovery": indep_risk[idx],
                      "sickness": sickness[idx]})
        truth_rows.append(pd.DataFrame(truth))
    pd.concat(truth_rows).to_csv(tmp / "truth.csv", index=False, float_format="%.6f",
                                 lineterminator="\n")
    summary.update(n_patients=cfg.n_patients, event_rate=float(event.mean()),
                   cross_modal_r2=cross_modal_r2(site_feats, site_present, site_split),
                   **oracle_c_indices(time, event, split_all == "test", observed, risk, obs_risk, indep_risk))
    (tmp / "cohort.json").write_text(json.dumps({**summary, "config": cfg.model_dump(mode="json")},
                                                indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(_readme(cfg), encoding="utf-8")
    return summary


def _readme(cfg: CohortConfig) -> str:
    """Description of the generated cohort, with the full config as JSON."""
    return (
        "# Synthetic FUSCC-style multi-center cohort\n\n"
        "Entirely SYNTHETIC data generated by `rmmfed.simulations.cohort` (no real patients, no "
        "licence or privacy issue). A few shared disease factors (stage, grade, burden, immune state) "
        "seen by every modality through its own nonlinear map, with cross-modal strength "
        f"{cfg.cross_modal_strength}, plus modality-specific factors; Weibull proportional-hazards "
        "survival with administrative and random censoring; bags in which only the tumour instances "
        "carry the latent state; per-center feature offset/scale and per-center missingness that "
        "depends on how sick the patient is. `truth.csv` holds the latent risks (and "
        "`observed_risk`, E[risk | observed modalities]) and `cohort.json` what the generator "
        "measured (cross-modal R^2, oracle C-indices); the pipeline must never read either.\n\n"
        "Layout: `site-X/patients.csv` (patient_id,time,event,split,context) and "
        "`site-X/<modality>/<patient_id>.npy` (float32 [n_instances, dim]; absent = missing).\n\n"
        "## Config\n\n```json\n" + json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n```\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m rmmfed.simulations.cohort --out DIR [--seed S] [--patients N] [--cross-modal C] [--preset P]``."""
    from .cohort_presets import PRESETS, preset_config

    ap = argparse.ArgumentParser(description="Generate the synthetic FUSCC-style cohort.")
    ap.add_argument("--out", required=True, help="empty or new output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patients", type=int, default=1679)
    ap.add_argument("--cross-modal", type=float, help="cross_modal_strength in [0, 1] (default 0.75)")
    ap.add_argument("--preset", default="default", choices=list(PRESETS), help="default or wsi (real widths)")
    ap.add_argument("--sites", nargs="+", help="site names (default A B C D)")
    args = ap.parse_args(argv)
    extra = {} if args.cross_modal is None else {"cross_modal_strength": args.cross_modal}
    extra.update({"site_names": args.sites} if args.sites else {})
    summary = generate_cohort(preset_config(args.preset, n_patients=args.patients, seed=args.seed, **extra), args.out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
