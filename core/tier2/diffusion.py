"""Gaussian diffusion pieces for Tier 2 (seed 000 eq. 6; Ho et al. 2020, Song et al. 2021).

Forward process with a linear beta schedule (beta_1 = 1e-4 ... beta_T = 0.02),
alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s:

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)            (q_sample)

Eq. 6 (restricted to the coordinates to be recovered, mask M):

    L_DDPM = E_{t, eps} [ || M * (eps - eps_psi(x_t, t, c)) ||^2 ] / |M|                (ddpm_loss)

Inference: deterministic DDIM (eta = 0) over an evenly spaced sub-sequence tau of the T steps,

    x0_hat = (x_t - sqrt(1 - a_t) eps_psi) / sqrt(a_t)   (clamped to [-clip, clip]),
    x_{t'} = sqrt(a_{t'}) x0_hat + sqrt(1 - a_{t'}) eps_psi,   a = alpha_bar, a_{-1} = 1,

starting from noise drawn from a caller's ``torch.Generator`` (fixed seed -> identical samples).
Known coordinates can be held at their values at every step (inpainting).

Any ``eps_model`` is a callable ``(x_t [B, D], t [B] long, cond [B, C]) -> eps [B, D]``; its
``.schedule`` (a :class:`LinearSchedule`) is used unless a schedule is passed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class LinearSchedule(nn.Module):
    """betas / alphas / alpha_bars as non-persistent buffers: ``.to(device)`` moves them, and they
    never enter a ``state_dict`` (so federated weight exchange carries only learnable weights)."""

    def __init__(self, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError("timesteps must be >= 1")
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        self.timesteps = int(timesteps)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(alphas, 0).float(), persistent=False)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


def _schedule(eps_model: Callable, schedule: LinearSchedule | None) -> LinearSchedule:
    s = schedule if schedule is not None else getattr(eps_model, "schedule", None)
    if s is None:
        raise ValueError("no diffusion schedule: pass schedule= or give eps_model a .schedule")
    return s


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: LinearSchedule) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; t [B] long."""
    a = schedule.alpha_bars.to(x0.device)[t].unsqueeze(-1)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: LinearSchedule,
               clip: float | None = 10.0) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), optionally clamped."""
    a = schedule.alpha_bars.to(x_t.device)[t].unsqueeze(-1)
    x0 = (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()
    return x0.clamp(-clip, clip) if clip is not None else x0


@dataclass
class DDPMStep:
    loss: torch.Tensor  # scalar L_DDPM on the masked coordinates (eq. 6)
    x0_pred: torch.Tensor  # [B, D] one-step estimate of x0 (differentiable, clamped)
    t: torch.Tensor  # [B] the timesteps drawn


def snr(schedule: LinearSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of timesteps t [B]."""
    a = schedule.alpha_bars.to(t.device)[t]
    return a / (1.0 - a)


WEIGHTINGS = ("eps", "min-snr")


def ddpm_step(eps_model: Callable, x0: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
              generator: torch.Generator, *, schedule: LinearSchedule | None = None,
              clip: float = 10.0, denoise: torch.Tensor | None = None, weighting: str = "eps",
              snr_gamma: float = 5.0) -> DDPMStep:
    """One Monte-Carlo draw of eq. 6: t ~ U{0..T-1}, eps ~ N(0, I) from ``generator``.

    ``mask`` [B, D] bool marks the coordinates the loss is taken on; ``denoise`` (default: ``mask``)
    the coordinates that are noised with q_sample (they may include coordinates without a target,
    e.g. a modality the patient never had, filled with a stand-in in ``x0``, so the model sees the
    same kind of input there as at inference). Elsewhere the input is plain noise, which an
    inpainting denoiser overwrites with observed values. Noise is drawn for every coordinate, so
    ``x0`` outside the mask does not change which t and noise are drawn.

    ``weighting``:
    * ``"eps"``: eq. 6 verbatim, the eps-MSE. At large t eps is almost x_t itself, so about half of
      the uniformly drawn steps of the linear schedule (SNR < 0.1) teach the model next to nothing.
    * ``"min-snr"``: the x0-MSE weighted by min(SNR_t + 1, gamma) (Min-SNR-gamma, Hang et al. 2023,
      in its v-prediction form: the +1 keeps weight ~1 on the noisiest steps, where predicting x0 is
      a regression on the condition, and gamma caps the nearly noise-free steps, which would
      otherwise dominate). The same per-step optimum as eq. 6, with a weighting that spends the
      gradient on every t.
    Also returns the one-step x0 estimate (used by L_cons).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    sch = _schedule(eps_model, schedule)
    b = x0.shape[0]
    t = torch.randint(0, sch.timesteps, (b,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    noised = mask if denoise is None else (denoise | mask)
    x_t = torch.where(noised, q_sample(x0, t, noise, sch), noise)
    eps = eps_model(x_t, t, cond)
    m = mask.to(x0.dtype)
    if weighting == "eps":
        per = (eps - noise) ** 2
    else:
        w = torch.clamp(snr(sch, t) + 1.0, max=snr_gamma).unsqueeze(-1).to(x0.dtype)
        per = w * (predict_x0(x_t, t, eps, sch, clip=None) - x0) ** 2
    loss = (per * m).sum() / m.sum().clamp(min=1.0)
    return DDPMStep(loss, predict_x0(x_t, t, eps, sch, clip), t)


def ddpm_loss(eps_model: Callable, x0: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
              generator: torch.Generator, *, schedule: LinearSchedule | None = None) -> torch.Tensor:
    """L_DDPM of eq. 6 on the masked (to-be-recovered) coordinates; see :func:`ddpm_step`."""
    return ddpm_step(eps_model, x0, mask, cond, generator, schedule=schedule).loss


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly spaced sub-sequence tau of {0..T-1}, descending, from T-1 down to 0 (just T-1 for one step)."""
    steps = max(1, min(int(steps), timesteps))
    if steps == 1:
        return [timesteps - 1]
    taus = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long().unique()
    return sorted(taus.tolist(), reverse=True)


@torch.no_grad()
def ddim_sample(eps_model: Callable, cond: torch.Tensor, shape: tuple[int, ...] | torch.Size, steps: int,
                generator: torch.Generator, *, schedule: LinearSchedule | None = None,
                hidden: torch.Tensor | None = None, known: torch.Tensor | None = None,
                clip: float = 10.0, return_first_x0: bool = False):
    """Deterministic DDIM (eta = 0): x_T ~ N(0, I) from ``generator``, then ``steps`` updates.

    With ``hidden`` [B, D] bool and ``known`` [B, D], coordinates outside ``hidden`` are held at
    ``known`` at every step (inpainting); only hidden coordinates are denoised. With
    ``return_first_x0`` also returns the x0 estimate of the first (noisiest) step: there x_t is almost
    pure noise, so a model trained to the x0-MSE predicts the posterior mean E[x0 | c] (Tweedie).
    """
    sch = _schedule(eps_model, schedule)
    x = torch.randn(tuple(shape), generator=generator, device=cond.device, dtype=cond.dtype)
    if hidden is not None and known is not None:
        x = torch.where(hidden, x, known)
    abar = sch.alpha_bars.to(cond.device)
    taus = ddim_timesteps(sch.timesteps, steps)
    first = None
    for i, t in enumerate(taus):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_model(x, tt, cond)
        a_t = abar[t]
        x0 = ((x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-clip, clip)
        if first is None:
            first = x0
        eps = (x - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()  # consistent with the clamped x0
        a_prev = abar[taus[i + 1]] if i + 1 < len(taus) else abar.new_tensor(1.0)
        x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
        if hidden is not None and known is not None:
            x = torch.where(hidden, x, known)
    return (x, first) if return_first_x0 else x
