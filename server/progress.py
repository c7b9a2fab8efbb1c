"""How the phase loop of a run reports what it is doing.

:func:`~rmmfed.server.federation.run_federation` calls a :class:`Progress`: one line per phase, and
the start, each round and the end of a training phase. The base class writes Flower log records
(in a deployment they reach the coordinator through ``flwr run --stream``, where ``rmm-server run``
reads them back, see :func:`parse_round_line`); :class:`BarProgress` draws one tqdm bar per training
phase with its ETA and the current federated validation C-index (``rmm-simulate``, the evidence
commands). Core code never prints: it hands numbers to whichever Progress the caller chose.
"""

from __future__ import annotations

import re
import sys
from logging import INFO
from typing import TextIO

from flwr.common.logger import log

from ..core.messages import metric_names as M

TAG = "[rmm]"  # marks rmm's own log lines among Flower's (rmm-server run filters on it)
_ROUND = re.compile(r"\[rmm\] (?P<phase>\w+) round (?P<rnd>\d+)/(?P<total>\d+)"
                    r"(?:.*?val C-index (?:\(round \d+\) )?(?P<val>[0-9.]+|n/a))?")


def round_line(phase: str, rnd: int, total: int, info: dict) -> str:
    """One round as text: loss terms, sites, seconds and (Tier 1) the federated validation C-index."""
    dp = M.DP_EPSILON in info  # a DP-SGD round's reply carries no loss (it would not be private)
    if phase == "tier1":
        loss = (f"loss {info.get(M.TRAIN_LOSS, float('nan')):.4f} (cox {info.get(M.TRAIN_TASK, float('nan')):.4f}, "
                f"rec {info.get(M.TRAIN_REC, float('nan')):.4f})")
    else:
        t2 = {k: info.get(f"{M.TIER2_PREFIX}{k}", float("nan")) for k in ("loss", "ddpm", "cons")}
        loss = f"loss {t2['loss']:.4f} (ddpm {t2['ddpm']:.4f}, cons {t2['cons']:.4f})"
    if dp and M.TRAIN_LOSS not in info and f"{M.TIER2_PREFIX}loss" not in info:
        loss = f"DP-SGD epsilon {info[M.DP_EPSILON]:.3g} (no loss is sent)"
    val = info.get("val-c-index")
    of = f"(round {info['val-round']}) " if info.get("val-round", rnd) != rnd else ""  # scored with the next round
    shown = "" if val is None else f" val C-index {of}{'n/a' if val != val else f'{val:.4f}'}"
    failed = f" failed {info['failed']}" if info.get("failed") else ""
    if info.get("val-recovery-mse") is not None:  # Tier 2: masked validation, Tier 1's figure beside it
        shown = (f" val recovery MSE {info['val-recovery-mse']:.4f} (Tier 1 {info['val-recovery-mse-tier1']:.4f})"
                 f"{shown} (Tier 1 {info.get('val-c-index-tier1', float('nan')):.4f})")
    return (f"{TAG} {phase} round {rnd}/{total}: {loss} sites {info.get('sites', '?')}{failed}"
            f" {info.get('seconds', float('nan')):.2f}s{shown}")


def parse_round_line(line: str) -> tuple[str, int, int, float | None] | None:
    """(phase, round, total, validation C-index or None) from a :func:`round_line` found in ``line``."""
    m = _ROUND.search(line)
    if not m:
        return None
    val = m.group("val")
    return m.group("phase"), int(m.group("rnd")), int(m.group("total")), (
        float(val) if val not in (None, "n/a") else None)


class Progress:
    """Reports as Flower log records (the ServerApp's default, e.g. in a deployment)."""

    def phase(self, text: str) -> None:
        """A phase finished (or a notable step happened): one line."""
        log(INFO, "%s %s", TAG, text)

    def rounds_start(self, phase: str, total: int, done: int = 0) -> None:
        """A training phase of ``total`` rounds starts (``done`` already completed before a resume)."""

    def round_end(self, phase: str, rnd: int, total: int, info: dict) -> None:
        """Round ``rnd`` ended (after its validation, when there is one)."""
        log(INFO, "%s", round_line(phase, rnd, total, info))

    def rounds_end(self, phase: str) -> None:
        """The training phase is over."""


class BarProgress(Progress):
    """One line per phase and one tqdm bar per training phase, on ``stream`` (default: the real stderr)."""

    LABELS = {"tier1": "Tier 1 rounds", "tier2": "Tier 2 rounds"}

    def __init__(self, stream: TextIO | None = None, out: TextIO | None = None) -> None:
        self.stream = stream or sys.__stderr__
        self.out = out or sys.__stdout__
        self.bar = None

    def phase(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"{TAG} {text}", file=self.out)
        else:
            print(f"{TAG} {text}", file=self.out, flush=True)

    def rounds_start(self, phase: str, total: int, done: int = 0) -> None:
        from tqdm import tqdm

        self.out.flush()
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, initial=done, desc=self.LABELS.get(phase, phase), unit="round",
                        file=self.stream, dynamic_ncols=tty, ncols=None if tty else 100,
                        mininterval=0.5 if tty else 30.0, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}{postfix}]")

    def round_end(self, phase: str, rnd: int, total: int, info: dict) -> None:
        if self.bar is None:
            return
        val = info.get("val-c-index")
        post = {}
        if val is not None and val == val:  # the round it scored, when it arrived with a later round
            post["val C-index"] = f"{val:.3f}" + (f" (round {info['val-round']})" if info.get("val-round", rnd) != rnd else "")
        loss = info.get(M.TRAIN_LOSS, info.get(f"{M.TIER2_PREFIX}loss"))
        if loss is not None:
            post["loss"] = f"{loss:.3f}"
        if info.get("failed"):
            post["failed sites"] = info["failed"]
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(max(0, rnd - self.bar.n))

    def rounds_end(self, phase: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
