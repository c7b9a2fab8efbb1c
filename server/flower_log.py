"""Where Flower's and Ray's own output goes during a run: ``OUT/flower.log`` unless ``--verbose``.

Measured with flwr 1.41 / ray on this project's machines (docs/console.md):
- Flower logs through the ``flwr`` logger, whose console handler (``flwr.common.logger.console_handler``)
  is installed at import time: it is detached here and a FileHandler on OUT/flower.log takes every record.
- Ray prints from the driver (a FutureWarning at ``ray.init``, its logger) and forwards every actor's
  stdout/stderr (the ClientApps' Flower records) to the driver's stdout/stderr, from threads and from
  C++. Only redirecting file descriptors 1 and 2 catches all of it; the console keeps duplicates of the
  original descriptors (:attr:`QuietRun.out` / :attr:`QuietRun.err`) for rmm's own lines and bars.
- Python warnings raised meanwhile go to the log file as well.

What still reaches the console: rmm's own warnings and errors logged through the ``flwr`` logger by
rmm's modules (a refused site, a site that did not answer), each distinct message once, and Flower's
ERROR records (first line). Flower's deprecation notice for ``run_simulation`` is hidden on purpose
(docs/console.md says why) and stays in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

_ROOT = Path(__file__).resolve().parents[1]
OWN_DIRS = tuple(str(_ROOT / d) + os.sep for d in ("core", "client", "server", "simulations"))  # rmm's modules
HIDDEN = ("The `run_simulation` function is deprecated",)  # rmm keeps it on purpose: docs/console.md


def _is_hidden(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return any(h in text for h in HIDDEN)


class OnceConsole(logging.Handler):
    """Shows rmm's WARNING+ records and Flower's ERROR+ records on ``stream``, each message once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        ours = os.path.realpath(record.pathname).startswith(OWN_DIRS)  # symlinked checkouts too
        if _is_hidden(record) or not (ours or record.levelno >= logging.ERROR):
            return
        text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        if not text or text in self.seen:
            return
        self.seen.add(text)
        label = "warning" if record.levelno < logging.ERROR else "error"
        self.stream.write(f"[rmm] {label}: {text}" + ("" if ours else " (Flower; see flower.log)") + "\n")
        self.stream.flush()


class HideFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_hidden(record)


class QuietRun:
    """Context manager: Flower/Ray output to ``log_path`` (or, verbose, to the console as before)."""

    def __init__(self, log_path: str | Path, *, verbose: bool = False) -> None:
        self.path = Path(log_path)
        self.verbose = verbose
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._undo: list = []

    def ray_init_args(self) -> dict:
        """Ray settings for the simulation backend: quiet unless verbose (actor output is still captured)."""
        return {} if self.verbose else {"logging_level": "ERROR", "log_to_driver": True}

    def __enter__(self) -> "QuietRun":
        from flwr.common import logger as flwr_logger  # installs Flower's console handler

        with contextlib.suppress(ImportError):
            import ray  # noqa: F401  (its logger and handlers exist before the streams move)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flower = logging.getLogger("flwr")
        file_handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        flower.addHandler(file_handler)
        self._undo.append(lambda: (flower.removeHandler(file_handler), file_handler.close()))
        if self.verbose:
            hide = HideFilter()
            flwr_logger.console_handler.addFilter(hide)
            self._undo.append(lambda: flwr_logger.console_handler.removeFilter(hide))
            return self
        self._redirect_fds()
        once = OnceConsole(self.err)
        old = list(flower.handlers)
        flower.handlers = [h for h in old if h is not flwr_logger.console_handler] + [once]
        self._undo.append(lambda: setattr(flower, "handlers", [h for h in flower.handlers if h is not once]
                                          + ([flwr_logger.console_handler] if flwr_logger.console_handler in old else [])))
        ray_logger = logging.getLogger("ray")
        level = ray_logger.level
        ray_logger.setLevel(logging.ERROR)
        self._undo.append(lambda: ray_logger.setLevel(level))
        shown = warnings.showwarning

        def to_log(message, category, filename, lineno, file=None, line=None):
            flower.log(logging.INFO, "python warning: %s",
                       warnings.formatwarning(message, category, filename, lineno, line).strip())

        warnings.showwarning = to_log
        self._undo.append(lambda: setattr(warnings, "showwarning", shown))
        return self

    def _redirect_fds(self) -> None:
        """Point fds 1 and 2 and sys.stdout/stderr at the log; keep duplicates of the originals for the console."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        log_file = open(self.path, "a", encoding="utf-8", buffering=1)
        saved = [os.dup(1), os.dup(2)]
        self.out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
        self.err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8")
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        old_streams = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log_file

        def undo() -> None:
            for stream in (sys.stdout, sys.stderr, self.out, self.err):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sys.stdout, sys.stderr = old_streams
            for stream in (self.out, self.err):
                with contextlib.suppress(Exception):
                    stream.close()
            self.out, self.err = sys.stdout, sys.stderr
            log_file.close()

        self._undo.append(undo)

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()
