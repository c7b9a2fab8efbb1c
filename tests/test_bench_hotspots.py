"""bench_hotspots: the whole federation in one process under cProfile, its own time grouped by library."""

from __future__ import annotations

import pstats

import pytest
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.simulations.bench_hotspots import group_of, grouped, main

from conftest import write_site
from test_phases_in_process import TINY

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def test_own_time_is_grouped_by_where_it_is_spent():
    assert group_of("/x/site-packages/opacus/accountants/analysis/rdp.py", "_compute_rdp") == "Opacus privacy accounting"
    assert group_of("/x/site-packages/opacus/optimizers/optimizer.py", "step") == "Opacus DP-SGD (clipping, noise)"
    assert group_of("~", "<built-in method torch._C._nn.linear>") == "torch kernels"
    assert group_of("/repo/core/privacy/dp.py", "train_tier1_dp") == "rmm's own Python"
    assert group_of("/usr/lib/python3.11/logging/__init__.py", "emit") == "other (Python, files, logging)"


def test_a_small_federation_is_profiled_in_process_and_its_groups_add_up(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    for name, seed in (("site-A", 1), ("site-B", 2)):
        write_site(cohort, name=name, n=120, seed=seed, absent_rate=0.3)
    sets = [a for k, v in TINY.items() if k not in ("rounds", "tier2.rounds") for a in ("--set", f"{k}={v}")]
    assert main(["--data", str(cohort), "--rounds", "2", "--tier2-rounds", "1", "--top", "5", *sets]) == 0
    out = capsys.readouterr().out
    assert "Opacus privacy accounting" in out and "torch kernels" in out and "rmm's own Python" in out
    assert len([line for line in out.splitlines() if "(" in line and ":" in line and "%" in line]) >= 5


def test_a_missing_cohort_folder_says_how_to_make_one(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nothing")]) == 2
    assert "rmm-simulate" in capsys.readouterr().err


def test_the_groups_sum_to_the_profiled_time():
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    sum(i * i for i in range(10_000))
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(row[2] for row in stats.stats.values())
    assert sum(grouped(stats).values()) == pytest.approx(total)
