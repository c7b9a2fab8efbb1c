"""Gradient inversion with trap units (tests/inversion_attack.py), through a site's real ClientApp.

A hostile coordinator sends Tier 1 weights whose head is a bank of patient-isolating trap units and a
config of one full-batch Adam step, then inverts Adam's update back to the gradient and the gradient
back to each isolated patient's bag means. Under a policy that switched every bound off, it recovers
the training patients almost exactly; the default policy refuses its config and weights, and the
strongest version inside the default bounds (DP-SGD, which the default policy requires) recovers none.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.core.messages import protocol as P
from rmmfed.flower.records import from_record
from rmmfed.core.config import RunConfig

from inversion_attack import (ATTACK_TRAINING, PERMISSIVE_POLICY, AttackedSite, craft_trap_weights, describe,
                              refusal_key, run_attack, training_patients)

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # Opacus: secure RNG, alpha range

PERMISSIVE_ATTACK = {"lr": 1e4, "model.hidden-dim": 1024, "dp.enabled": False}  # one trap per 1/8 of a patient


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _time_cuts(site: AttackedSite) -> str:
    """dp.time-cuts: the quartiles of the site's follow-up (what the follow-up histogram gives the
    coordinator; a config value, not part of the attack)."""
    return ",".join(f"{q:.4f}" for q in np.quantile(training_patients(site.path).time, [0.25, 0.5, 0.75]))


def _in_bounds_dp_attack(site: AttackedSite) -> dict:
    """The strongest attack config inside the default policy: DP-SGD at the largest epsilon and clipping
    norm it accepts, its largest lr and width, one full-batch step (Poisson sampling at rate 1), Adam."""
    return {"lr": 0.01, "model.hidden-dim": 512, "dp.enabled": True, "dp.target-epsilon": 8.0,
            "dp.max-grad-norm": 5.0, "dp.time-cuts": _time_cuts(site)}


# ---- the attack is real ------------------------------------------------------------------------------
def test_trap_unit_inversion_recovers_patients_under_a_permissive_policy(tmp_path):
    site = AttackedSite(tmp_path, policy=PERMISSIVE_POLICY)
    res = run_attack(site, PERMISSIVE_ATTACK)
    assert not res.reply.has_error(), describe(res.reply)
    assert res.isolated >= res.n_train // 2  # the traps isolate most of the 120 training patients
    assert res.recovered >= 0.5 * res.isolated, (res.recovered, res.isolated, res.n_train)
    assert res.recovered >= res.n_train // 2


def test_the_training_bounds_alone_do_not_stop_trap_inversion_without_dp(tmp_path):
    """lr 0.01, width 512 and |w| <= 1000 leave the attack intact: the trap gradients are kept below
    Adam's eps, where even a small step is linear in g and the float32 weights resolve it. DP is the
    defence that matters, which is why the default policy requires it."""
    site = AttackedSite(tmp_path, policy="[dp]\nrequired = false\n")
    res = run_attack(site, {"lr": 0.01, "model.hidden-dim": 512, "dp.enabled": False})
    assert not res.reply.has_error(), describe(res.reply)
    assert res.recovered >= 0.5 * res.isolated > 0, (res.recovered, res.isolated, res.n_train)


# ---- the default policy ------------------------------------------------------------------------------
def _bad_weights(w: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in w.items()}
    out["head.0.weight"][0, 0] = value  # one trap weight out of bounds is enough
    return out


@pytest.mark.parametrize("change, keys", [
    pytest.param({**PERMISSIVE_ATTACK}, {"dp.required", "training.max-lr", "training.max-width"},
                 id="the-permissive-attack-config"),
    pytest.param({"dp.enabled": False}, {"dp.required"}, id="dp-off"),
    pytest.param({"lr": 1e4}, {"training.max-lr"}, id="lr-1e4"),
    pytest.param({"model.hidden-dim": 4096}, {"training.max-width"}, id="hidden-dim-4096"),
    pytest.param({"model.embed-dim": 4096}, {"training.max-width"}, id="embed-dim-4096"),
    pytest.param({"weights": 1e4}, {"training.max-weight"}, id="a-weight-of-1e4"),
    pytest.param({"weights": float("nan")}, {"training.max-weight"}, id="a-nan-weight"),
    pytest.param({"weights": float("-inf")}, {"training.max-weight"}, id="an-infinite-weight"),
])
def test_the_default_policy_refuses_the_attack_config(tmp_path, change, keys):
    site = AttackedSite(tmp_path)  # no policy file: the default policy
    change = dict(change)
    bad_value = change.pop("weights", None)
    cfg = RunConfig().with_overrides({**ATTACK_TRAINING, **_in_bounds_dp_attack(site), **change})
    stats = site.statistics(cfg.model.anat_partitions)
    reply = site.setup(cfg.to_flat())
    if bad_value is None:
        assert refusal_key(reply) in keys, describe(reply)
    else:
        assert not reply.has_error(), describe(reply)  # the config is inside the bounds: the weights are not
        weights, _ = craft_trap_weights(cfg, stats, presence=site.presence())
        reply = site.train_round(_bad_weights(weights, bad_value))
        assert refusal_key(reply) in keys, describe(reply)
        assert not reply.has_content()  # nothing computed, nothing sent
    line = site.last_ledger_line()
    assert line["status"] == "refused" and line["policy_key"] in keys


@pytest.mark.parametrize("omega", [
    pytest.param(1e-7, id="trap-gradients-below-adam-eps"),  # what inverts exactly without DP
    pytest.param(0.1, id="trap-gradients-at-the-clipping-norm"),  # most of each patient's clipped gradient
])
def test_trap_unit_inversion_recovers_no_patient_under_the_default_policy(tmp_path, omega):
    """Each patient's gradient is clipped to 5 and Gaussian noise of sigma x 5 (sigma about 0.64 for
    epsilon 8 in one step) from OS entropy is added to every coordinate: no trap bin comes back
    with its prompts and flags as sent, so the attacker has no candidate it could tell from noise."""
    site = AttackedSite(tmp_path)  # no policy file: the default policy (DP-SGD required)
    res = run_attack(site, _in_bounds_dp_attack(site), omega=omega)
    assert not res.reply.has_error(), describe(res.reply)
    metrics = dict(res.reply.content[P.METRICS])
    assert 0 < metrics["dp-epsilon"] <= 8.0 + 1e-6
    assert res.isolated >= res.n_train // 2  # the traps still isolate the patients: the noise hides them
    assert res.recovered == 0, (res.recovered, res.isolated, res.n_train)


def test_seeded_noise_is_refused_by_the_default_policy(tmp_path):
    site = AttackedSite(tmp_path / "default")
    cfg = RunConfig().with_overrides({**ATTACK_TRAINING, **_in_bounds_dp_attack(site)})
    stats = site.statistics(cfg.model.anat_partitions)
    flat = {**cfg.to_flat(), "dp.seeded-noise": True}  # by hand: the key is the coordinator's to send
    reply = site.setup(flat)
    if not reply.has_error():  # refused at setup, or at the latest before the first round computes
        weights, _ = craft_trap_weights(cfg, stats, presence=site.presence())
        reply = site.train_round(weights)
        assert not reply.has_content() or P.ARRAYS not in reply.content, "a seeded-noise round was answered"
    assert refusal_key(reply) == "dp.allow-seeded-noise", describe(reply)
    assert site.last_ledger_line()["policy_key"] == "dp.allow-seeded-noise"

    allowed = AttackedSite(tmp_path / "allowed", policy="[dp]\nallow-seeded-noise = true\n")
    allowed.statistics(cfg.model.anat_partitions)
    assert not allowed.setup(flat).has_error()  # the same request, where the hospital allows it


def test_with_linear_dp_training_the_trap_units_come_back_as_sent_and_recover_no_patient(tmp_path):
    """``dp.train-parts = linear`` is the coordinator's choice: the site then trains only the linear path and
    its own baseline under the same DP-SGD. The crafted trap head is returned exactly as sent (no patient's
    gradient reaches it), the only array that moves is the linear path's, and the attack recovers nobody."""
    site = AttackedSite(tmp_path)  # the default policy
    overrides = {**_in_bounds_dp_attack(site), "dp.train-parts": "linear"}
    res = run_attack(site, overrides)
    assert not res.reply.has_error(), describe(res.reply)
    cfg = RunConfig().with_overrides({**ATTACK_TRAINING, **overrides})
    sent, _ = craft_trap_weights(cfg, site.statistics(cfg.model.anat_partitions), presence=site.presence())
    returned = from_record(res.reply.content[P.ARRAYS])
    moved = sorted(k for k in sent if not np.array_equal(np.asarray(sent[k]), np.asarray(returned[k])))
    assert moved == ["linear.weight"], moved
    assert res.recovered == 0
