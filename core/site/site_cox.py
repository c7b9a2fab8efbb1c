"""One site's part of the Cox core (core/survival/cox_core.py): its design and its stratum's sums.

The design is the one Tier 1's fixed Cox term reads (:meth:`Tier1Model.linear_input` with
``model.cox-core``), computed by the model's own code, so the fitted coefficients mean the same thing at
the site, at the server and in rmm-predict.
"""

from __future__ import annotations

import numpy as np
import torch

from ..messages import metric_names as M
from ..survival.cox_newton import stratum_sums
from ..errors import RmmError
from ..privacy.site_policy import PolicyViolation
from ..data.tensors import SiteTensors, patients_per_batch
from ..model.tier1 import Tier1Model, bag_means


class CoxCoreError(RmmError):
    """The run cannot ask this site for Cox core sums as sent (wrong run setup or coefficients)."""


@torch.no_grad()
def cox_design(model: Tier1Model, data: SiteTensors) -> np.ndarray:
    """[N, sum D_k + K] float64: each modality's bag mean (0 where absent) and presence flag."""
    if not model.cfg.cox_core or model.linear is None:
        raise CoxCoreError("this run's setup has model.cox-core = false, so there is no Cox core to fit. Fix: the "
                           "coordinator sets model.cox-core = true for the run, or does not ask the cox phase")
    rows = []
    batch = patients_per_batch(data, 4096)
    for s in range(0, len(data), batch):
        sl = slice(s, s + batch)
        means = bag_means([x[sl] for x in data.x], [m[sl] for m in data.inst_mask])
        rows.append(model.linear_input(means, data.present[sl], None).double().cpu())
    width = model.linear.weight.shape[1]
    return torch.cat(rows).numpy() if rows else np.zeros((0, width))


def cox_release(model: Tier1Model, data: SiteTensors, coef: np.ndarray, split: str, k: int
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The stratum's sums at raw-design coefficients ``coef`` over the whole ``split`` (>= ``k`` patients):
    training: log-likelihood, gradient, Hessian, column sums and sums of squares; validation: the log
    partial likelihood only. Returns (arrays, scalars) for :class:`~rmmfed.core.messages.protocol.CoxReply`."""
    n = len(data)
    if n < k:
        raise PolicyViolation("min-patients", f"the Cox core's {split} sums would come from fewer patients than "
                              "this site's floor", "the coordinator asks the cox phase of sites with enough patients")
    x = cox_design(model, data)
    if coef.shape != (x.shape[1],):
        raise CoxCoreError(f"the Cox core's coefficients have shape {coef.shape}, the design has {x.shape[1]} "
                           "columns. Fix: send one coefficient per column of Tier 1's linear term")
    s = stratum_sums(x, data.time.cpu().numpy(), data.event.cpu().numpy(), coef)
    metrics = {M.COX_LOGLIK: float(s.loglik), M.COX_N: float(n), M.COX_EVENTS: float(s.events)}
    if split == "val":
        return {}, metrics
    return {"grad": s.grad, "hess": s.hess, "sum": x.sum(axis=0), "sumsq": (x ** 2).sum(axis=0)}, metrics
