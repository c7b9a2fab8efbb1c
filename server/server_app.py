"""The Flower ServerApp: reads the run config, drives the phases, writes the outputs.

``flwr run .`` uses the module-level ``app`` (config from ``[tool.flwr.app.config]`` plus
``--run-config`` overrides); ``rmm-simulate`` builds one with :func:`make_server_app` and collects
the result in-process.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..core.config import RunConfig
from .federation import FederationResult, run_federation
from .outputs import write_outputs

APP_KEYS = ("data-dir", "out-dir", "num-sites")  # app-level keys, not part of RunConfig


def make_server_app(cfg: RunConfig | None = None, *, n_sites: int | None = None,
                    sink: Callable[[FederationResult], None] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = dict(context.run_config)
        run_cfg = cfg or RunConfig.from_flat(rc, ignore=APP_KEYS)
        sites = n_sites or int(rc.get("num-sites", 0)) or len(list(grid.get_node_ids())) or 1
        result = run_federation(grid, run_cfg, n_sites=sites)
        if sink is not None:
            sink(result)
        else:
            write_outputs(str(rc.get("out-dir", "runs/flwr")), result)

    return app


app = make_server_app()
