"""Cox partial likelihood (Cox 1972) with Efron (1977) or Breslow (1974) handling of tied times.

Conventions
-----------
* ``risk`` is the log-hazard ratio eta_i (a model's raw output): HIGHER risk = SHORTER survival.
* ``event`` is 1 (event observed) / 0 (censored); any non-zero value counts as an event.
* Risk set at time t: every patient with ``time >= t`` (patients tied with the event are at risk).

For distinct event times t_1 < ... < t_K, let D_k be the patients with an event at t_k,
d_k = |D_k|, R_k = {j : time_j >= t_k}. The log partial likelihood is

    Efron:   log L = sum_k [ sum_{i in D_k} eta_i
                            - sum_{l=0}^{d_k-1} log( sum_{j in R_k} e^{eta_j}
                                                     - (l / d_k) sum_{i in D_k} e^{eta_i} ) ]
    Breslow: log L = sum_k [ sum_{i in D_k} eta_i - d_k log sum_{j in R_k} e^{eta_j} ]

Efron equals the exact Cox likelihood when there are no ties and is what ``lifelines`` and R's
``survival::coxph`` use by default. Both are computed without Python loops over patients or
times: memory is O(B * K). Each risk-set sum is computed as exp(eta - m_k) with m_k the maximum
eta in R_k (log-sum-exp), and the Efron term as sum_{R_k minus D_k} + (1 - l/d_k) sum_{D_k} so
that no subtraction can cancel.

References: D. R. Cox (1972) "Regression models and life-tables", JRSS-B 34:187-220;
B. Efron (1977) "The efficiency of Cox's likelihood function for censored data", JASA 72:557-565.
"""

from __future__ import annotations

from typing import Literal

import torch

from rmmfed.core.errors import SurvivalInputError

Ties = Literal["efron", "breslow"]

__all__ = ["cox_partial_log_likelihood", "cox_loss", "CoxLoss"]


def _prepare(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, ties: str):
    if ties not in ("efron", "breslow"):
        raise SurvivalInputError(f"ties={ties!r} is not supported. Fix: use 'efron' or 'breslow'.")
    if not torch.is_tensor(risk) or not risk.is_floating_point():
        raise SurvivalInputError("risk must be a floating-point torch.Tensor of shape [B]. "
                                 "Fix: pass the model's log-hazard output (e.g. out.squeeze(-1)).")
    if risk.dim() == 2 and risk.shape[1] == 1:
        risk = risk.reshape(-1)
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1)
    if risk.dim() != 1 or time.shape != risk.shape or event.shape != risk.shape:
        raise SurvivalInputError(
            f"shapes disagree: risk {tuple(risk.shape)}, time {tuple(time.shape)}, "
            f"event {tuple(event.shape)}. Fix: pass three 1-D tensors of the same length B.")
    if time.is_floating_point() and bool(torch.isnan(time).any()):
        raise SurvivalInputError("time contains NaN. Fix: drop or impute those patients.")
    return risk, time, event != 0


def cox_partial_log_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                               ties: Ties = "efron") -> torch.Tensor:
    """Log partial likelihood log L(eta) (formula in the module docstring); scalar, differentiable
    with respect to ``risk``. Returns ``risk.sum() * 0`` (0 with a gradient graph) without events."""
    risk, time, event = _prepare(risk, time, event, ties)
    if not bool(event.any()):
        return risk.sum() * 0.0
    uniq = torch.unique(time[event])                                   # [K] distinct event times
    at_risk = time.unsqueeze(0) >= uniq.unsqueeze(1)                   # [K, B]
    dies = (time.unsqueeze(0) == uniq.unsqueeze(1)) & event.unsqueeze(0)   # [K, B], D_k subset R_k
    neg_inf = torch.tensor(float("-inf"), dtype=risk.dtype, device=risk.device)
    shifted = torch.where(at_risk, risk.unsqueeze(0), neg_inf)          # eta_j on R_k, -inf elsewhere
    m = shifted.amax(dim=1).detach()                                    # [K] max over risk set
    e = torch.exp(shifted - m.unsqueeze(1))                             # 0 outside R_k, <= 1 inside
    zero = torch.zeros((), dtype=risk.dtype, device=risk.device)
    s_dead = torch.where(dies, e, zero).sum(dim=1)                      # sum_{D_k} e^{eta - m_k}
    s_rest = torch.where(at_risk & ~dies, e, zero).sum(dim=1)           # sum_{R_k \ D_k}
    d = dies.sum(dim=1)                                                 # [K] number of deaths
    first_term = risk[event].sum()
    if ties == "breslow":
        log_denom = torch.log(s_rest + s_dead) + m
        return first_term - (d.to(risk.dtype) * log_denom).sum()
    ell = torch.arange(int(d.max()), device=risk.device)                # [L] l = 0..max d_k - 1
    valid = ell.unsqueeze(0) < d.unsqueeze(1)                           # [K, L]
    frac = 1.0 - ell.unsqueeze(0).to(risk.dtype) / d.unsqueeze(1).to(risk.dtype)   # 1 - l/d_k
    inner = s_rest.unsqueeze(1) + frac * s_dead.unsqueeze(1)
    inner = torch.where(valid, inner, torch.ones_like(inner))           # log(1) = 0 when l >= d_k
    log_terms = torch.log(inner) + m.unsqueeze(1)
    return first_term - torch.where(valid, log_terms, zero).sum()


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
             ties: Ties = "efron") -> torch.Tensor:
    """Mean negative log partial likelihood: -log L(eta) / (number of events).

    Returns ``risk.sum() * 0`` (zero, still attached to the graph) when the batch has no event,
    so ``loss.backward()`` is always valid. Minimising it pushes risk up for early deaths.
    """
    risk, time, event_b = _prepare(risk, time, event, ties)
    n_events = int(event_b.sum())
    if n_events == 0:
        return risk.sum() * 0.0
    return -cox_partial_log_likelihood(risk, time, event_b, ties) / n_events


class CoxLoss(torch.nn.Module):
    """``torch.nn.Module`` wrapper of :func:`cox_loss`: ``CoxLoss()(risk, time, event)``."""

    def __init__(self, ties: Ties = "efron") -> None:
        super().__init__()
        if ties not in ("efron", "breslow"):
            raise SurvivalInputError(f"ties={ties!r} is not supported. Fix: use 'efron' or 'breslow'.")
        self.ties = ties

    def forward(self, risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        return cox_loss(risk, time, event, self.ties)

    def extra_repr(self) -> str:
        return f"ties={self.ties!r}"
