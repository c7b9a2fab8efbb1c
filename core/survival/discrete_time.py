"""Discrete-time survival likelihood: a per-sample decomposable replacement for Cox under DP-SGD.

Why not Cox here
----------------
The Cox partial likelihood (:mod:`rmmfed.core.survival.cox`) couples the patients of a batch: patient i's term
has the risk set sum_{j in R_i} e^{eta_j} in its denominator, so the loss is not a sum of per-patient
terms. DP-SGD needs exactly such a sum: it clips each patient's gradient to norm C and adds noise
scaled to C, and the RDP accountant assumes that adding or removing one patient changes the summed
gradient by at most C. With Cox, one patient also moves every other patient's gradient (through the
risk sets), so "per-sample gradient" and its clipping are undefined and the privacy proof breaks.

Model (logistic hazard; Cox 1972 discrete form, Brown 1975, Gensheimer & Narasimhan 2019)
----------------------------------------------------------------------------------------
The time axis is cut into ``J = len(cuts) + 1`` intervals by increasing ``cuts`` fixed by the server or
config (never by one site's data): I_0 = [0, c_1), I_j = [c_j, c_{j+1}), I_{J-1} = [c_{J-1}, inf).
A time exactly on a cut goes to the upper interval. The hazard in interval j is

    h_j(x) = sigmoid(b_j + eta(x)),

``eta`` being the risk head's output (HIGHER risk = SHORTER survival, as for Cox) and ``b`` a
per-interval baseline (:class:`DiscreteTimeBaseline`). For a patient whose time falls in I_k:

    event:     l = sum_{j<k} log(1 - h_j) + log h_k
    censored:  l = sum_{j<k} log(1 - h_j) + 1/2 log(1 - h_k)   (actuarial: censored mid-interval)

and the per-sample loss is -l. Each term depends on one patient only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SurvivalInputError

__all__ = ["DiscreteTimeBaseline", "interval_index", "discrete_time_nll", "discrete_time_loss",
           "quantile_cuts", "survival_function"]


class DiscreteTimeBaseline(nn.Module):
    """Per-interval baseline logits b_j (``n_bins`` of them); ``learnable=False`` freezes them.

    ``init`` is the starting logit of every interval (-2.0: hazard about 0.12 per interval at eta=0).
    """

    def __init__(self, n_bins: int, *, init: float = -2.0, learnable: bool = True) -> None:
        super().__init__()
        if int(n_bins) < 1:
            raise SurvivalInputError(f"n_bins={n_bins!r} must be >= 1. Fix: pass len(cuts) + 1.")
        self.logit = nn.Parameter(torch.full((int(n_bins),), float(init)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.logit

    @property
    def n_bins(self) -> int:
        return int(self.logit.shape[0])


def _check_cuts(cuts: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(cuts, dtype=torch.float32).reshape(-1)
    if c.numel() and (not torch.isfinite(c).all() or (c[1:] <= c[:-1]).any() or (c <= 0).any()):
        raise SurvivalInputError("cuts must be finite, positive and strictly increasing. "
                                 "Fix: use quantile_cuts(times, n_bins) or the run's configured cut points.")
    return c


def interval_index(time: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Index k of the interval holding each time (a time on a cut goes to the upper interval)."""
    c = _check_cuts(cuts).to(time.device)
    return torch.searchsorted(c, time.reshape(-1).to(c.dtype).contiguous(), right=True)


def discrete_time_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor,
                      baseline: torch.Tensor | nn.Module, *,
                      reduction: Literal["none", "mean", "sum"] = "none") -> torch.Tensor:
    """Negative log-likelihood of the logistic-hazard model (module docstring); [B] per patient by default.

    ``risk`` [B] float, ``time`` [B] > 0, ``event`` [B] (non-zero = observed), ``cuts`` [J-1] increasing,
    ``baseline`` [J] logits or a :class:`DiscreteTimeBaseline`. Works inside ``torch.func.vmap``.
    """
    if reduction not in ("none", "mean", "sum"):
        raise SurvivalInputError(f"reduction={reduction!r}. Fix: use 'none', 'mean' or 'sum'.")
    if not torch.is_tensor(risk) or not risk.is_floating_point():
        raise SurvivalInputError("risk must be a floating-point tensor [B]. Fix: pass the model's risk output.")
    b = baseline() if isinstance(baseline, nn.Module) else torch.as_tensor(baseline)
    risk = risk.reshape(-1)
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1)
    if time.shape != risk.shape or event.shape != risk.shape:
        raise SurvivalInputError(f"shapes disagree: risk {tuple(risk.shape)}, time {tuple(time.shape)}, "
                                 f"event {tuple(event.shape)}. Fix: pass three 1-D tensors of length B.")
    if b.reshape(-1).shape[0] != _check_cuts(cuts).numel() + 1:
        raise SurvivalInputError(f"baseline has {b.numel()} intervals but cuts define {len(cuts) + 1}. "
                                 "Fix: build DiscreteTimeBaseline(len(cuts) + 1).")
    k = interval_index(time, cuts)                                        # [B]
    j = torch.arange(b.shape[0], device=risk.device)                      # [J]
    logit = b.to(risk.dtype).unsqueeze(0) + risk.unsqueeze(1)             # [B, J]
    before = (j.unsqueeze(0) < k.unsqueeze(1)).to(risk.dtype)
    at = (j.unsqueeze(0) == k.unsqueeze(1)).to(risk.dtype)
    ev = (event != 0).to(risk.dtype).unsqueeze(1)
    survive = F.logsigmoid(-logit)                                        # log(1 - h)
    ll = (before * survive + at * (ev * F.logsigmoid(logit) + (1 - ev) * 0.5 * survive)).sum(dim=1)
    nll = -ll
    if reduction == "mean":
        return nll.mean()
    return nll.sum() if reduction == "sum" else nll


def discrete_time_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor,
                       baseline: torch.Tensor | nn.Module) -> torch.Tensor:
    """Mean over patients of :func:`discrete_time_nll`."""
    return discrete_time_nll(risk, time, event, cuts, baseline, reduction="mean")


def quantile_cuts(times: np.ndarray | torch.Tensor, n_bins: int) -> torch.Tensor:
    """``n_bins - 1`` cut points at the j/n_bins quantiles of ``times`` (deduplicated).

    Run this on data the consortium may use to fix the grid (e.g. a public reference cohort or a
    privatized federated histogram of times), not on one site's private training data inside DP-SGD.
    """
    t = np.asarray(times, dtype=np.float64).ravel()
    if n_bins < 1 or t.size == 0 or not np.isfinite(t).all() or (t <= 0).any():
        raise SurvivalInputError("quantile_cuts needs n_bins >= 1 and finite positive times. "
                                 "Fix: pass the follow-up times (> 0) and the number of intervals.")
    q = np.quantile(t, np.arange(1, n_bins) / n_bins)
    return torch.as_tensor(np.unique(q), dtype=torch.float32)


def survival_function(risk: torch.Tensor, baseline: torch.Tensor | nn.Module) -> torch.Tensor:
    """S at the end of each interval: prod_{j<=m} (1 - h_j), shape [B, J]."""
    b = baseline() if isinstance(baseline, nn.Module) else torch.as_tensor(baseline)
    return torch.exp(torch.cumsum(F.logsigmoid(-(b.unsqueeze(0) + risk.reshape(-1, 1))), dim=1))
