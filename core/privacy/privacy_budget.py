"""A site's lifetime privacy budget, held on the site's disk: every run's epsilon counts against it.

Flower's per-run state starts empty in a new run, so a budget kept there resets whenever the
coordinator starts a new run id. This file does not: ``privacy-budget.json`` in the site's state
folder records, per run id, the epsilon (and delta) that run may spend. A run reserves its whole
planned cost at setup, before any round computes; the reservation stands whether or not the run
finishes, because a coordinator that aborts a run after one round has still seen that round.

Composition across runs is basic (epsilons and deltas add up): conservative, and independent of
how each run spent its share. The same run id asking again reserves the larger of its two plans,
never the sum, so a retried setup costs nothing twice.

The same file counts the site's exact test evaluations (``"evaluated": true`` on a run): the final
evaluation is not noised, so the site answers at most ``max-evaluations`` of them in its life, one per
run, whatever run ids the coordinator makes up (:meth:`PrivacyBudget.count_evaluation`).

File layout (JSON, rewritten atomically under a lock; the site admin may read it any time)::

    {"total-epsilon": 50.0, "max-evaluations": 5,
     "runs": {"<run id>": {"epsilon": 12.0, "delta": 1e-05, "first": "<UTC ISO time>",
                           "last": "<UTC ISO time>", "what": "tier1+tier2 DP-SGD",
                           "items": {"dp-sgd": 8.0, "release:calibration:<grid digest>": 1.0, ...},
                           "evaluated": true}}}
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import RmmError
from .site_policy import PolicyViolation

BUDGET_FILE = "privacy-budget.json"


class BudgetFileError(RmmError):
    """The budget file cannot be read or written: the site refuses DP runs until it can."""


@dataclass(frozen=True)
class BudgetState:
    """What the file says: per run id (epsilon, delta, first, last, what)."""

    runs: dict[str, dict] = field(default_factory=dict)

    @property
    def epsilon_spent(self) -> float:
        return float(sum(float(r["epsilon"]) for r in self.runs.values()))

    @property
    def delta_spent(self) -> float:
        return float(sum(float(r.get("delta", 0.0)) for r in self.runs.values()))

    @property
    def evaluations(self) -> int:
        """Exact test evaluations answered, over every run."""
        return sum(1 for r in self.runs.values() if r.get("evaluated") is True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_budget(path: str | Path) -> BudgetState:
    """The budget file at ``path`` (a missing file is an empty budget)."""
    p = Path(path)
    if not p.exists():
        return BudgetState()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        runs = {str(k): dict(v) for k, v in data.get("runs", {}).items()}
        for v in runs.values():
            if not math.isfinite(float(v["epsilon"])):
                raise ValueError("non-finite epsilon")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BudgetFileError(f"{p}: the privacy budget file cannot be read ({err}). Fix: restore it from the "
                              "site's backup; deleting it would reset the site's budget, which only the site's "
                              "privacy officer may decide") from None
    return BudgetState(runs)


class PrivacyBudget:
    """The budget in ``folder/privacy-budget.json`` against a lifetime cap of ``total_epsilon``."""

    def __init__(self, folder: str | Path, total_epsilon: float) -> None:
        self.folder, self.total = Path(folder), float(total_epsilon)
        self.path = self.folder / BUDGET_FILE

    def state(self) -> BudgetState:
        return read_budget(self.path)

    def left(self) -> float:
        return max(self.total - self.state().epsilon_spent, 0.0)

    def reserve(self, run_id: str, epsilon: float, delta: float, what: str, item: str = "dp-sgd",
                instance: str | None = None) -> float:
        """Reserve ``epsilon`` for ``item`` of ``run_id`` (the larger of this and an earlier reservation of
        the same item; a run's items add up: its DP-SGD plan, each noised release); raises
        :class:`PolicyViolation` under ``dp.total-epsilon`` when the site's total would pass the cap,
        before anything is computed. Returns the epsilon left after the reservation. ``instance``: see
        :meth:`entry_key`."""
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise PolicyViolation("dp.max-epsilon", "the run's privacy cost is not a finite positive epsilon",
                                  "the coordinator sets a finite dp.target-epsilon")
        with self._locked() as (state, top):
            runs = dict(state.runs)
            key = self.entry_key(runs, run_id, instance)
            old = runs.get(key)
            before = float(old["epsilon"]) if old else 0.0
            items = dict(old.get("items", {})) if old else {}
            if old and not items and before > 0:
                items = {"dp-sgd": before}
            items[item] = max(float(items.get(item, 0.0)), float(epsilon))
            new = float(sum(items.values()))
            spent_after = state.epsilon_spent - before + new
            if spent_after > self.total * (1 + 1e-9):
                raise PolicyViolation("dp.total-epsilon", "this run's planned epsilon would take the site past its "
                                      "lifetime privacy budget",
                                      "the coordinator plans a smaller dp.target-epsilon; the site's privacy officer "
                                      "decides whether to raise dp.total-epsilon")
            runs[key] = {**self._entry(old, what, instance), "epsilon": new,
                         "delta": max(float(delta), float(old["delta"]) if old else 0.0), "items": items}
            self._write({**top, "total-epsilon": self.total, "runs": runs})
            return self.total - spent_after

    def count_evaluation(self, run_id: str, cap: int, instance: str | None = None) -> int:
        """Count ``run_id``'s exact test evaluation against the site's lifetime ``cap`` (policy
        ``max-evaluations``), before it is computed: the same run asking again counts once; a new run past
        the cap raises :class:`PolicyViolation` under ``max-evaluations``. Returns the evaluations left.
        ``instance``: see :meth:`entry_key`."""
        with self._locked() as (state, top):
            runs = dict(state.runs)
            key = self.entry_key(runs, run_id, instance)
            old = runs.get(key)
            used = state.evaluations
            if not (old and old.get("evaluated") is True):
                if used >= cap:
                    raise PolicyViolation("max-evaluations", "this site has answered as many exact test evaluations "
                                          "as its policy allows in its lifetime",
                                          "the site's privacy officer decides whether to raise max-evaluations; a "
                                          "coordinator cannot reset it with a new run")
                used += 1
                runs[key] = {**self._entry(old, "test evaluation", instance), "epsilon": float(old["epsilon"]) if old
                             else 0.0, "delta": float(old.get("delta", 0.0)) if old else 0.0, "evaluated": True}
                self._write({**top, "total-epsilon": self.total, "max-evaluations": int(cap), "runs": runs})
            return max(int(cap) - used, 0)

    @staticmethod
    def entry_key(runs: dict[str, dict], run_id: str, instance: str | None) -> str:
        """The file's entry for ``run_id`` as this site served it. The coordinator numbers runs and may number
        a new run like an old one; the site's own ``instance`` token (drawn when it first served the run, kept
        with the run's pins) tells them apart: another instance under a run id already in the file gets an
        entry of its own (``<run id>#2`` ...), so reusing a run id spends and counts afresh. Without a token
        (direct callers), the run id itself."""
        run_id = str(run_id)
        if instance is None:
            return run_id
        for key, r in runs.items():
            if r.get("instance") == instance:
                return key
        key, n = run_id, 1
        while key in runs:
            n += 1
            key = f"{run_id}#{n}"
        return key

    @staticmethod
    def _entry(old: dict | None, what: str, instance: str | None = None) -> dict:
        """A run's entry with ``last`` now, keeping what the file already says of it."""
        now = _now()
        return {**(old or {}), "first": old["first"] if old else now, "last": now,
                "what": old["what"] if old and old.get("what") else what,
                **({"instance": instance} if instance is not None else {})}

    @contextmanager
    def _locked(self) -> Iterator[tuple[BudgetState, dict]]:
        """The file's state and its top-level keys, under an exclusive lock held until the block ends."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / (BUDGET_FILE + ".lock"), "a+")
        except OSError as err:
            raise BudgetFileError(f"{self.folder}: the site's state folder cannot be written ({err.strerror or err}). "
                                  "Fix: give rmm-client a writable --state-dir (it holds the privacy budget)") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            top = {}
            if self.path.exists():
                top = {k: v for k, v in json.loads(self.path.read_text(encoding="utf-8")).items() if k != "runs"}
            yield state, top

    def _write(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".budget-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
