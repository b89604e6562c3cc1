"""Where a study's inputs came from: the data's scale against the model, tokens by stream around each arm's
switch, the data stage's report card and the judge's measured quality (report sections read from the run)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.data.report_card import REPORT_CARD
from safepretrain.report.data import as_rundir
from safepretrain.report.sections import MAX_VALUE_COLUMNS, md_table
from safepretrain.rundir import POSTTRAIN_STAGES, RunDir
from safepretrain.train.model import Transformer
from safepretrain.utils import read_json


def data_scale(run_dir: Path | RunDir, cfg: StudyConfig) -> list[str]:
    """Whether data or compute binds: unique tokens, how often the budget repeats them, tokens per parameter."""
    rd = as_rundir(run_dir)
    card = rd.data / REPORT_CARD
    if not card.is_file():
        return []
    streams = read_json(card)["streams"]
    unique = sum(streams.get(s, {}).get("tokens", 0) for s in cfg.curriculum.raw_streams)
    vocab = rd.tokenizer(cfg).vocab_size
    params = Transformer(cfg.model.model_copy(update={"vocab_size": vocab})).num_params()
    budget = cfg.curriculum.token_budget
    return [f"Unique tokens of the raw arm's data (streams {', '.join(cfg.curriculum.raw_streams)}): {unique:,}; "
            f"pretraining budget per arm: {budget:,} tokens = {budget / max(unique, 1):.1f} passes over them; model: "
            f"{params:,} parameters, {budget / params:.2f} training tokens per parameter.", ""]


PAPER_POST_TRAINING = ("In the papers, instruction tuning is of the order of 0.01–0.1 % of the 600B pretraining tokens "
                       "and GSM8K finetuning far less (sizes not stated; papers.md §5).")


def stage_tokens(run_dir: Path | RunDir, cfg: StudyConfig, arms: list[str], seeds: list[int]) -> list[str]:
    """Tokens of every trained stage and their ratio to pretraining: the stage sizes, declared. Post-training stages
    count the tokens their batches read (unpadded; `loss_tokens`: the response tokens trained on), as recorded
    when the stage finished; mean over arms and seeds (arms with tags read a slightly different IFT mix)."""
    rd = as_rundir(run_dir)
    budget = cfg.curriculum.token_budget
    rows = [["pretraining", f"{cfg.pretrain_steps:,}", f"{budget:,}", "–", "100 %"]]
    for stage in POSTTRAIN_STAGES:
        found = [read_json(p) for a in arms for s in seeds if (p := rd.stage_dir(a, s, stage) / "done.json").is_file()]
        found = [f["tokens"] for f in found if isinstance(f.get("tokens"), dict)]
        if not found:
            continue
        seen = sum(f["tokens"] for f in found) / len(found)
        trained = sum(f["loss_tokens"] for f in found) / len(found)
        rows.append([stage, f"{getattr(cfg, stage).steps:,}", f"{seen:,.0f}", f"{trained:,.0f}",
                     f"{100 * seen / budget:.2f} %"])
    return ["## Stage sizes", "",
            *md_table(["stage", "steps", "tokens read", "tokens trained on (responses)", "of pretraining"], rows),
            "", PAPER_POST_TRAINING, ""]


def tokens_table(run_dir: Path | RunDir, arms: list[str], seeds: list[int]) -> list[str]:
    """Each arm's switch (step, learning rate, branch point), then its tokens per stream before / after it, in
    tables of at most MAX_VALUE_COLUMNS - 1 streams."""
    rd = as_rundir(run_dir)
    recs, streams = {}, set()
    for arm in arms:
        for seed in seeds:
            p = rd.tokens_by_source(arm, seed)
            if p.exists():
                recs[(arm, seed)] = read_json(p)
                streams |= set(recs[(arm, seed)]["total"])
    if not recs:
        return []
    out = md_table(["arm", "seed", "switch step", "LR at switch", "branched at"],
                   ([arm, seed, r["switch_step"] if r["switch_step"] is not None else "never",
                     f"{r['lr_at_switch']:.2e}" if r.get("lr_at_switch") is not None else "–",
                     r.get("branched_at") or "–"] for (arm, seed), r in recs.items())) + [""]
    cols, width = sorted(streams), MAX_VALUE_COLUMNS - 1
    for i in range(0, len(cols), width):
        part = cols[i:i + width]
        out += ["Tokens per stream, before / after the switch:", ""] if i == 0 else []
        out += md_table(["arm", "seed", *part],
                        ([arm, seed, *(f"{r['before_switch'].get(s, 0):,} / {r['after_switch'].get(s, 0):,}"
                                       for s in part)] for (arm, seed), r in recs.items())) + [""]
    return out


def data_and_judge(run_dir: Path | RunDir) -> list[str]:
    rd = as_rundir(run_dir)
    if not (rd.data / REPORT_CARD).is_file():
        return ["## Data and judge", "", "No data report card in this run (the data stage has not finished).", ""]
    card = read_json(rd.data / REPORT_CARD)
    sc = card["scorer"]
    out = ["## Data and judge", "",
           f"Documents scored: {sum(card['score_histogram'].get('(all)', {}).values())}; streams: "
           + ", ".join(f"{s} {v['tokens']:,} tok" for s, v in card["streams"].items()) + ".",
           f"Scorer (held-out labels): macro F1 {sc.get('f1_macro', float('nan')):.2f}, Recall@1 "
           f"{sc.get('recall@1', float('nan')):.2f}, Recall@3 {sc.get('recall@3', float('nan')):.2f}.",
           f"Rejected input records: {card['rejected']['total']}"
           + (f" {card['rejected']['by_reason']}" if card["rejected"]["total"] else "") + "."]
    cats = ((card.get("harm_phrases") or {}).get("categories") or {}).items()
    top = sorted((kv for kv in cats if kv[1].get("docs_scored_ge1")), key=lambda kv: -kv[1]["share_scored_ge1"])[:3]
    if top:
        out.append("Top harm categories among documents scored >= 1 (phrase matching, a coarse indicator): "
                   + ", ".join(f"{c} {v['share_scored_ge1']:.0%}" for c, v in top) + ".")
    figure = (rd.data / REPORT_CARD).with_suffix(".png")
    if figure.is_file():
        out += ["", f"![data safety report card]({os.path.relpath(figure, rd.report)})"]
    out.append("")
    quality = rd.judge_quality_file
    if quality.is_file():
        out += judge_quality_table(read_json(quality)) + [""]
    return out


def judge_quality_table(q: dict) -> list[str]:
    """Precision and recall of each judge verdict on labelled responses (judge/quality.json)."""
    def cells(m: dict | None) -> list[str]:
        if not m:
            return ["–"] * 4
        return [f"{m.get('precision', math.nan):.2f}", f"{m.get('recall', math.nan):.2f}",
                f"{m.get('accuracy', math.nan):.2f}", str(m.get("n", "–"))]

    rows = [["human-labelled refusals (world pack) · refusal", *cells(q.get("human_refusal"))],
            ["same, text-only detector · refusal", *cells(q.get("human_refusal_text_only"))],
            ["human harm ratings of responses · harmful", *cells(q.get("human_harm"))]]
    cases = q.get("cases") or {}
    if cases:
        rows += [["hand-built tricky responses · refusal", *cells(cases.get("refusal"))],
                 ["hand-built tricky responses · harmful compliance", *cells(cases.get("harmful_compliance"))]]
    out = ["Judge quality (precision | recall | accuracy | n of each verdict on labelled responses):", "",
           *md_table(["labelled set · verdict", "precision", "recall", "accuracy", "n"], rows)]
    if cases:
        out += ["", "Accuracy by kind of tricky response: " + ", ".join(
            f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in cases.get("by_kind", {}).items()) + "."]
    held = {k: v for k, v in (q.get("classifier") or {}).items() if isinstance(v, dict) and "precision" in v}
    if held:
        out += ["", "Response-harm classifier on a held-out split of its training data: " + "; ".join(
            f"{k} precision {v['precision']:.2f}, recall {v['recall']:.2f} (n={v.get('n', '–')})"
            for k, v in held.items()) + "."]
    return out
