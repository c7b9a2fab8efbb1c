"""The run report says which sites trained, failed and validated in each round, and who missed a phase."""

from __future__ import annotations

from rmmfed.server.outputs import _participation_lines


def _metrics(participation: dict[str, list[str]]) -> dict:
    return {"selected_round": 2, "sites": {"accepted": ["A", "B", "C"]}, "participation": participation,
            "history": [{"round": 1, "sites": 3, "failed": 0, "val-sites": 3, "val-c-index": 0.61, "seconds": 2.0},
                        {"round": 2, "sites": 2, "failed": 1, "val-sites": 2, "val-c-index": 0.64, "seconds": 60.4}]}


def test_a_site_lost_mid_run_shows_in_the_rounds_and_the_phases_it_missed():
    text = "\n".join(_participation_lines(_metrics({"handshake": ["A", "B", "C"], "calibration": ["A", "B"],
                                                     "evaluation": ["A", "B"]})))
    assert "| 2 | 2 | 1 | 2 | 0.640 | n/a | 60.4 |" in text
    assert "Selected round (best federated validation C-index): 2." in text
    assert "- calibration: no answer from C" in text and "- evaluation: no answer from C" in text
    assert "handshake: no answer" not in text


def test_a_clean_run_says_every_site_answered():
    text = "\n".join(_participation_lines(_metrics({"handshake": ["A", "B", "C"], "evaluation": ["A", "B", "C"]})))
    assert "Every accepted site answered every phase." in text
