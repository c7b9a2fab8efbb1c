"""The consortium file: who takes part and how the run is configured, as one small TOML.

    # consortium.toml
    name = "crc-survival-2025"
    sites = ["A", "B", "C", "D"]         # the sites the run waits for (num-sites = 4)
    rounds = 30
    strategy = "fedavg"                  # fedavg | fedprox | fedadam
    quantile = 0.95
    min-sites = 3                        # sites a round needs (0 = a majority)
    high-risk-contexts = ["oncology-staging"]

    [run]                                # any other RunConfig key, flat or nested
    seed = 7
    "model.mc-samples" = 20
    [run.model]
    embed-dim = 64

:meth:`Consortium.overrides` turns it into Flower's flat run config (kebab-case keys, scalars),
checked against :class:`~rmmfed.core.config.RunConfig` so a typo fails here, before submission;
:meth:`Consortium.run_config_args` gives the ``key=value`` strings for ``flwr run --run-config``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.config import RunConfig, renamed_keys
from ..core.errors import ConfigError, RmmError
from ..flower.app_keys import APP_KEYS  # set by rmm-server or for simulations, never by [run]
from ..flower.config_args import check_site_name, flower_kv

Scalar = bool | int | float | str


class ConsortiumError(ConfigError):
    """The consortium file is unreadable or inconsistent; the message names the key and the fix."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Consortium(BaseModel):
    """A consortium config file (top-level keys are kebab-case, as in the TOML)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True)

    name: str = Field("rmm-consortium", description="label of the consortium, shown by rmm-server when it "
                      "submits the run; not passed to the run config")
    sites: list[str] = Field(min_length=1, description="names of the participating sites (letters, digits, "
                             "'-', '_', '.'; no duplicates): the run waits for this many sites (num-sites) and "
                             "refuses a site not listed (expected-sites)")
    rounds: int | None = Field(None, ge=1, description="Tier 1 federated rounds (RunConfig rounds); unset = "
                               "[run] or the RunConfig default")
    strategy: Literal["fedavg", "fedprox", "fedadam"] | None = Field(
        None, description="how the coordinator aggregates the sites' weights each round (RunConfig strategy); "
        "the other strategies can be set under [run]; unset = [run] or the RunConfig default")
    quantile: float | None = Field(None, gt=0.0, lt=1.0, description="routing threshold theta = this quantile "
                                   "of calibration uncertainty, in (0, 1) (RunConfig quantile); unset = [run] "
                                   "or the RunConfig default")
    min_sites: int | None = Field(None, ge=0, description="sites a round needs (RunConfig min-sites), at most "
                                  "the number of sites listed; 0 = a majority of the accepted sites; unset = "
                                  "[run] or the RunConfig default")
    high_risk_contexts: list[str] | None = Field(None, description="patient contexts (patients.csv context "
                                                 "column) always sent to Tier 2 when a modality is missing; "
                                                 "non-empty labels without commas, joined into RunConfig "
                                                 "high-risk-contexts; unset = [run] or the RunConfig default")
    run: dict[str, Any] = Field(default_factory=dict, description="any other RunConfig key, flat "
                                "('model.mc-samples') or as nested tables, with single values; not the keys "
                                "set above nor those rmm-server sets itself (out-dir, num-sites, ...)")

    @field_validator("sites")
    @classmethod
    def _sites(cls, sites: list[str]) -> list[str]:
        for s in sites:
            check_site_name(s)
        dup = sorted({s for s in sites if sites.count(s) > 1})
        if dup:
            raise ValueError(f"site(s) {', '.join(dup)} listed twice")
        return sites

    @field_validator("high_risk_contexts")
    @classmethod
    def _contexts(cls, contexts: list[str] | None) -> list[str] | None:
        if contexts is not None and any("," in c or not c.strip() for c in contexts):
            raise ValueError("each context must be a non-empty label without commas")
        return contexts

    @model_validator(mode="after")
    def _consistent(self) -> "Consortium":
        if self.min_sites is not None and self.min_sites > len(self.sites):
            raise ValueError(f"min-sites = {self.min_sites} but only {len(self.sites)} site(s) are listed")
        return self

    # ---- conversions ---------------------------------------------------------------------------
    def _top_level(self) -> dict[str, Scalar]:
        top: dict[str, Scalar] = {}
        for key in ("rounds", "strategy", "quantile", "min_sites"):
            value = getattr(self, key)
            if value is not None:
                top[_kebab(key)] = value
        if self.high_risk_contexts is not None:
            top["high-risk-contexts"] = ",".join(c.strip() for c in self.high_risk_contexts)
        return top

    def run_overrides(self) -> dict[str, Scalar]:
        """RunConfig keys only (validated): top-level settings plus the [run] table."""
        top = self._top_level()
        extra = _flatten(self.run)
        both = sorted(set(top) & set(extra))
        if both:
            raise ConsortiumError(f"{', '.join(both)} set both at the top level and under [run]. "
                                  "Fix: keep one of the two")
        app = sorted(set(extra) & set(APP_KEYS))
        if app:
            raise ConsortiumError(f"[run] sets {', '.join(app)}, which rmm-server sets itself (out-dir from --out, "
                                  "num-sites from sites, data-dir and ledger-dir are for simulations). Fix: remove it from [run]")
        for key, value in extra.items():
            if not isinstance(value, (bool, int, float, str)):
                raise ConsortiumError(f"[run] {key} = {value!r}: Flower's run config holds only single values "
                                      "(bool, int, float, text). Fix: write a list as comma-separated text")
        merged = renamed_keys({**top, **extra})  # old key names under their new ones: Flower drops unknown keys
        RunConfig().with_overrides(merged)  # ConfigError naming the key when a key or value is wrong
        return merged

    def overrides(self, out_dir: str | Path) -> dict[str, Scalar]:
        """Everything ``flwr run`` needs to override: run keys plus num-sites and out-dir."""
        return {**self.run_overrides(), "num-sites": len(self.sites), "out-dir": str(Path(out_dir).resolve()),
                "expected-sites": ",".join(self.sites)}

    def run_config_args(self, out_dir: str | Path) -> list[str]:
        """``["rounds=30", "strategy='fedavg'", ..., "out-dir='/abs/out'"]``.

        Hand them to ``flwr run`` as ONE space-joined ``--run-config`` value: Flower 1.41 merges
        separate ``--run-config`` items with ``dict.update`` on the nested form, so ``model.a=1`` and
        ``model.b=2`` given as two items keep only ``model.b``.
        """
        return flower_kv(self.overrides(out_dir))


def load_consortium(path: str | Path) -> Consortium:
    """Read and validate a consortium TOML; every problem raises ConsortiumError naming file and key."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiumError(f"{file}: file not found. Fix: pass --config <consortium.toml> "
                              "(see docs/deployment.md for an example)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConsortiumError(f"{file}: not valid TOML ({err}). Fix: correct the syntax at the place named") from None
    try:
        consortium = Consortium.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in err.errors())
        raise ConsortiumError(f"{file}: {problems}. Fix: correct the key(s) named above "
                              "(top-level keys: name, sites, rounds, strategy, quantile, min-sites, "
                              "high-risk-contexts; anything else under [run])") from None
    try:
        consortium.run_overrides()
    except ConsortiumError as err:
        raise ConsortiumError(f"{file}: {err}") from None
    except RmmError as err:
        raise ConsortiumError(f"{file}: {err}") from None
    return consortium
