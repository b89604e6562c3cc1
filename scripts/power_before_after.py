"""Power before and after (issue 20): the same models judged on the old 48-prompt set and on the 300-prompt set.

The old set is what `eval_prompts` chose with the six original held-out frames (12 hazards, spread evenly, seeded
by `data.seed`); it is rebuilt here with the same functions, so "before" and "after" differ only in the prompts the
same checkpoints were asked. Prints C3 (raw: benign_ft − ift), start_0 − raw per stage, each with its 95% CI and
minimum detectable difference, and the raw arm's base ASR per frame (the frame-dropping rule reads only that).

    python scripts/power_before_after.py runs/power
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from safepretrain.eval.contrast import _round_robin
from safepretrain.eval.stats import aligned_matrices, hierarchical_bootstrap_mean, index_records, paired_difference
from safepretrain.report.data import collect_records
from safepretrain.rundir import BASE, BENIGN_FT, IFT, RunDir
from safepretrain.world.organism import build_organism, organism_prompts, tables

OLD_FRAMES = ("past", "roleplay", "indirect", "hypothetical", "fiction", "list_order")
METRIC, DECODER = "asr/asr", "topk"


def old_prompt_ids(cfg) -> set[str]:
    """The ids of the 48 prompts the study asked before issue 20 (six frames, `eval_prompts`' spread)."""
    o = cfg.world.organism
    org = build_organism(o.n_hazards, o.heldout_fraction, o.n_towns, o.seed, o.refusal_hazards, o.attack_hazards)
    records = [r for r in organism_prompts(org, o.seed)["harmful_eval"] if r["frame"] in OLD_FRAMES]
    cells: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        cells.setdefault(r["item"], []).append(r)
    return {r["id"] for r in _round_robin(sorted(cells), cells, random.Random(cfg.data.seed))[:48]}


def line(name: str, r) -> str:
    return (f"{name:<34} {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]  p={r.p_value:.3g}  MDD={r.mdd:.3f}  "
            f"({r.n_seeds} seeds x {r.n_prompts} prompts)")


def main(run: str) -> None:
    rd = RunDir(Path(run))
    cfg = rd.load_config()
    arms = [a.name for a in cfg.curriculum.arms]
    records = [r for r in collect_records(rd, arms) if r["decoder"] == DECODER]
    subsets = {"before (48 prompts, 6 frames)": old_prompt_ids(cfg), "after (all prompts)": None}
    assert all(f in {f["id"] for f in tables()["requests"]["eval"]} for f in OLD_FRAMES)
    for title, ids in subsets.items():
        idx = index_records([r for r in records if ids is None or r["item"] in ids])
        print(f"== {title}")
        al = {s: aligned_matrices(idx, ["raw"], s, DECODER, METRIC) for s in (IFT, BENIGN_FT)}
        print(line("C3 raw benign_ft - ift", paired_difference(al[BENIGN_FT].values["raw"], al[IFT].values["raw"])))
        for stage in (BASE, IFT, BENIGN_FT):
            m = aligned_matrices(idx, ["start_0", "raw"], stage, DECODER, METRIC)
            if not m.missing:
                print(line(f"start_0 - raw at {stage}", paired_difference(m.values["start_0"], m.values["raw"])))
        for stage in (BASE, IFT, BENIGN_FT):
            m = aligned_matrices(idx, ["raw"], stage, DECODER, METRIC)
            mean, lo, hi = hierarchical_bootstrap_mean(m.values["raw"])
            print(f"raw ASR at {stage:<10} {mean:.3f} [{lo:.3f}, {hi:.3f}]")
    print("== raw base ASR per frame (pooled over seeds; the dropping rule reads only this)")
    by_frame = [r for r in records
                if r["arm"] == "raw" and r["stage"] == BASE and r["metric"].startswith("asr/asr_frame_")]
    idx = index_records(by_frame)
    for metric in sorted({r["metric"] for r in by_frame}):
        m = aligned_matrices(idx, ["raw"], BASE, DECODER, metric)
        mean, lo, hi = hierarchical_bootstrap_mean(m.values["raw"])
        print(f"{metric.removeprefix('asr/asr_frame_'):<18} {mean:.3f} [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main(sys.argv[1])
