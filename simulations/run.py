"""One simulated study: the Flower simulation engine run, then simulation-only steps, then the report.

The federation's outputs (metrics.json, calibration.json, run_config.json, model.pt, a first
report.md) are written the moment the ServerApp returns. The later steps each add to them:
pooled test split (pooled C-index, exact theta, patient-level arrays), oracle C-index, pooled
reference, visual report. A step that raises is recorded in metrics.json (``failed_steps``) with its
traceback in OUT/flower.log; the steps after it still run when they can, and the study reports the
failure (:class:`StudyStepError`) after writing everything it could.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..client.client_app import make_client_app, site_dir
from ..core.config import RunConfig
from ..core.errors import RmmError
from ..core.data.site_data import SiteData
from ..server.federation import FederationResult
from ..server.flower_log import QuietRun
from ..server.plots import Figure
from ..server.progress import Progress
from ..server.run_outputs import RunOutputs
from ..server.server_app import make_server_app
from .faults import fault_mod
from .optional_inputs import Truth
from .oracle import cohort_figures, oracle_figures
from .pooled import train_pooled_reference
from .pooled_test import PooledTest, pooled_test_split
from .study_figures import simulation_figures


class StudyStepError(RmmError):
    """A step after the federation failed; the federation's outputs are on disk."""

    def __init__(self, out: Path, failed: dict[str, str]) -> None:
        self.failed = failed
        steps = "; ".join(f"{s}: {why}" for s, why in failed.items())
        super().__init__(f"step(s) after training failed ({steps}). metrics.json and model.pt are in {out}; "
                         f"traceback in {out / 'flower.log'}")


def run_flower(cfg: RunConfig, paths: list[Path], out: Path, resume: bool = False,
               fault: tuple[str, str] | None = None, *, progress: Progress | None = None,
               ray_init: dict | None = None, policy: Path | None = None) -> FederationResult:
    """Run the ServerApp and one ClientApp per site on Flower's simulation engine (in-process).

    ``flwr.simulation.run_simulation`` is deprecated in Flower 1.41 but is its only in-process entry
    point (``flwr run`` needs a SuperLink process and ships the app as a package); docs/console.md."""
    from flwr.simulation import run_simulation

    holder: list[FederationResult] = []
    sites = [str(p) for p in paths]
    mods = [fault_mod(fault[0], fault[1], lambda ctx: site_dir(ctx, sites))] if fault else []
    gpus = 1.0 / len(paths) if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else 0.0
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus},
               "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, **(ray_init or {})}}
    run_simulation(server_app=make_server_app(cfg, n_sites=len(paths), sink=holder.append, out_dir=str(out),
                                              resume=resume, progress=progress),
                   client_app=make_client_app(sites, ledger_dir=str(out / "ledger"), extra_mods=mods,
                                              policy=str(policy.resolve()) if policy else None,
                                              state_root=str(out / "site-state"),
                                              simulated_seeded_noise=cfg.dp.seeded_noise),
                   num_supernodes=len(paths), backend_config=backend)
    if not holder:
        raise RuntimeError(f"the Flower simulation ended without a result; see {out / 'flower.log'}")
    return holder[0]


@dataclass
class Study:
    """What the later steps share."""

    cfg: RunConfig
    res: FederationResult
    sites: list[SiteData]
    dims: dict[str, int]
    paths: list[Path]
    out: Path
    truth: Truth | None
    extra: dict = field(default_factory=dict)
    test: PooledTest | None = None
    figures: list[Figure] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    outputs: RunOutputs | None = None


def step_pooled_test(st: Study) -> None:
    st.test = pooled_test_split(st.res, st.paths, st.cfg)
    st.extra["federated_pooled_c_index"] = st.test.c_index()
    st.extra["theta_exact_pooled"] = st.test.theta_exact(st.cfg.quantile)
    if st.test.cox_risk is not None:
        st.extra["cox_core_pooled_c_index"] = st.test.c_index(st.test.cox_risk)
    if st.test.residual_risk is not None:
        st.extra["cox_core_residual_pooled_c_index"] = st.test.c_index(st.test.residual_risk)
    st.extra["pooled_referred"] = st.test.referred_figures()


def step_oracle(st: Study) -> None:
    if st.truth is None:
        return
    if st.test is None:
        raise RuntimeError("needs the pooled test split, which failed")
    st.extra["oracle"] = oracle_figures(st.truth, [s.site for s in st.sites], st.test)


def step_pooled_reference(st: Study) -> None:
    t = time.perf_counter()
    st.extra["pooled_reference"] = train_pooled_reference(st.sites, st.dims, st.cfg)
    st.extra.setdefault("timing_s", {})["pooled_reference"] = time.perf_counter() - t


def step_report(st: Study) -> None:
    own = simulation_figures(st.test, st.res, st.out) if st.test is not None else []  # KM, sigma^2 vs error, by pattern
    st.metrics, st.figures = st.outputs.finish(st.extra, own)


Step = tuple[str, Callable[[Study], None], str]  # name, function, what the progress line says
DEFAULT_STEPS: list[Step] = [
    ("pooled test split", step_pooled_test, "pooled test split: federated C-index {c} (simulation only)"),
    ("oracle", step_oracle, "oracle: C-index of the true risk {o}"),
    ("pooled reference", step_pooled_reference, "pooled reference: C-index {p} (simulation only)"),
]


def _line(template: str, extra: dict) -> str:
    def g(x):
        return "n/a" if x is None else f"{x:.3f}"
    return template.format(c=g(extra.get("federated_pooled_c_index")), o=g(extra.get("oracle", {}).get("c_index")),
                           p=g(extra.get("pooled_reference", {}).get("c_index")))


def run_study(cfg: RunConfig, cohort: Path, paths: list[Path], sites: list[SiteData], dims: dict[str, int],
              out: Path, *, pooled: bool = True, t0: float | None = None, resume: bool = False,
              fault: tuple[str, str] | None = None, truth: Truth | None = None, progress: Progress | None = None,
              quiet: QuietRun | None = None, steps: list[Step] | None = None,
              policy: Path | None = None) -> Study:
    """The whole study; raises :class:`StudyStepError` after writing everything if a later step failed."""
    t0 = time.perf_counter() if t0 is None else t0
    progress = progress or Progress()
    res = run_flower(cfg, paths, out, resume, fault, progress=progress,
                     ray_init=quiet.ray_init_args() if quiet else None, policy=policy)
    # the run's config as the federation resolved it (widths, DP time cuts, whether the Cox core ran):
    # the simulation-only steps rebuild the sites' models from it
    st = Study(res.config, res, sites, dims, paths, out, truth)
    cohort_meta = cohort_figures(cohort)  # the generator's own measurements (synthetic cohorts only)
    if cohort_meta:
        st.extra["cohort"] = cohort_meta
    st.extra["timing_s"] = {"federation": time.perf_counter() - t0}
    st.outputs = RunOutputs(out, res)
    st.outputs.write(st.extra)  # the model and metrics exist: on disk before anything else runs
    progress.phase(f"federated model and metrics written to {out}")
    todo = list(DEFAULT_STEPS if steps is None else steps)
    if not pooled:
        todo = [s for s in todo if s[1] is not step_pooled_reference]
    for name, fn, template in todo + [("report", step_report, "report: {n} figures, report.md and report.html")]:
        try:
            if fn is step_report:
                st.extra["timing_s"]["total"] = time.perf_counter() - t0
                if st.failed:
                    st.extra["failed_steps"] = dict(st.failed)
            fn(st)
            if not (fn is step_oracle and truth is None):
                progress.phase(template.format(n=len(st.figures)) if fn is step_report else _line(template, st.extra))
        except Exception as err:  # a later step must not cost the run: record, go on, report at the end
            st.failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            with open(out / "flower.log", "a", encoding="utf-8") as fh:
                fh.write(f"\n[rmm] step '{name}' failed:\n{traceback.format_exc()}\n")
            progress.phase(f"{name}: FAILED ({st.failed[name]})")
    st.extra["timing_s"]["total"] = time.perf_counter() - t0
    if st.failed:
        st.extra["failed_steps"] = dict(st.failed)
    try:
        st.metrics = st.outputs.update(st.extra)
    except Exception as err:  # metrics.json from an earlier write stays
        st.failed.setdefault("metrics update", f"{type(err).__name__}: {err}")
    if st.failed:
        raise StudyStepError(out, st.failed)
    return st
