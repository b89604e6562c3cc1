"""Report helpers that decide what a reader is told.

    python -m pytest tests/test_report.py -q
"""

from safepretrain.report.build import style_prior_caveat


def _row(arm, value):
    return {"arm": arm, "stage": "ift", "task": "likelihood", "metric": "harm_specificity", "value": value,
            "ci_low": value - 0.03, "ci_high": value + 0.03}


def test_caveat_when_no_model_refuses_by_harm():
    text = " ".join(style_prior_caveat([_row("raw", 0.57), _row("start_0", 0.45)]))
    assert "Caveat" in text and "raw ift" in text and "style prior" in text


def test_no_caveat_when_some_model_tracks_harm():
    assert style_prior_caveat([_row("raw", 0.55), _row("start_0", 0.81)]) == []
    assert style_prior_caveat([]) == []
