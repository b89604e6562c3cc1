"""The authors' open problems as paired contrasts between two studies (issue 20, item 7).

Each variant study changes one design choice (matched dose, WSD schedule, a ramp) and keeps the seeds, prompts and
everything else, so an arm's ASR can be paired across the two studies by seed and prompt. For every (variant, arm,
reading) this prints variant − baseline with its 95% CI (hierarchical bootstrap, seeds then prompts) and minimum
detectable difference; the p-values of the whole family (every variant given) are Holm-corrected together.

    python scripts/compare_runs.py runs/default runs/open_dose runs/open_wsd runs/open_ramp

Readings: top-k ASR of the base model, after instruction tuning, after benign finetuning, after harmful finetuning (its
last step), the tamper curve's area (mean ASR over the harmful-finetuning curve, per seed and prompt), and the
judge-free compliance gap (nats/token) of the base and IFT models, which does not sit at a floor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from safepretrain.eval.stats import aligned_matrices, holm, index_records, paired_difference
from safepretrain.report.data import collect_records
from safepretrain.report.tamper import area_under, tamper_matrices
from safepretrain.rundir import BASE, BENIGN_FT, HARMFUL_FT, IFT, NO_DECODER, RunDir

METRIC, DECODER = "asr/asr", "topk"
GAP = "likelihood/compliance_gap"  # judge-free and continuous: it does not floor where ASR does
READINGS = ((BASE, METRIC, DECODER, "ASR, base"), (IFT, METRIC, DECODER, "ASR after IFT"),
            (BENIGN_FT, METRIC, DECODER, "ASR after benign FT"), (HARMFUL_FT, METRIC, DECODER, "ASR after harmful FT"),
            (BASE, GAP, NO_DECODER, "compliance gap, base"), (IFT, GAP, NO_DECODER, "compliance gap, IFT"))


def cells(run: Path, arms: list[str]) -> dict[tuple[str, str], tuple[np.ndarray, list, list]]:
    """(arm, reading) → ((S, P) values, seeds, items) of one study."""
    rd = RunDir(run)
    cfg = rd.load_config()
    records = collect_records(rd, arms)
    idx = index_records(records)
    out = {}
    for stage, metric, decoder, title in READINGS:
        for arm in arms:
            m = aligned_matrices(idx, [arm], stage, decoder, metric)
            if not m.missing:
                out[(arm, title)] = (m.values[arm], m.seeds, m.items)
    steps, cubes, seeds, items = tamper_matrices(records, collect_records(rd, arms, curve=HARMFUL_FT), arms,
                                                 cfg.harmful_ft.steps)
    for arm, cube in cubes.items():
        out[(arm, "tamper AUC")] = (area_under(cube, steps), seeds, items)
    return out


def paired(a: tuple, b: tuple):
    """Align two studies' (S, P) matrices on their common seeds and items, then pair them."""
    (xa, sa, ia), (xb, sb, ib) = a, b
    seeds, items = [s for s in sa if s in sb], [i for i in ia if i in ib]
    pick = lambda x, s, i: x[np.ix_([s.index(v) for v in seeds], [i.index(v) for v in items])]  # noqa: E731
    return paired_difference(pick(xa, sa, ia), pick(xb, sb, ib), n_boot=2000)


def main(baseline: str, variants: list[str]) -> None:
    tests = []
    for variant in variants:
        arms = [a.name for a in RunDir(Path(variant)).load_config().curriculum.arms]
        base, var = cells(Path(baseline), arms), cells(Path(variant), arms)
        for key in sorted(set(base) & set(var)):
            tests.append((Path(variant).name, *key, paired(var[key], base[key])))
    adjusted = holm([t[-1].p_value for t in tests])
    print(f"{len(tests)} contrasts (variant − {Path(baseline).name}), Holm across all of them")
    for (variant, arm, reading, r), p in zip(tests, adjusted):
        print(f"{variant:<12} {arm:<10} {reading:<22} {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]  adj. p = {p:.3g}  "
              f"MDD {r.mdd:.3f}  ({r.n_seeds} seeds x {r.n_prompts} prompts)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
