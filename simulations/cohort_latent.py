"""The latent patient state of the synthetic cohort, its true risk, and the risk an oracle could
know from the modalities a patient actually has.

Every patient has ``S`` shared disease factors ``s`` (stage, grade, tumour burden, immune state, in
that order) and, per modality k, ``q`` modality-specific factors ``u_k``, all N(0, 1). Modality k does
not see ``s`` itself but a view of it,

    l_k = sqrt(c) * s + sqrt(1 - c) * e_k,          e_k ~ N(0, I) independent per modality,

so ``c`` (the cross-modal strength) is the correlation between two modalities' views of the same
factor: c = 0 makes the modalities independent (the null setting: nothing about an absent modality
can be recovered from the others), c = 1 makes every modality see the same state. Each view enters
the risk through the same function

    f(l) = sqrt(1 - eta) * (beta . l) / |beta| + sqrt(eta) * g(l),
    g(l) = (l_stage * l_grade + (l_burden^2 - 1) / sqrt(2)) / sqrt(2),

a linear part plus an interaction and a threshold-like (squared) term, both of unit variance and
uncorrelated with the linear part under N(0, I); ``eta`` is the risk's nonlinearity. Then

    true_risk = risk_sd * (sqrt(rho) * sum_k f(l_k) / norm_c + sqrt(1 - rho) * sum_k w_k (alpha . u_k) / norm_w)

with ``norm_c`` making the shared term unit-variance for every c (analytically: Var sum_k f(l_k) =
K + K (K - 1) ((1 - eta) c + eta c^2)), so the prognostic information per modality is the same for
every c and only its redundancy across modalities changes; ``rho`` is the share of risk variance
carried by the shared factors.

Because the model is Gaussian in the latents, E[true_risk | the latents of the observed modalities]
has a closed form (posterior of s given the observed views, then the first two moments of each
absent view): :func:`expected_risk`. It is the best any model reading the observed modalities could
do, an upper bound for cross-modal recovery (real features show the latents only through noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FACTOR_NAMES = ("stage", "grade", "burden", "immune")
_BETA = np.array([1.0, 0.7, 0.8, -0.5])  # linear prognostic weights of the shared factors
_ALPHA = np.array([1.0, 0.5, 0.3, 0.2])  # weights of a modality's own factors


@dataclass(frozen=True)
class LatentModel:
    """The constants of the latent model (see the module docstring)."""

    n_factors: int
    n_specific: int
    cross_modal: float  # c
    shared_share: float  # rho
    nonlinearity: float  # eta
    risk_sd: float
    specific_weights: np.ndarray  # w_k, one per modality

    @property
    def beta(self) -> np.ndarray:
        b = _BETA[: self.n_factors] if self.n_factors <= len(_BETA) else np.r_[_BETA, np.full(self.n_factors - len(_BETA), 0.4)]
        return b / np.linalg.norm(b)

    @property
    def alpha(self) -> np.ndarray:
        a = _ALPHA[: self.n_specific] if self.n_specific <= len(_ALPHA) else np.r_[_ALPHA, np.full(self.n_specific - len(_ALPHA), 0.2)]
        return a / np.linalg.norm(a)

    def shared_norm(self, k: int) -> float:
        c, eta = self.cross_modal, self.nonlinearity
        return float(np.sqrt(k + k * (k - 1) * ((1 - eta) * c + eta * c * c)))


@dataclass
class Latents:
    """One cohort's latent draws: ``shared`` [n, S], ``views`` [n, K, S], ``specific`` [n, K, q]."""

    shared: np.ndarray
    views: np.ndarray
    specific: np.ndarray


def draw_latents(lm: LatentModel, n: int, n_mod: int, rng: np.random.Generator) -> Latents:
    """Draw s, the per-modality views l_k and the specific factors u_k of ``n`` patients."""
    c = lm.cross_modal
    s = rng.standard_normal((n, lm.n_factors))
    e = rng.standard_normal((n, n_mod, lm.n_factors))
    views = np.sqrt(c) * s[:, None, :] + np.sqrt(1.0 - c) * e
    return Latents(shared=s, views=views, specific=rng.standard_normal((n, n_mod, lm.n_specific)))


def _g_terms(mean: np.ndarray, var: np.ndarray | float) -> np.ndarray:
    """E[g(l)] for l ~ N(mean, var * I) (var = 0 gives g(mean) itself), over the last axis of mean."""
    var = np.asarray(var, dtype=float)
    s = mean.shape[-1]
    if s == 1:
        return (mean[..., 0] ** 2 + var - 1.0) / np.sqrt(2.0)
    terms = [mean[..., 0] * mean[..., 1]]
    if s >= 3:
        terms.append((mean[..., 2] ** 2 + var - 1.0) / np.sqrt(2.0))
    return sum(terms) / np.sqrt(len(terms))


def view_risk(lm: LatentModel, mean: np.ndarray, var: np.ndarray | float = 0.0) -> np.ndarray:
    """E[f(l)] for l ~ N(mean, var * I); f(l) itself when var = 0."""
    eta = lm.nonlinearity
    return np.sqrt(1 - eta) * (mean @ lm.beta) + np.sqrt(eta) * _g_terms(mean, var)


def risk_parts(lm: LatentModel, lat: Latents) -> tuple[np.ndarray, np.ndarray]:
    """(shared part [n], specific part per modality [n, K]); true_risk is their sum."""
    k = lat.views.shape[1]
    shared = lm.risk_sd * np.sqrt(lm.shared_share) * view_risk(lm, lat.views).sum(axis=1) / lm.shared_norm(k)
    w = lm.specific_weights / np.linalg.norm(lm.specific_weights)
    specific = lm.risk_sd * np.sqrt(1 - lm.shared_share) * (lat.specific @ lm.alpha) * w[None, :]
    return shared, specific


def expected_risk(lm: LatentModel, lat: Latents, observed: np.ndarray, *, recover: bool = True) -> np.ndarray:
    """E[true_risk | latents of the observed modalities]; ``observed`` is a bool [n, K] mask.

    With ``recover=False`` an absent modality's terms are set to their prior mean (0), i.e. the
    risk known from the observed modalities alone with no inference about the absent ones.
    """
    n, k, s = lat.views.shape
    obs = np.asarray(observed, dtype=bool)
    c = lm.cross_modal
    f_obs = view_risk(lm, lat.views)  # [n, K]
    n_obs = obs.sum(axis=1)
    if recover and 0 < c:
        if c >= 1:  # every view equals s: the posterior is a point mass on any observed view
            first = np.argmax(obs, axis=1)
            post_m = np.where(n_obs[:, None] > 0, lat.views[np.arange(n), first], 0.0)
            post_v = np.where(n_obs > 0, 0.0, 1.0)
        else:
            prec = 1.0 + n_obs * c / (1.0 - c)
            total = (lat.views * obs[:, :, None]).sum(axis=1)
            post_m = (np.sqrt(c) / (1.0 - c)) * total / prec[:, None]
            post_v = 1.0 / prec
        miss_m = np.sqrt(c) * post_m  # every absent view has the same conditional law
        miss_v = c * post_v + (1.0 - c)
        f_miss = view_risk(lm, miss_m, miss_v)[:, None] * np.ones((1, k))
    else:
        f_miss = np.zeros((n, k))  # prior mean of f(l) under N(0, I)
    f = np.where(obs, f_obs, f_miss)
    shared = lm.risk_sd * np.sqrt(lm.shared_share) * f.sum(axis=1) / lm.shared_norm(k)
    w = lm.specific_weights / np.linalg.norm(lm.specific_weights)
    spec = lm.risk_sd * np.sqrt(1 - lm.shared_share) * (lat.specific @ lm.alpha) * w[None, :]
    return shared + (spec * obs).sum(axis=1)
