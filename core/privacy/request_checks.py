"""The registry of request checks: every check a site runs on a decoded request before it computes
anything, each registered by name (as Opacus registers its module validators). A phase lists the checks
it runs (core/phases/); each raises :class:`~rmmfed.core.privacy.site_policy.PolicyViolation` naming the
policy key, which the ClientApp turns into the fixed refusal of that key.

A check is built by a registered factory, e.g. ``weights("tier2", "tier2_weights", "Tier 2 weights")``,
and called as ``check(request, site)`` with the phase's :class:`~rmmfed.core.phases.site_call.SiteCall`.
The floor on a release's own subgroups (merged bins, nested kept groups) is applied where the release is
computed (core/site/); the checks here are the ones decided from the request alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import RunConfig
from ..survival.survival_metrics import check_baseline
from .request_policy import RequestPolicy
from .site_policy import PolicyViolation

CHECKS: dict[str, Callable[..., Callable]] = {}  # name -> factory of checks


def request_check(name: str) -> Callable[[Callable], Callable]:
    """Register a check factory under ``name`` (the registry lists every check a site can run)."""
    def register(factory: Callable) -> Callable:
        if name in CHECKS:
            raise ValueError(f"request check {name!r} is registered twice")

        @functools.wraps(factory)
        def build(*args, **kwargs) -> Callable:
            check = factory(*args, **kwargs)
            check.check_name = name  # type: ignore[attr-defined]  (what a phase's checks are, by name)
            return check
        CHECKS[name] = build
        return build
    return register


def require_patients(n: int, k: int, what: str) -> None:
    """A release that would cover fewer than the floor's ``k`` patients is refused under min-patients."""
    if n < k:
        raise PolicyViolation("min-patients", f"the {what} would cover {n} patient(s), fewer than this site's "
                              f"floor of {k}", "nothing to do: the run goes on with the other sites")


@request_check("weights")
def weights(which: str, field: str = "weights", what: str = "weights") -> Callable:
    """The request's ``field`` arrays are exactly the run's ``which`` (tier1 / tier2) state dict, every
    value finite and within training.max-weight. An absent optional field (None) passes."""
    def check(req: Any, site: Any) -> None:
        arrays = getattr(req, field)
        if arrays is None:
            return
        RequestPolicy.check_weights({k: tuple(np.shape(v)) for k, v in arrays.items()},
                                    site.session.weight_shapes(which), what)
        site.policy.check_weight_values(arrays, what)
    return check


@request_check("grid")
def grid() -> Callable:
    """The histogram grid: at most max-bins bins, none narrower than min-bin-ratio."""
    def check(req: Any, site: Any) -> None:
        site.policy.check_grid(req.grid)
    return check


@request_check("time-grid")
def time_grid() -> Callable:
    """The Breslow time grid: at most max-bins points."""
    def check(req: Any, site: Any) -> None:
        site.policy.check_time_grid(req.grid)
    return check


@request_check("risk-center")
def risk_center() -> Callable:
    """The centre the Breslow sums subtract from each risk: one finite number within training.max-weight
    (any centre keeps a noised release's privacy: the clipping around it bounds each patient's term)."""
    def check(req: Any, site: Any) -> None:
        c, top = float(req.center), site.policy.policy.training.max_weight
        if not (np.isfinite(c) and abs(c) <= top):
            raise PolicyViolation("training.max-weight", f"the Breslow centre {c!r} is not a finite number within "
                                  f"+-{top:g}", "the coordinator sends the centre of Tier 1's risks (e.g. 0)")
    return check


@request_check("baseline-hazard")
def baseline_hazard() -> Callable:
    """The federated baseline hazard an evaluation carries: a time grid within max-bins, and a valid
    cumulative hazard (finite, non-negative, non-decreasing) on it."""
    def check(req: Any, site: Any) -> None:
        hz = req.fitted.baseline_hazard_
        if hz is not None:
            site.policy.check_time_grid(hz.times)
            check_baseline(hz.times, hz.cumhaz)
    return check


@request_check("round")
def round_number(training: bool = False) -> Callable:
    """The run's round within 1..max-rounds; a training round without DP-SGD refused where DP is required."""
    def check(req: Any, site: Any) -> None:
        cfg = site.session.cfg
        site.policy.check_round(req.run_round, (cfg.dp.enabled if cfg is not None else None) if training else None)
    return check


@request_check("split-floor")
def split_floor(split: str, what: str) -> Callable:
    """The whole ``split`` of the site holds at least the floor's patients."""
    def check(req: Any, site: Any) -> None:
        require_patients(len(site.session.data.indices(split)), site.floor(), what)
    return check


@request_check("setup")
def setup() -> Callable:
    """The run config as sent at setup: DP requirements and knobs, training knobs, planned rounds."""
    def check(req: Any, site: Any) -> None:
        site.policy.check_setup(RunConfig.from_flat(req.config), n_train=len(site.session.data.indices("train")))
    return check


@request_check("cox-query")
def cox_query() -> Callable:
    """A Cox core query: on the train or val split, within max-cox-queries per run, with finite bounded
    coefficients."""
    def check(req: Any, site: Any) -> None:
        site.policy.check_cox_query(req.split)
        site.policy.check_weight_values({"coef": req.coef}, "Cox core coefficients")
    return check
