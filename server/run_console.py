"""The console of ``rmm-server run``: what to show of the lines ``flwr run --stream`` relays.

Every line goes to OUT/flower.log. The console gets rmm's phase lines (tagged ``[rmm]`` by
:class:`~rmmfed.server.progress.Progress`), a tqdm bar per training phase driven by its round lines
(ETA, federated validation C-index), and each distinct WARNING / ERROR line once. ``--verbose``
prints every line as it comes, as before.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from .progress import TAG, BarProgress, parse_round_line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^\s*(WARNING|ERROR|CRITICAL)\b\s*:?\s*(.*)$")
_PREFIX = re.compile(r"^\s*(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b\s*:?\s*")


class StreamConsole:
    def __init__(self, log_path: Path, *, verbose: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "a", encoding="utf-8")
        self.verbose = verbose
        self.out = out or sys.stdout
        self.bars = BarProgress(stream=err or sys.stderr, out=self.out)
        self.phase: str | None = None
        self.seen: set[str] = set()

    def line(self, raw: str) -> None:
        self.log.write(raw + "\n")
        self.log.flush()
        if self.verbose:
            print(raw, file=self.out, flush=True)
            return
        text = _ANSI.sub("", raw).rstrip()
        rnd = parse_round_line(text)
        if rnd is not None:
            phase, n, total, val = rnd
            if phase != self.phase:
                self.bars.rounds_end(self.phase or "")
                self.bars.rounds_start(phase, total, n - 1)
                self.phase = phase
            self.bars.round_end(phase, n, total, {} if val is None else {"val-c-index": val})
            if n >= total:
                self.close_bar()
            return
        if TAG in text:
            self.close_bar()
            body = text[text.index(TAG) + len(TAG):].strip()
            self.bars.phase(body)
            return
        m = _LEVEL.match(text)
        if m and m.group(2).strip() and m.group(2).strip() not in self.seen:
            self.seen.add(m.group(2).strip())
            print(f"[rmm-server] {m.group(1).lower()}: {_PREFIX.sub('', text).strip()}", file=self.out, flush=True)

    def close_bar(self) -> None:
        if self.phase is not None:
            self.bars.rounds_end(self.phase)
            self.phase = None

    def close(self) -> None:
        self.close_bar()
        self.log.close()
