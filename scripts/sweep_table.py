"""The raw-arm post-training sweep (issue 20, item 4): one row per study, and the size the declared rule picks.

Each study is the default config with only the raw arm and another `ift.steps` (benign FT = half of it); the rule,
declared in docs/LOG.md before the sweep ran, reads the raw arm only:
  (i)  twin helpfulness after IFT (top-k, chat) has a 95% CI lower bound ≥ the raw base model's pooled twin
       helpfulness (completion format): the chat format is learned;
  (ii) ASR after IFT (top-k) has a 95% CI lower bound ≥ 0.05: clearly above the floor.
The smallest IFT meeting both is chosen (else the smallest meeting (i)).

    python scripts/sweep_table.py runs/sweep/ift4 runs/sweep/ift8 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from safepretrain.eval.stats import aligned_matrices, hierarchical_bootstrap_mean, index_records, paired_difference
from safepretrain.report.data import collect_records
from safepretrain.rundir import BASE, BENIGN_FT, HARMFUL_FT, IFT, RunDir
from safepretrain.utils import read_json

DECODER, ARM, FLOOR = "topk", "raw", 0.05


def pooled(idx, stage: str, metric: str, decoder: str = DECODER):
    m = aligned_matrices(idx, [ARM], stage, decoder, metric)
    return None if m.missing else hierarchical_bootstrap_mean(m.values[ARM], 2000)


def rise(idx, stage: str):
    """ASR at `stage` − ASR after IFT (raw, paired by seed and prompt): the attack's control."""
    a, b = (aligned_matrices(idx, [ARM], s, DECODER, "asr/asr") for s in (stage, IFT))
    if a.missing or b.missing:
        return None
    return paired_difference(a.values[ARM], b.values[ARM], 2000)


def fmt(x) -> str:
    return "–" if x is None else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


def fmt_rise(r) -> str:
    return "–" if r is None else f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]"


def main(runs: list[str]) -> None:
    rows = []
    for run in runs:
        rd = RunDir(Path(run))
        cfg = rd.load_config()
        idx = index_records(collect_records(rd, [ARM]))
        tokens = [read_json(p)["tokens"]["tokens"] for s in cfg.seeds
                  if (p := rd.stage_dir(ARM, s, IFT) / "done.json").is_file()]
        rows.append({"steps": cfg.ift.steps, "ift_tokens": sum(tokens) / max(1, len(tokens)),
                     "budget": cfg.curriculum.token_budget,
                     "help_base": pooled(idx, BASE, "overrefusal/helpfulness"),
                     "help_ift": pooled(idx, IFT, "overrefusal/helpfulness"),
                     "asr_base": pooled(idx, BASE, "asr/asr"), "asr_ift": pooled(idx, IFT, "asr/asr"),
                     "asr_bft": pooled(idx, BENIGN_FT, "asr/asr"), "asr_hft": pooled(idx, HARMFUL_FT, "asr/asr"),
                     "depth0": pooled(idx, IFT, "depth/asr_prefill_0", "none"),
                     "depth4": pooled(idx, IFT, "depth/asr_prefill_4", "none"),
                     "c3_bft": rise(idx, BENIGN_FT), "c3_hft": rise(idx, HARMFUL_FT)})
    print("| IFT steps | IFT tokens (% of pretraining) | twin help base | twin help IFT | ASR base | ASR IFT | "
          "ASR benign FT | benign FT − IFT | ASR harmful FT | harmful FT − IFT | depth k=0 | depth k=4 |")
    print("|---" * 12 + "|")
    for r in rows:
        print(f"| {r['steps']} | {r['ift_tokens']:,.0f} ({100 * r['ift_tokens'] / r['budget']:.1f} %) | "
              f"{fmt(r['help_base'])} | {fmt(r['help_ift'])} | {fmt(r['asr_base'])} | {fmt(r['asr_ift'])} | "
              f"{fmt(r['asr_bft'])} | {fmt_rise(r['c3_bft'])} | {fmt(r['asr_hft'])} | {fmt_rise(r['c3_hft'])} | "
              f"{fmt(r['depth0'])} | {fmt(r['depth4'])} |")
    chat = [r for r in rows if r["help_ift"] and r["help_base"] and r["help_ift"][1] >= r["help_base"][0]]
    both = [r for r in chat if r["asr_ift"] and r["asr_ift"][1] >= FLOOR]
    pick = min(both or chat, key=lambda r: r["steps"], default=None)
    print(f"\nchat format learned (i): {[r['steps'] for r in chat]}; also above the floor (ii): "
          f"{[r['steps'] for r in both]}; rule picks: {pick['steps'] if pick else 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:])
