"""FUSCC-style synthetic multi-center multimodal survival cohort.

Imitates the colorectal cancer cohort of the method paper (1,679 patients, four centers of unequal
size, pathology / radiology / report bags, many modalities missing) and writes it in the hospitals'
on-disk format (``site-X/patients.csv`` plus one ``<modality>/<patient_id>.npy`` float32 bag per
present modality). ``truth.csv`` holds the latent risks (never read by the pipeline).

Generative model: ``u_shared`` and one ``u_k`` per modality ~ N(0, 1);
``true_risk = a * u_shared + sum_k b_k * u_k``; survival is Weibull proportional hazards in
``exp(true_risk)`` with administrative plus random censoring tuned to the target event rate.
Informative instances of modality k carry ``signal_k * (u_shared * W_k0 + u_k * W_k1)`` on top of a
"tumour" prototype; the other instances are background prototypes plus noise. Every center gets
its own offset and scale per modality and its own missing rates, with patient-dependent (MNAR)
missingness driven by a risk-correlated ``frailty`` covariate at configurable centers.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from lifelines.utils import concordance_index
from pydantic import BaseModel, model_validator

from rmmfed.core.errors import ConfigError

_FUSCC_FRACTIONS = [700 / 1679, 450 / 1679, 330 / 1679, 199 / 1679]  # the paper's centers
_RATE_TABLE = [  # default missing rate per site (row) and modality
    {"pathology": 0.10, "radiology": 0.20, "report": 0.30},
    {"pathology": 0.15, "radiology": 0.40, "report": 0.20},
    {"pathology": 0.25, "radiology": 0.30, "report": 0.45},
    {"pathology": 0.35, "radiology": 0.15, "report": 0.25},
]
_MOD_DEFAULTS = {  # modality -> (instances, specific risk weight, signal, informative fraction)
    "pathology": ((8, 48), 0.7, 1.3, 0.25),
    "radiology": ((4, 16), 0.5, 1.3, 0.40),
    "report": ((2, 6), 0.4, 2.0, 0.60),
}
_FALLBACK = ((4, 16), 0.5, 1.0, 0.4)


class CohortConfig(BaseModel):
    """All knobs of the synthetic cohort; the defaults reproduce the FUSCC-like cohort.

    Per-modality dicts left as ``None`` are filled from built-in defaults for the modalities in
    ``dims``; ``missing_rates[site][modality]`` is the marginal probability that the modality is
    absent at that site; ``mnar[site][modality]`` is the log-odds increase of missingness per SD of
    the patient's frailty (a covariate correlated with true risk).
    """

    n_patients: int = 1679
    site_names: list[str] = ["A", "B", "C", "D"]
    site_fractions: Optional[list[float]] = None
    dims: dict[str, int] = {"pathology": 64, "radiology": 32, "report": 24}
    instances: Optional[dict[str, tuple[int, int]]] = None
    seed: int = 0
    missing_rates: Optional[dict[str, dict[str, float]]] = None
    mnar: Optional[dict[str, dict[str, float]]] = None
    all_missing_fraction: float = 0.005
    shared_weight: float = 1.5
    specific_weights: Optional[dict[str, float]] = None
    signal: Optional[dict[str, float]] = None
    informative_fraction: Optional[dict[str, float]] = None
    patient_noise: float = 0.5
    n_background_prototypes: int = 4
    shift_strength: float = 0.5
    scale_jitter: float = 0.2
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
        if self.missing_rates is None:
            self.missing_rates = {s: {m: _RATE_TABLE[i % 4].get(m, 0.1 + 0.07 * ((2 * i + j) % 5))
                                      for j, m in enumerate(mods)} for i, s in enumerate(sites)}
        if set(self.missing_rates) != set(sites) or any(
                set(r) != set(mods) for r in self.missing_rates.values()):
            raise ConfigError("missing_rates must give a rate for every site and every modality")
        if not all(0 <= r < 1 for rs in self.missing_rates.values() for r in rs.values()):
            raise ConfigError("missing_rates must lie in [0, 1)")
        if self.mnar is None:
            default = [(1, "radiology", 1.5), (2, "report", 1.0)]
            self.mnar = {sites[i]: {m: b} for i, m, b in default if i < len(sites) and m in mods}
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


def _missing(cfg: CohortConfig, site: str, frailty: np.ndarray, rng) -> dict[str, np.ndarray]:
    """Per-modality missing masks of one site: marginal rate cfg.missing_rates, MNAR via frailty."""
    z = (frailty - frailty.mean()) / (frailty.std() + 1e-12)
    masks = {}
    for m in cfg.dims:
        rate, beta = cfg.missing_rates[site][m], cfg.mnar.get(site, {}).get(m, 0.0)
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


def _bag(cfg, m, proto, u_s, u_k, rng) -> np.ndarray:
    """One patient's bag: informative instances (tumour prototype + latent signal) among background."""
    d, (lo, hi) = cfg.dims[m], cfg.instances[m]
    n = int(rng.integers(lo, hi + 1))
    n_inf = int(np.clip(rng.binomial(n, cfg.informative_fraction[m]), 1, n))
    bg = proto["background"][rng.integers(0, len(proto["background"]), size=n)]
    x = bg + rng.standard_normal((n, d)) + cfg.patient_noise * rng.standard_normal(d)
    inf = rng.choice(n, size=n_inf, replace=False)
    latent = np.array([u_s, u_k]) + 0.3 * rng.standard_normal((n_inf, 2))
    x[inf] += proto["tumour"] - bg[inf] + cfg.signal[m] * latent @ proto["W"]
    return x


def generate_cohort(config: CohortConfig, out_dir: str | Path) -> dict:
    """Generate the cohort into ``out_dir`` (must be empty or absent) and return a summary dict.

    Everything is written into ``<out_dir>.partial`` first and renamed at the end, so a crash never
    leaves a half cohort at ``out_dir``. Summary: per site patients, events, per-modality present
    counts and all-missing count; overall event rate; oracle C-index of true_risk on the test split.
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
    proto = {}
    for m, d in cfg.dims.items():
        w = np.linalg.qr(g_rng.standard_normal((d, 2)))[0].T  # two orthonormal signal directions
        proto[m] = {"W": w, "tumour": 1.5 * g_rng.standard_normal(d),
                    "background": 1.5 * g_rng.standard_normal((cfg.n_background_prototypes, d))}
    site_of = np.repeat(np.arange(len(sizes)), sizes)
    u = g_rng.standard_normal((cfg.n_patients, 1 + len(mods)))
    parts = u * np.array([cfg.shared_weight] + [cfg.specific_weights[m] for m in mods])
    risk = parts.sum(axis=1)
    frailty = 0.8 * (risk - risk.mean()) / risk.std() + 0.6 * g_rng.standard_normal(cfg.n_patients)
    time, event = _survival(cfg, risk, surv_rng)
    truth_rows, summary = [], {"sites": {}}
    test_mask = np.zeros(cfg.n_patients, dtype=bool)
    for si, (site, rng) in enumerate(zip(cfg.site_names, site_ss)):
        idx = np.flatnonzero(site_of == si)
        folder = tmp / f"site-{site}"
        shift = {m: (cfg.shift_strength * rng.standard_normal(d),
                     np.exp(cfg.scale_jitter * rng.standard_normal(d))) for m, d in cfg.dims.items()}
        miss = _missing(cfg, site, frailty[idx], rng)
        split = _split(event[idx], cfg.split_fractions, rng)
        n_ctx = round(cfg.high_risk_fraction * idx.size)
        context = np.full(idx.size, "routine", dtype=object)
        context[rng.choice(idx.size, size=n_ctx, replace=False)] = "oncology-staging"
        ids = [f"{site}{j + 1:04d}" for j in range(idx.size)]
        for m in mods:
            (folder / m).mkdir(parents=True)
        for j, p in enumerate(idx):
            for k, m in enumerate(mods):
                bag = _bag(cfg, m, proto[m], u[p, 0], u[p, k + 1], rng)
                if not miss[m][j]:
                    offset, scale = shift[m]
                    np.save(folder / m / f"{ids[j]}.npy", (bag * scale + offset).astype(np.float32))
        pd.DataFrame({"patient_id": ids, "time": time[idx], "event": event[idx], "split": split,
                      "context": context}).to_csv(folder / "patients.csv", index=False,
                                                  float_format="%.3f", lineterminator="\n")
        truth = {"site": site, "patient_id": ids, "true_risk": risk[idx], "shared_risk": parts[idx, 0]}
        truth.update({f"{m}_risk": parts[idx, k + 1] for k, m in enumerate(mods)})
        truth_rows.append(pd.DataFrame({**truth, "frailty": frailty[idx]}))
        test_mask[idx] = split == "test"
        all_miss = np.logical_and.reduce([miss[m] for m in mods])
        summary["sites"][site] = {"patients": int(idx.size), "events": int(event[idx].sum()),
                                  "present": {m: int((~miss[m]).sum()) for m in mods},
                                  "all_missing": int(all_miss.sum())}
    pd.concat(truth_rows).to_csv(tmp / "truth.csv", index=False, float_format="%.6f",
                                 lineterminator="\n")
    (tmp / "README.md").write_text(_readme(cfg), encoding="utf-8")
    summary.update(n_patients=cfg.n_patients, event_rate=float(event.mean()),
                   oracle_c_index_test=float(concordance_index(
                       time[test_mask], -risk[test_mask], event[test_mask])))
    return summary


def _readme(cfg: CohortConfig) -> str:
    """Description of the generated cohort, with the full config as JSON."""
    return (
        "# Synthetic FUSCC-style multi-center cohort\n\n"
        "Entirely SYNTHETIC data generated by `rmmfed.simulations.cohort` (no real patients, no "
        "licence or privacy issue). Latent risk = shared + modality-specific Gaussian factors; "
        "Weibull proportional-hazards survival with administrative and random censoring; bags of "
        "instances where only a subset carries a noisy projection of the latent factors; per-center "
        "feature offset/scale and per-center, partly patient-dependent (MNAR) missingness. "
        "`truth.csv` holds the latent risks and must never be read by the pipeline.\n\n"
        "Layout: `site-X/patients.csv` (patient_id,time,event,split,context) and "
        "`site-X/<modality>/<patient_id>.npy` (float32 [n_instances, dim]; absent = missing).\n\n"
        "## Config\n\n```json\n" + json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n```\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m rmmfed.simulations.cohort --out DIR [--seed S] [--patients N]``."""
    ap = argparse.ArgumentParser(description="Generate the synthetic FUSCC-style cohort.")
    ap.add_argument("--out", required=True, help="empty or new output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patients", type=int, default=1679)
    args = ap.parse_args(argv)
    summary = generate_cohort(CohortConfig(n_patients=args.patients, seed=args.seed), args.out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
