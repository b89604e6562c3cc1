"""Report sections on what the judges and the jailbreaks say: ASR under every attack, each judge's rates side by
side, and how far the judges agree with human labels and with each other (eval/agreement.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safepretrain.config import StudyConfig
from safepretrain.eval.judges.agreement import agreement_markdown, pairwise_agreement
from safepretrain.utils import read_json, read_jsonl


def jailbreak_section(pooled: list[dict], arms: list[str], cfg: StudyConfig, table, run_dir: Path) -> list[str]:
    """ASR under each configured attack beside plain ASR, pooled like every table (primary judge)."""
    if not cfg.eval.attacks:
        return []
    out = ["## Jailbreaks", "",
           "Each attack reruns the ASR prompts: `prefill` starts the answer with a compliance prefix, `template` wraps "
           "the request in a jailbreak template (pyrit), `gcg` optimises a suffix per prompt and model, "
           "`gcg_adaptive` also penalises the tag along the target (against SafeBeam). GCG attacks the first "
           f"{cfg.eval.attack.gcg_prompts} prompts only.", ""]
    out += table(pooled, arms, "asr", "asr", "↓")
    for attack in cfg.eval.attacks:
        out += table(pooled, arms, f"asr_{attack}", "asr", "↓")
    return out + gcg_effect(run_dir)


def gcg_effect(run_dir: Path) -> list[str]:
    """Did the suffix search work? Mean target NLL before and after, and log p(tag) along the target, over every
    attacked prompt, model and decoder's sample (the suffixes are per prompt and model, shared by decoders)."""
    rows = []
    for attack in ("gcg", "gcg_adaptive"):
        infos = [s["attack_info"] for p in sorted((run_dir / "eval").glob(f"*/seed*/*/topk/asr_{attack}/samples.jsonl"))
                 for s in read_jsonl(p) if s.get("attack_info")]
        if infos:
            mean = {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}
            rows.append(f"| {attack} | {mean['target_nll_before']:.3f} | {mean['target_nll_after']:.3f} | "
                        f"{mean['tag_logprob']:.3f} | {len(infos)} |")
    if not rows:
        return []
    return ["GCG's own objective (top-k samples' suffixes; nats per target token): the adaptive attack also pushes "
            "log p(tag) along the target down, against SafeBeam.", "",
            "| attack | target NLL before | after | log p(tag) on target | prompts x models |",
            "|---|---|---|---|---|", *rows, ""]


def asr_by_judge(rows: list[dict], out_csv: Path) -> list[str]:
    """Mean ASR over seeds per arm × stage × decoder × task under every judge: the full table to a CSV, top-k in
    the report (a judge's rate is only comparable to another's on the same samples)."""
    judged = [r for r in rows if r.get("judge") and r["task"].startswith("asr") and r["metric"] == "asr"]
    judges = list(dict.fromkeys(r["judge"] for r in judged))
    if len(judges) < 2:
        return []
    cells: dict[tuple, list[float]] = {}
    for r in judged:
        cells.setdefault((r["arm"], r["stage"], r["decoder"], r["task"], r["judge"]), []).append(r["value"])
    keys = sorted({k[:4] for k in cells})
    table = [{"arm": a, "stage": s, "decoder": d, "task": t,
              **{j: round(float(np.mean(cells[(a, s, d, t, j)])), 4) if (a, s, d, t, j) in cells else None
                 for j in judges}} for a, s, d, t in keys]
    from safepretrain.report.build import write_csv

    write_csv(table, out_csv, columns=list(table[0]))
    shown = [r for r in table if r["decoder"] == "topk"]
    out = ["### ASR under every judge (top-k; mean over seeds; every decoder in "
           f"[{out_csv.name}]({out_csv.name}))", "",
           "| arm | stage | task | " + " | ".join(judges) + " |", "|---|---|---|" + "---|" * len(judges)]
    out += [f"| {r['arm']} | {r['stage']} | {r['task']} | "
            + " | ".join("–" if r[j] is None else f"{r[j]:.2f}" for j in judges) + " |" for r in shown]
    return out + [""]


def judges_section(run_dir: Path, rows: list[dict]) -> list[str]:
    path = run_dir / "judge" / "agreement" / "agreement.json"
    human = read_json(path) if path.is_file() else {}
    lines = agreement_markdown(human, pairwise_agreement(run_dir))
    return lines + asr_by_judge(rows, run_dir / "report" / "asr_by_judge.csv")
