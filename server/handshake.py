"""Schema handshake: agree on the run's modalities and dims, refuse sites that disagree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SiteInfo:
    node_id: int
    site: str
    schema: dict[str, int | None]
    version: str
    counts: dict[str, int]
    release_epsilon: float = 0.0  # > 0: the site's policy noises its releases (core/privacy/noised_release.py)
    cox: bool = False  # the site's policy takes part in the cox phase (exact Cox core sums)
    validation: bool = False  # the site's policy answers exact per-round validation (opt-in)


@dataclass
class Handshake:
    dims: dict[str, int]
    accepted: list[SiteInfo]
    refused: dict[str, str] = field(default_factory=dict)  # site -> reason (readable by both sides)


def agree(sites: list[SiteInfo], version: str, expected: dict[str, int] | None = None,
          expected_sites: frozenset[str] | None = None) -> Handshake:
    """Run schema = ``expected`` if given, else the union of modalities with each one's majority dim.

    A site is refused when it is not in ``expected_sites`` (when given), when its rmm version differs, or when a modality it holds files for has
    another dim than the run's. A modality a site never acquired (no folder, or an empty one) is fine.
    """
    refused: dict[str, str] = {}
    for s in sites:
        if expected_sites and s.site not in expected_sites:
            refused[s.site] = (f"site '{s.site}' is not in the consortium's list ({', '.join(sorted(expected_sites))}); "
                               "the coordinator adds it to the consortium config, or the site fixes its --site name")
        elif s.version != version:
            refused[s.site] = (f"rmm version {s.version} differs from the coordinator's {version}; "
                               f"install rmm {version} at this site")
    if expected is None:
        votes: dict[str, Counter] = {}
        for s in sites:
            if s.site in refused:
                continue
            for m, d in s.schema.items():
                if d is not None:
                    votes.setdefault(m, Counter())[d] += 1
        dims = {m: c.most_common(1)[0][0] for m, c in sorted(votes.items())}
    else:
        dims = dict(sorted(expected.items()))
    for s in sites:
        if s.site in refused:
            continue
        problems = [f"{m} has dim {d}, the run uses {dims[m]}" for m, d in s.schema.items()
                    if d is not None and m in dims and d != dims[m]]
        problems += [f"modality '{m}' is not part of the run ({', '.join(dims)})"
                     for m, d in s.schema.items() if m not in dims and d is not None]
        if problems:
            refused[s.site] = "; ".join(problems) + ". Fix the site's feature files or the run's modality list"
    accepted = [s for s in sites if s.site not in refused]
    return Handshake(dims, accepted, refused)
