"""The Flower ServerApp: reads the run config, drives the phases, writes the outputs.

``flwr run .`` uses the module-level ``app`` (config from ``[tool.flwr.app.config]`` plus
``--run-config`` overrides); ``rmm-simulate`` builds one with :func:`make_server_app` and collects
the result in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..core.config import RunConfig
from ..flower.app_keys import APP_KEYS
from ..flower.grid import tune_grid
from .federation import FederationResult, run_federation
from .progress import Progress
from .run_outputs import RunOutputs
from .run_report import DEPLOYMENT_NOTE


def make_server_app(cfg: RunConfig | None = None, *, n_sites: int | None = None,
                    sink: Callable[[FederationResult], None] | None = None, out_dir: str | None = None,
                    resume: bool | None = None, progress: Progress | None = None) -> ServerApp:
    """The ServerApp; with ``sink`` it hands the result over instead of writing outputs (rmm-simulate),
    ``progress`` hears the phases and rounds (default: Flower log records, streamed by ``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = dict(context.run_config)
        run_cfg = cfg or RunConfig.from_flat(rc, ignore=APP_KEYS)
        if run_cfg.flower_tuning:  # deployment: 0.2 s reply polls, packed weights; no-op in simulation
            grid = tune_grid(grid, pack=run_cfg.pack_weights)
        sites = n_sites or int(rc.get("num-sites", 0)) or len(list(grid.get_node_ids())) or 1
        out = Path(out_dir or str(rc.get("out-dir", "runs/flwr")))
        again = bool(rc.get("resume", False)) if resume is None else resume
        names = frozenset(x.strip() for x in str(rc.get("expected-sites", "")).split(",") if x.strip()) or None
        result = run_federation(grid, run_cfg, n_sites=sites, checkpoint=out / "checkpoint.pt", resume=again,
                                expected_sites=names, progress=progress)
        if sink is not None:
            sink(result)
            return
        outputs = RunOutputs(out, result)
        outputs.write()
        say = (progress or Progress()).phase
        say(f"outputs written to {out}")
        _, figures = outputs.finish(notes=[DEPLOYMENT_NOTE])
        say(f"report: {out / 'report.md'} and report.html with {len(figures)} figures "
            "(summed histograms and per-site counts only: the server has no patient rows)")

    return app


app = make_server_app()
