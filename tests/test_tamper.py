"""The tamper-curve summary (report/tamper.py) and the curve's step 0 read from the IFT evaluation."""

import numpy as np
import pytest

from safepretrain.report.data import curve_stage
from safepretrain.report.tamper import area_under, tamper_section, tamper_summary

ARMS = ["raw", "start_0"]


def _records(curve_asr: dict[str, list[float]], base_raw: float, steps=(0, 5, 10, 20), final=40, seeds=3, prompts=60):
    """IFT (step 0) and curve records, the final step as the harmful_ft stage, and the raw arm's base ASR."""
    rng = np.random.default_rng(0)
    records, curve = [], []
    for arm, rates in curve_asr.items():
        for step, p in zip([*steps, final], rates):
            for s in range(seeds):
                for j in range(prompts):
                    r = {"arm": arm, "seed": s, "decoder": "topk", "metric": "asr/asr", "item": f"p{j}",
                         "value": float(rng.random() < p)}
                    if step == final:
                        records.append({**r, "stage": "harmful_ft"})
                    else:
                        curve.append({**r, "stage": curve_stage(step, "harmful_ft")})
    records += [{"arm": "raw", "seed": s, "stage": "base", "decoder": "topk", "metric": "asr/asr", "item": f"p{j}",
                 "value": float(rng.random() < base_raw)} for s in range(seeds) for j in range(prompts)]
    return records, curve


def test_area_is_the_trapezoid_mean_over_steps():
    cube = np.array([[[0.0, 1.0, 1.0]]])
    assert area_under(cube, [0, 10, 30])[0, 0] == pytest.approx((0.5 * 10 + 1.0 * 20) / 30)


def test_the_raw_arm_relearns_and_the_treated_arm_resists(tmp_path):
    records, curve = _records({"raw": [0.1, 0.2, 0.3, 0.3, 0.3], "start_0": [0.0, 0.0, 0.02, 0.02, 0.02]},
                              base_raw=0.4)
    s = tamper_summary(records, curve, ARMS, final_step=40, n_boot=500)
    assert s["steps"] == [0, 5, 10, 20, 40]
    assert 0.15 < s["half"] < 0.27  # half the raw base ASR (0.4 in expectation)
    assert s["steps_to_half"]["raw"] in (5, 10) and s["steps_to_half"]["start_0"] is None
    d = s["auc_vs_control"]["start_0"]
    assert d.hi < 0 and d.mdd > 0  # the treated arm's area is lower, paired by seed and prompt
    md = tamper_section(records, curve, ARMS, 40, "chat", tmp_path, 500)
    assert md[0] == "## Harmful finetuning: the tamper curve"
    assert any(line.startswith("| start_0 |") and "not reached (> 40)" in line for line in md)
    assert (tmp_path / "tamper_curve.png").stat().st_size > 5_000
    assert tamper_section(records, [], ["nobody"], 40, "chat", tmp_path, 200) == []
