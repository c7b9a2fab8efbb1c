"""A run's output folder, written along one path by rmm-server's ServerApp and by rmm-simulate.

1. :meth:`RunOutputs.write`: the moment the federation returns, metrics.json, calibration.json,
   run_config.json, model.pt and a first report.md, atomically (server/outputs.py), so the model is on
   disk before anything else runs.
2. A simulation adds its own sections to ``extra`` (pooled test split, oracle, pooled reference) and its
   own figures; a deployment adds nothing.
3. :meth:`RunOutputs.finish`: metrics.json again with ``extra``, the figures the coordinator can draw
   from what it holds (server/run_report.py) plus the caller's, in one order, and report.md/report.html.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .federation import FederationResult
from .outputs import update_metrics, write_outputs
from .plots import Figure
from .run_report import server_figures, write_report

# The order of the report's figures; a figure not listed goes after these, in the order it was drawn.
FIGURE_ORDER = ["km_risk_groups.png", "uncertainty_vs_error.png", "uncertainty_quality.png", "uncertainty_histogram.png",
                "routes_per_site.png", "cindex_by_pattern.png"]


class RunOutputs:
    """The output folder ``out`` of the run whose result is ``result``."""

    def __init__(self, out: str | Path, result: FederationResult) -> None:
        self.out, self.result = Path(out), result

    def write(self, extra: dict[str, Any] | None = None) -> Path:
        """The model, the metrics and a first report, written at once (atomic renames)."""
        return write_outputs(self.out, self.result, extra)

    def update(self, extra: dict[str, Any]) -> dict[str, Any]:
        """metrics.json and calibration.json again with ``extra``; returns the metrics."""
        return update_metrics(self.out, self.result, extra)

    def finish(self, extra: dict[str, Any] | None = None, figures: Iterable[Figure] = (),
               notes: list[str] | None = None) -> tuple[dict[str, Any], list[Figure]]:
        """metrics.json with ``extra``, the coordinator's figures plus ``figures``, and the report;
        returns (metrics, figures in report order)."""
        metrics = self.update(extra or {})
        drawn = server_figures(metrics, self.out) + list(figures)
        ordered = sorted(drawn, key=lambda f: FIGURE_ORDER.index(f.file) if f.file in FIGURE_ORDER else len(FIGURE_ORDER))
        write_report(self.out, metrics, ordered, notes)
        return metrics, ordered
