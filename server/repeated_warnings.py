"""Warnings that can come back every round, said at most twice: at once, and with a count when the phase ends.

A site whose policy refuses every validation round would otherwise print the same line each round
("validation round N: 1 refused ..." 20 times). :class:`RepeatedWarnings` logs the first occurrence of
each kind immediately, so that an operator sees it while the run goes on, counts the rounds in which it
came back, and :meth:`RepeatedWarnings.summary` logs one line per kind that came back at the end of the
phase (a kind seen in one round only was said in full the first time)::

    validation round 3: 1 site refused by its site policy (min-patients); the score uses the others ...
    ...
    validation: 1 site refused by its site policy in 20 of 30 rounds (min-patients)

A kind is the message without its round number: the caller passes the two apart.
"""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log


class RepeatedWarnings:
    """Per-round warnings of one phase (``scope`` names it in the summary, e.g. ``"validation"``)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.rounds: set[int] = set()  # every round this phase looked at, warned or not
        self.seen: dict[tuple[str, str], set[int]] = {}  # (kind, detail) -> its rounds, in order of first occurrence

    def round(self, rnd: int) -> None:
        """Round ``rnd`` was looked at (the denominator of the summary's count)."""
        self.rounds.add(rnd)

    def warn(self, rnd: int, kind: str, detail: str = "", then: str = "") -> None:
        """``kind`` (``detail`` in brackets after it) happened in round ``rnd``: logged now if it is new,
        with ``then`` appended (what the phase does about it), else only counted."""
        self.round(rnd)
        if (kind, detail) not in self.seen:
            self.seen[kind, detail] = set()
            text = f"{self.scope} round {rnd}: {kind}" + (f" ({detail})" if detail else "")
            log(WARNING, "%s%s (if it comes back, a count follows at the end of the phase)", text,
                f"; {then}" if then else "")
        self.seen[kind, detail].add(rnd)

    def summary_lines(self) -> list[str]:
        """One line per kind that occurred in more than one round, with the number of rounds it occurred in."""
        total = len(self.rounds)
        return [f"{self.scope}: {kind} in {len(rounds)} of {total} round{'' if total == 1 else 's'}"
                + (f" ({detail})" if detail else "") for (kind, detail), rounds in self.seen.items()
                if len(rounds) > 1]

    def summary(self) -> None:
        """Log :meth:`summary_lines` and start counting afresh."""
        for line in self.summary_lines():
            log(WARNING, "%s", line)
        self.rounds.clear()
        self.seen.clear()


def sites(n: int, what: str) -> str:
    """``"1 site refused by its site policy"`` / ``"2 sites refused by their site policy"``: ``what`` may hold
    ``{its}``."""
    return f"{n} site{'' if n == 1 else 's'} {what.format(its='its' if n == 1 else 'their')}"
