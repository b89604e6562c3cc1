"""Report helpers that decide what a reader is told.

    python -m pytest tests/test_report.py -q
"""

import numpy as np

from safepretrain.report.build import curve_table, paired_differences, style_prior_caveat
from safepretrain.report.provenance import judge_quality_table
from safepretrain.report.sections import CURVE_GROUP, SECTIONS
from safepretrain.rundir import BENIGN_FT, IFT


def _row(arm, value):
    return {"arm": arm, "stage": IFT, "task": "likelihood", "metric": "harm_specificity", "value": value,
            "ci_low": value - 0.03, "ci_high": value + 0.03}


def test_caveat_when_no_model_refuses_by_harm():
    text = " ".join(style_prior_caveat([_row("raw", 0.57), _row("start_0", 0.45)]))
    assert "Caveat" in text and "raw ift" in text and "style prior" in text


def test_no_caveat_when_some_model_tracks_harm():
    assert style_prior_caveat([_row("raw", 0.55), _row("start_0", 0.81)]) == []
    assert style_prior_caveat([]) == []


def _curve_rows(arms, steps):
    return [{"arm": a, "seed": "pooled", "stage": f"{BENIGN_FT}@{s}", "decoder": "none", "task": "likelihood",
             "metric": "forced_choice", "value": 0.5 + 0.1 * k + s / 100, "ci_low": 0.4, "ci_high": 0.9, "n": "2x8"}
            for k, a in enumerate(arms) for s in steps]


def test_the_curve_has_steps_as_rows_and_its_area_per_arm():
    arms = ["raw", "start_0", "start_20", "start_60", "safe_only", "extra"]
    section = next(s for s in SECTIONS if s.group == CURVE_GROUP and s.key == "likelihood/forced_choice")
    md = curve_table(_curve_rows(arms, [0, 3, 6]), arms, section, False)
    assert md[0].startswith("**`likelihood/forced_choice`** — ↓ lower is better")
    heads = [line for line in md if line.startswith("| step |")]
    assert heads == ["| step | raw | start_0 | start_20 | start_60 | safe_only |", "| step | extra |"]  # 6 arms
    assert any(line.startswith("| step 3 | 0.530 [0.400, 0.900] | 0.630 [0.400, 0.900] |") for line in md)
    area = next(line for line in md if line.startswith("| **area** |"))
    assert area.startswith("| **area** | 0.530 | 0.630 |")  # trapezoid mean of a linear curve = its midpoint


def test_paired_differences_list_the_significant_ones_under_their_metric():
    rng = np.random.default_rng(0)
    records = [{"arm": arm, "seed": s, "stage": BENIGN_FT, "decoder": "topk", "metric": "asr/asr", "item": f"p{j}",
                "value": float(rng.random() < p)}
               for arm, p in (("raw", 0.8), ("start_0", 0.05)) for s in range(3) for j in range(60)]
    md = paired_differences(records, ["raw", "start_0"], n_boot=1000)
    assert md[0].startswith("1 paired comparisons") and "1 significant" in md[0]
    assert md[2] == "- `asr/asr`: 1 of 1 significant"
    assert md[3].startswith(f"  - {BENIGN_FT}, topk: raw − start_0 = +0.") and "3 seeds × 60 items" in md[3]
    assert paired_differences([], ["raw"], n_boot=100)[0].startswith("No paired comparisons")


def test_judge_quality_fits_in_five_columns():
    q = {"human_refusal": {"precision": 0.9, "recall": 0.8, "accuracy": 0.85, "n": 40},
         "cases": {"refusal": {"precision": 1.0, "recall": 1.0, "accuracy": 1.0, "n": 6}, "by_kind": {}}}
    md = judge_quality_table(q)
    assert "| labelled set · verdict | precision | recall | accuracy | n |" in md
    assert "| human-labelled refusals (world pack) · refusal | 0.90 | 0.80 | 0.85 | 40 |" in md
    assert "| same, text-only detector · refusal | – | – | – | – |" in md
