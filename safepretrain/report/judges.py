"""Report sections on what the judges and the jailbreaks say: ASR under every attack (its tables are the
jailbreak sections of `report/sections.py`), each judge's rates side by side, and how far the judges agree with
human labels and with each other (eval/judges/agreement.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safepretrain.config import StudyConfig
from safepretrain.eval.attacks import ATTACKS
from safepretrain.eval.judges.agreement import pairwise_agreement
from safepretrain.report.data import as_rundir
from safepretrain.report.sections import STAGE_ORDER, md_table, order, stage_title
from safepretrain.rundir import RunDir
from safepretrain.utils import read_json, read_jsonl, write_csv


def jailbreak_intro(cfg: StudyConfig) -> list[str]:
    """What each attack does; empty when the study runs none."""
    if not cfg.eval.attacks:
        return []
    decoders = ", ".join(cfg.eval.decoders_for(attack=True))
    return ["Each attack reruns the ASR prompts: `prefill` starts the answer with a compliance prefix, `template` "
            "wraps the request in a jailbreak template (pyrit), `gcg` optimises a suffix per prompt and model, "
            "`gcg_adaptive` also penalises the tag along the target (against SafeBeam), `in_context` hands the "
            "hazard's true procedure over as a search result before the request. GCG attacks the first "
            f"{cfg.eval.attack.gcg_prompts} prompts only. Decoders: {decoders} (`eval.attack_decoders`). Plain ASR "
            "(no attack) is the first table of the generation section above; whether an attack attacks at all is "
            "its row under Controls.", ""]


def gcg_effect(run_dir: Path | RunDir) -> list[str]:
    """Did the suffix search work? Mean target NLL before and after, and log p(tag) along the target, over every
    attacked prompt, model and decoder's sample (the suffixes are per prompt and model, shared by decoders)."""
    rd = as_rundir(run_dir)
    rows = []
    for attack in ATTACKS:  # every attack that reports the suffix search's objective (the GCG family)
        infos = [s["attack_info"] for p in rd.samples_files(task=f"asr_{attack}", decoder="topk")
                 for s in read_jsonl(p) if s.get("attack_info")]
        if infos and "target_nll_before" in infos[0]:
            mean = {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}
            rows.append([attack, f"{mean['target_nll_before']:.3f}", f"{mean['target_nll_after']:.3f}",
                         f"{mean['tag_logprob']:.3f}", str(len(infos))])
    if not rows:
        return []
    return ["GCG's own objective (top-k samples' suffixes; nats per target token): the adaptive attack also pushes "
            "log p(tag) along the target down, against SafeBeam.", "",
            *md_table(["attack", "target NLL before", "after", "log p(tag) on target", "prompts x models"], rows), ""]


def asr_by_judge(rows: list[dict], out_csv: Path) -> list[str]:
    """Mean ASR over seeds per arm × stage × decoder × task under every judge: the full table to a CSV, top-k in
    the report, one table per stage (a judge's rate is only comparable to another's on the same samples)."""
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
    write_csv(table, out_csv, columns=list(table[0]))
    shown = [r for r in table if r["decoder"] == "topk"]
    out = ["### ASR under every judge (top-k; mean over seeds; every decoder in "
           f"[{out_csv.name}]({out_csv.name}))", ""]
    for stage in order({r["stage"] for r in shown}, STAGE_ORDER):
        out += [f"*{stage_title(stage)}*", ""]
        out += md_table(["arm", "task", *judges], ([r["arm"], r["task"], *("–" if r[j] is None else f"{r[j]:.2f}"
                                                                          for j in judges)]
                                                   for r in shown if r["stage"] == stage)) + [""]
    return out


def unparsable_lines(rows: list[dict]) -> list[str]:
    """How many answers each judge gave that could not be read (the tasks' `unparsable` count rows): left out of that
    judge's rates, so a rate's n is the parsed answers only. Reported for every judge that counts them (llm), zero
    included."""
    counted = [r for r in rows if r.get("judge") and r["metric"] == "unparsable"]
    if not counted:
        return []
    totals: dict[str, list[int]] = {}
    for r in counted:
        t = totals.setdefault(r["judge"], [0, 0])
        t[0] += int(r["value"])
        t[1] += int(r["n"])
    return ["Unparsable judge answers (left out of that judge's rates, never counted as safe; per model in "
            "results.csv, metric `unparsable`): "
            + "; ".join(f"`{j}` {u} of {n} verdicts" for j, (u, n) in totals.items()) + ".", ""]


def agreement_section(human: dict, pairs: list[dict]) -> list[str]:
    """Each judge against human labels, and every pair of judges on the same samples (eval/judges/agreement.py),
    in tables of at most six columns."""
    out = ["## Judges: agreement with humans and with each other", "",
           "Cohen's κ corrects agreement for chance (0 = chance, 1 = perfect). Human sets have no prompts.", ""]
    if human:
        out += md_table(["judge", "labelled set", "accuracy", "κ", "n"],
                        ([name, s, f"{m['accuracy']:.2f}", f"{m['kappa']:.2f}", m["n"]]
                         for name, sets in human.items() for s, m in sets.items())) + [""]
    if pairs:
        out += md_table(["prompts · verdict", "judges A / B", "rates A / B", "agreement", "κ", "n"],
                        ([f"{r['prompts']} · {r['verdict']}", f"{r['judge_a']} / {r['judge_b']}",
                          f"{r['rate_a']:.2f} / {r['rate_b']:.2f}", f"{r['accuracy']:.2f}", f"{r['kappa']:.2f}",
                          r["n"]] for r in pairs)) + [""]
    return out


def judges_section(run_dir: Path | RunDir, rows: list[dict]) -> list[str]:
    rd = as_rundir(run_dir)
    path = rd.human_agreement_file
    human = read_json(path) if path.is_file() else {}
    lines = agreement_section(human, pairwise_agreement(rd.root)) + unparsable_lines(rows)
    return lines + asr_by_judge(rows, rd.report / "asr_by_judge.csv")
