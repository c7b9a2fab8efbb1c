"""compare_runs: two run folders are the same to the digit, or each difference is named."""

import json

from rmmfed.simulations.compare_runs import compare_runs, main


def _run(folder, c_index, wall, theta=1.0):
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"federated": {"c_index": c_index}, "timing_s": {"total": wall},
                                                     "sites": {"accepted": ["site-A"]}}))
    (folder / "calibration.json").write_text(json.dumps({"theta": theta}))
    return folder


def test_runs_that_differ_only_in_wall_time_are_the_same(tmp_path):
    a, b = _run(tmp_path / "a", 0.7198, 100.0), _run(tmp_path / "b", 0.7198, 250.0)
    assert compare_runs(a, b) == []
    assert main([str(a), str(b)]) == 0


def test_a_changed_figure_is_named_with_both_values(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.7198, 1.0), _run(tmp_path / "b", 0.7199, 1.0, theta=1.5)
    assert compare_runs(a, b) == ["metrics.json/federated/c_index: 0.7198 vs 0.7199", "calibration.json/theta: 1.0 vs 1.5"]
    assert main([str(a), str(b)]) == 1
    assert "2 difference(s)" in capsys.readouterr().out


def test_digits_forgive_the_last_bits_of_a_sum(tmp_path):
    a, b = _run(tmp_path / "a", -3.782195302249163, 1.0), _run(tmp_path / "b", -3.7821953022491632, 1.0)
    assert compare_runs(a, b) != []
    assert compare_runs(a, b, digits=15) == []
