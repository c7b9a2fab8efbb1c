"""Contracts of rmm's Flower patches (flower/supernode.py, flower/grid.py, flower/pulls.py, guarded by
flower/version.py): one check per patched attribute, so a Flower upgrade that moves one fails here
instead of silently slowing a deployment."""

from __future__ import annotations

import importlib
import inspect
import time

import flwr
import pytest

from rmmfed.flower import grid as grid_module, supernode
from rmmfed.flower.pulls import PULL_HELPERS, tune_flower_pulls
from rmmfed.flower.version import (COORDINATOR_FIX, SITE_FIX, TESTED_FLOWER, FlowerVersionError,
                                   require_tested_flower)

SIDES = pytest.mark.parametrize("fix", [SITE_FIX, COORDINATOR_FIX], ids=["site", "coordinator"])


@SIDES
def test_the_installed_flower_is_the_one_the_patches_were_written_for(fix):
    require_tested_flower("rmm's patches", fix)
    assert tuple(int(x) for x in flwr.__version__.split(".")[:2]) == TESTED_FLOWER


@SIDES
def test_another_flower_version_is_refused_naming_the_fix(fix, monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    with pytest.raises(FlowerVersionError, match=r"flwr 1\.42\.0 is installed\. Fix: install flwr~=1\.41\.0") as err:
        require_tested_flower("rmm's patches", fix)
    assert str(err.value).endswith(fix)


def test_the_supernode_loop_sleeps_through_the_time_module_with_the_3_s_and_0_5_s_it_shortens():
    import flwr.supernode.start_client_internal as sci

    assert sci.time is time  # launch_flower swaps this attribute
    source = inspect.getsource(sci)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source  # the values _TunedTime matches


def test_the_tuned_time_shortens_only_the_sleeps_it_names(monkeypatch):
    slept = []
    fake = type("T", (), {"sleep": staticmethod(slept.append), "monotonic": staticmethod(lambda: 7.0)})
    tuned = supernode._TunedTime(fake, {3: 0.5, 0.5: 0.05})
    tuned.sleep(3)
    tuned.sleep(0.5)
    tuned.sleep(2)
    assert slept == [0.5, 0.05, 2] and tuned.monotonic() == 7.0


@pytest.mark.parametrize("name", PULL_HELPERS)
def test_flowers_pull_helpers_take_the_backoff_defaults_both_sides_shorten(name):
    from flwr.supercore.inflatable import inflatable_utils as iu

    defaults = getattr(iu, name).__kwdefaults__
    assert isinstance(defaults["initial_backoff"], (int, float)) and isinstance(defaults["backoff_cap"], (int, float))


@SIDES
def test_tuning_the_pulls_sets_the_defaults_and_can_be_undone(fix):
    from flwr.supercore.inflatable import inflatable_utils as iu

    before = {n: dict(getattr(iu, n).__kwdefaults__) for n in PULL_HELPERS}
    try:
        tune_flower_pulls(fix, 0.05, 1.0)
        for n in PULL_HELPERS:
            assert (getattr(iu, n).__kwdefaults__["initial_backoff"], getattr(iu, n).__kwdefaults__["backoff_cap"]) \
                == (0.05, 1.0)
    finally:
        for n, d in before.items():
            getattr(iu, n).__kwdefaults__.update(d)


def test_the_deployment_grid_has_the_push_and_pull_the_tuned_send_and_receive_uses():
    from flwr.superlink.grid.http_grid import HttpGrid

    assert HttpGrid.__name__ == "HttpGrid"  # tune_grid recognises it by name
    for name in ("push_messages", "pull_messages", "send_and_receive"):
        assert callable(getattr(HttpGrid, name))
    assert list(inspect.signature(HttpGrid.send_and_receive).parameters) == ["self", "messages", "timeout"]


def test_a_grid_that_is_not_flowers_deployment_grid_is_left_alone():
    class OtherGrid:
        def send_and_receive(self, messages, *, timeout=None):
            return []

    grid = OtherGrid()
    before = grid.send_and_receive
    assert grid_module.tune_grid(grid) is grid and grid.send_and_receive == before


@pytest.mark.parametrize("module,name", supernode.WORKER_SURFACE, ids=[f"{m}.{n}" for m, n in supernode.WORKER_SURFACE])
def test_every_flower_name_the_long_lived_worker_uses_exists(module, name):
    assert hasattr(importlib.import_module(module), name)


def test_the_supernode_entry_point_and_parent_monitor_the_launcher_calls_exist():
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supernode.cli import flower_supernode

    assert callable(flower_supernode) and callable(start_parent_process_monitor)
