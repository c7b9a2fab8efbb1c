"""The run configuration a newcomer reads: every key described, Tier 2's knobs in one section, old names read."""

from __future__ import annotations

import json
import warnings

import pytest
from pydantic import BaseModel

from rmmfed.core.config import RENAMED_KEYS, RunConfig
from rmmfed.core.errors import ConfigError
from rmmfed.core.privacy.site_policy import SitePolicy
from rmmfed.server.consortium import Consortium
from rmmfed.simulations.cohort_config import CohortConfig


def _undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted kebab-case names of the fields of ``model`` (and of every nested model) without a description."""
    missing = []
    for name, field in model.model_fields.items():
        key = prefix + name.replace("_", "-")
        if not (field.description or "").strip():
            missing.append(key)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += _undescribed(sub, key + ".")
    return missing


@pytest.mark.parametrize("model", [RunConfig, SitePolicy, CohortConfig, Consortium], ids=lambda m: m.__name__)
def test_every_config_field_has_a_description(model):
    missing = _undescribed(model)
    assert not missing, f"{model.__name__} fields without a description: {', '.join(missing)}"


def test_tier2_training_knobs_live_in_the_tier2_section():
    flat = RunConfig().to_flat()
    for old, new in RENAMED_KEYS.items():
        assert old not in flat and new in flat, (old, new)
    assert {k for k in flat if k.startswith("tier2-")} == set()  # every Tier 2 key is tier2.*
    assert flat["tier2.rounds"] == 10 and flat["tier2.lr"] == 1e-3 and flat["tier2.gate"] is True


def test_an_old_tier2_key_still_works_and_warns_with_the_new_name():
    with pytest.warns(FutureWarning, match=r"'tier2-rounds' is deprecated: use 'tier2.rounds'"):
        cfg = RunConfig().with_overrides({"tier2-rounds": 0})
    assert cfg.tier2.rounds == 0
    with pytest.warns(FutureWarning, match="tier2.abstain-quantile"):
        flat = {k: v for k, v in RunConfig().to_flat().items() if k != "tier2.abstain-quantile"}
        cfg = RunConfig.from_flat({**flat, "tier2-abstain-quantile": 0.9})
    assert cfg.tier2.abstain_quantile == 0.9


def test_a_run_config_json_with_old_keys_reads_as_the_new_ones(tmp_path):
    old = {k: v for k, v in RunConfig().to_flat().items() if k not in RENAMED_KEYS.values()}
    old.update({"tier2-rounds": 3, "tier2-local-epochs": 1, "tier2-lr": 5e-4, "tier2-gate": False,
                "tier2-select-best": False, "tier2-abstain-quantile": 0.95})
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({"config": old}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cfg = RunConfig.from_flat(json.loads(path.read_text())["config"])
    t2 = cfg.tier2
    assert (t2.rounds, t2.local_epochs, t2.lr, t2.gate, t2.select_best, t2.abstain_quantile) == \
        (3, 1, 5e-4, False, False, 0.95)


def test_an_old_and_a_new_key_that_disagree_are_refused():
    with pytest.raises(ConfigError, match="tier2.rounds"):
        RunConfig.from_flat({"tier2-rounds": 1, "tier2.rounds": 2})


def test_the_default_run_is_unchanged_by_the_move():
    cfg = RunConfig()
    t2 = cfg.tier2
    assert (t2.rounds, t2.local_epochs, t2.lr, t2.gate, t2.select_best, t2.abstain_quantile) == \
        (10, 2, 1e-3, True, True, 0.99)
