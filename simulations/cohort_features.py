"""How a modality shows the latent state: instance bags of the synthetic cohort.

Modality k has a fixed random nonlinear map of its view of the shared factors,

    phi_k(l) = sqrt(1 - nu) * A_k l + sqrt(nu) * 1.6 * tanh(B_k l + b_k)        (``map_hidden`` outputs),

and its informative ("tumour") instances carry ``signal_k * ([phi_k(l_k), u_k] + 0.3 eps) P_k`` on
top of a tumour prototype, where P_k embeds those few latent coordinates in the modality's feature
space. Background instances are background prototypes plus noise and carry nothing. The share of
tumour instances in a bag grows with the patient's tumour burden (as seen by that modality), so
where the informative instances are is itself informative, and attention pooling has something to
find that mean pooling dilutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TANH_SCALE = 1.6  # brings tanh of a roughly unit-variance input to roughly unit variance
_BURDEN = 2  # index of the tumour-burden factor in the shared factors


@dataclass(frozen=True)
class ModalityMap:
    """The fixed (per-cohort) parameters that turn one modality's latents into instances."""

    a: np.ndarray  # [H, S]
    b: np.ndarray  # [H, S]
    bias: np.ndarray  # [H]
    embed: np.ndarray  # [H + q, d]
    tumour: np.ndarray  # [d]
    background: np.ndarray  # [n_background, d]

    def latent_code(self, view: np.ndarray, specific: np.ndarray, nonlinearity: float,
                    specific_scale: float = 1.0) -> np.ndarray:
        """[phi_k(l), specific_scale * u_k] of one patient (what the informative instances express)."""
        lin = self.a @ view
        nonlin = _TANH_SCALE * np.tanh(self.b @ view + self.bias)
        phi = np.sqrt(1.0 - nonlinearity) * lin + np.sqrt(nonlinearity) * nonlin
        return np.concatenate([phi, specific_scale * specific])


def make_map(d: int, n_factors: int, n_specific: int, hidden: int, n_background: int,
             rng: np.random.Generator, background_scale: float = 1.5) -> ModalityMap:
    """Draw one modality's map; the latent coordinates are embedded orthonormally when they fit."""
    width = hidden + n_specific
    raw = rng.standard_normal((d, width))
    embed = np.linalg.qr(raw)[0].T if width <= d else raw.T / np.sqrt(width)
    return ModalityMap(a=rng.standard_normal((hidden, n_factors)) / np.sqrt(n_factors),
                       b=1.5 * rng.standard_normal((hidden, n_factors)) / np.sqrt(n_factors),
                       bias=0.5 * rng.standard_normal(hidden), embed=embed,
                       tumour=1.5 * rng.standard_normal(d),
                       background=background_scale * rng.standard_normal((n_background, d)))


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p))) if p < 1 else 30.0


def draw_bag(mm: ModalityMap, code: np.ndarray, view: np.ndarray, *, n_range: tuple[int, int],
             informative: float, burden_effect: float, signal: float, patient_noise: float,
             instance_noise: float, rng: np.random.Generator) -> np.ndarray:
    """One patient's bag [n, d]: tumour instances expressing ``code`` among background instances."""
    d = mm.tumour.size
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    burden = view[_BURDEN] if view.size > _BURDEN else 0.0
    share = 1.0 / (1.0 + np.exp(-(_logit(informative) + burden_effect * burden)))
    n_inf = int(np.clip(rng.binomial(n, share), 1, n))
    bg = mm.background[rng.integers(0, len(mm.background), size=n)]
    x = bg + instance_noise * rng.standard_normal((n, d)) + patient_noise * rng.standard_normal(d)
    inf = rng.choice(n, size=n_inf, replace=False)
    latent = code[None, :] + 0.3 * rng.standard_normal((n_inf, code.size))
    x[inf] += mm.tumour - bg[inf] + signal * latent @ mm.embed
    return x
