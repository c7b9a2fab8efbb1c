"""The researcher's console: Flower/Ray output to flower.log, progress bars, the plots, rmm-server run's filter,
and (slow) the line count of a real run through Flower."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmmfed.server.flower_log import QuietRun
from rmmfed.server.markdown_html import markdown_to_html
from rmmfed.server.progress import BarProgress, parse_round_line, round_line
from rmmfed.server.run_console import StreamConsole


def _readable_png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 10_000, path
    img = mpimg.imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 600  # large enough to read
    assert img[..., :3].std() > 0.05  # not blank
    return img


def test_plot_functions_write_readable_pngs_from_small_synthetic_inputs(tmp_path):
    from rmmfed.server import plots

    rng = np.random.default_rng(0)
    n = 150
    group = rng.integers(0, 3, n)
    time = rng.exponential(10.0 / (1 + 2 * group))  # higher group, shorter survival
    event = (rng.random(n) < 0.8).astype(int)
    km = plots.km_by_risk_group(time, event, group, ["low", "intermediate", "high"], tmp_path)
    p_value = float(km.caption.rsplit("p = ", 1)[1].rstrip("."))
    assert p_value < 0.01  # clearly separated groups
    sigma2 = rng.lognormal(-5, 0.5, 300)
    err = sigma2 * 100 + rng.normal(0, 0.05, 300)
    unc = plots.uncertainty_vs_error(sigma2, err, np.array(["A", "B"] * 150), float(np.quantile(sigma2, 0.95)), tmp_path)
    assert "Spearman rho = 0.9" in unc.caption or "Spearman rho = 1.0" in unc.caption
    edges = np.concatenate([[0.0], np.geomspace(1e-4, 1e-1, 40), [np.inf]])
    counts = np.histogram(sigma2, bins=edges)[0]
    hist = plots.summed_histogram(edges, counts, 0.01, 0.95, tmp_path)
    routes = plots.routes_per_site({"A": {"tier1": 90, "tier2": 8, "abstain": 2}, "B": {"tier1": 40, "tier2": 10, "abstain": 0}},
                                   {"A": 0.08, "B": 0.2}, tmp_path)
    pattern = plots.cindex_by_pattern(["a+b", "a", "b"], [40, 12, 3], [0.71, 0.64, float("nan")], tmp_path)
    assert "(b)" in pattern.caption  # the pattern too small to score is named, not drawn
    for fig in (km, unc, hist, routes, pattern):
        _readable_png(tmp_path / fig.file)


def test_round_lines_round_trip_through_the_log_parser():
    line = round_line("tier1", 7, 30, {"train-loss": 3.2, "train-task": 2.9, "train-rec": 0.3, "sites": 4,
                                       "seconds": 1.5, "val-c-index": 0.7512})
    assert parse_round_line(f"\x1b[92mINFO \x1b[0m:      {line}") == ("tier1", 7, 30, 0.7512)
    assert parse_round_line(round_line("tier2", 2, 10, {"tier2-loss": 3.0, "sites": 4, "seconds": 2.0})) == ("tier2", 2, 10, None)
    assert parse_round_line("INFO : configure_train: Sampled 4 nodes") is None


def test_the_progress_bar_shows_rounds_and_the_validation_c_index():
    err, out = io.StringIO(), io.StringIO()
    bar = BarProgress(stream=err, out=out)
    bar.phase("handshake: 4 site(s) accepted")
    bar.rounds_start("tier1", 3)
    for rnd, val in ((1, 0.61), (2, 0.66), (3, 0.70)):
        bar.round_end("tier1", rnd, 3, {"val-c-index": val, "train-loss": 4.0})
    bar.rounds_end("tier1")
    assert out.getvalue() == "[rmm] handshake: 4 site(s) accepted\n"
    final = err.getvalue().split("\r")[-1]
    assert "Tier 1 rounds: 100%" in final and "3/3" in final and "val C-index=0.700" in final


def test_flower_and_ray_output_goes_to_the_log_and_rmm_warnings_show_once(tmp_path, capfd):
    from flwr.common.logger import log as flwr_log

    log = tmp_path / "flower.log"
    with QuietRun(log) as quiet:
        flwr_log(logging.INFO, "configure_train: Sampled 4 nodes (out of 4)")
        flwr_log(logging.WARNING, "DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed")
        logging.getLogger("flwr").warning("site C refused: dims differ")  # pathname: this test, not rmm
        for _ in range(2):
            flwr_log(logging.ERROR, "node 7 replied with an error: boom\ntraceback line")
        print("print from a Ray actor, relayed to the driver")
        os.write(2, b"raylet: C++ noise on fd 2\n")
        import warnings
        warnings.warn("Tip: In future versions of Ray", FutureWarning)
        quiet.out.write("[rmm] a phase line\n")
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert "[rmm] a phase line" in console
    assert console.count("node 7 replied with an error: boom") == 1 and "traceback line" not in console
    for noise in ("Sampled 4 nodes", "DEPRECATED", "relayed to the driver", "C++ noise", "Tip: In future", "site C refused"):
        assert noise not in console, noise
    text = log.read_text()
    for kept in ("Sampled 4 nodes", "DEPRECATED FEATURE", "relayed to the driver", "C++ noise", "FutureWarning"):
        assert kept in text, kept
    print("after the run")  # the streams are back
    assert "after the run" in capfd.readouterr().out


def test_rmm_warnings_logged_from_rmm_modules_reach_the_console_once(tmp_path, capfd):
    from rmmfed.server import federation

    with QuietRun(tmp_path / "flower.log"):
        federation.log(logging.WARNING, "site %s refused: %s", "C", "dims differ")  # called from this test file
    assert "site C refused" not in capfd.readouterr().err  # only rmm's modules count as rmm's warnings
    from rmmfed.server.flower_log import OnceConsole

    stream = io.StringIO()
    handler = OnceConsole(stream)
    for _ in range(3):
        record = logging.LogRecord("flwr", logging.WARNING, str(Path(federation.__file__)), 1, "site C refused", (), None)
        handler.emit(record)
    assert stream.getvalue() == "[rmm] warning: site C refused\n"


def test_rmm_server_run_console_filters_the_stream_into_phases_bars_and_warnings(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    console = StreamConsole(tmp_path / "flower.log", out=out, err=err)
    stream = ["\x1b[92mINFO \x1b[0m:      Starting RestrictedDefendedFedAvg strategy:",
              "\x1b[92mINFO \x1b[0m:      [rmm] handshake: 2 site(s) accepted (A, B)",
              "\x1b[92mINFO \x1b[0m:      configure_train: Sampled 2 nodes (out of 2)"]
    stream += [f"\x1b[92mINFO \x1b[0m:      " + round_line("tier1", r, 2, {"train-loss": 1.0, "sites": 2, "seconds": 1.0,
                                                                      "val-c-index": 0.6 + r / 100}) for r in (1, 2)]
    stream += ["\x1b[93mWARNING \x1b[0m:   evaluation: no answer from B"] * 2
    stream += ["\x1b[92mINFO \x1b[0m:      [rmm] calibration: theta = 0.01"]
    for line in stream:
        console.line(line)
    console.close()
    shown = out.getvalue().splitlines()
    assert shown == ["[rmm] handshake: 2 site(s) accepted (A, B)", "[rmm-server] warning: evaluation: no answer from B",
                     "[rmm] calibration: theta = 0.01"]
    assert "val C-index=0.620" in err.getvalue().split("\r")[-1] and "2/2" in err.getvalue()
    assert (tmp_path / "flower.log").read_text().count("\n") == len(stream)


def test_the_html_twin_has_the_tables_images_and_headings_of_the_markdown():
    md = "# rmm run report\n\nText with `code`.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n- one\n- two\n\n![KM](km.png)\n"
    page = markdown_to_html(md)
    assert "<h1>rmm run report</h1>" in page and "<code>code</code>" in page
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>2</td>" in page and "---" not in page
    assert "<li>one</li><li>two</li>" in page and '<img alt="KM" src="km.png">' in page


@pytest.mark.slow
def test_a_default_size_console_run_through_flower_is_short_and_leaves_plots(tmp_path):
    """A real rmm-simulate process (small cohort, few rounds): <= 80 console lines, no deprecation warning."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rmmfed.simulations.simulate", "--out", str(out), "--patients", "300",
           "--set", "rounds=4", "--set", "tier2.rounds=2", "--set", "model.mc-samples=4",
           "--seeded-noise"]  # a test's outcome must not hang on an OS-entropy draw (tiny calibration sets)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert len(console.splitlines()) <= 80, console
    for noise in ("DEPRECATED", "FutureWarning", "configure_train", "Aggregated MetricRecord"):
        assert noise not in console, noise
    assert len(list(out.glob("*.png"))) >= 3 and (out / "report.html").is_file()
    assert "=== rmm summary ===" in done.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert "DEPRECATED FEATURE" in (out / "flower.log").read_text() and m["oracle"]["c_index"] > 0.5


def test_a_dp_round_line_says_no_loss_is_sent_and_names_the_round_its_validation_scored():
    """Under DP-SGD a round's reply carries no loss (not "loss nan"); with 0.9.0 a round's line shows the
    validation of the round before it, which arrived with its training replies, and says so."""
    line = round_line("tier1", 3, 5, {"dp-epsilon": 1.9, "sites": 4, "seconds": 3.1, "val-c-index": 0.5355,
                                      "val-round": 2})
    assert "no loss is sent" in line and "nan" not in line and "val C-index (round 2) 0.5355" in line
    assert parse_round_line(line) == ("tier1", 3, 5, 0.5355)


def test_the_bar_names_the_round_a_validation_scored_when_it_arrived_later():
    err, out = io.StringIO(), io.StringIO()
    bar = BarProgress(stream=err, out=out)
    bar.rounds_start("tier1", 3)
    bar.round_end("tier1", 2, 3, {"val-c-index": 0.61, "val-round": 1})
    bar.rounds_end("tier1")
    assert "val C-index=0.610 (round 1)" in err.getvalue().split("\r")[-1]
