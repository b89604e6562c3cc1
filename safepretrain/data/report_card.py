"""Data safety report card: what the scorer saw and what the interventions produced.

A light version of the paper's card (§2.6): the score histogram overall and per source, harm
categories of unsafe documents, stream sizes, rejected records by reason, and the scorer's held-out
quality. Written as JSON (for code) and Markdown (for people); it reads only the stage's outputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from safepretrain.utils import read_jsonl, write_json, write_text_atomic


def build_report_card(folder: Path, stream_sizes: dict, scorer_metrics: dict) -> dict:
    hist: dict[str, Counter] = defaultdict(Counter)
    categories: Counter = Counter()
    for path in sorted((folder / "scores").glob("*.jsonl.gz")):
        for row in read_jsonl(path):
            hist[row["source"]][row["score"]] += 1
            hist["(all)"][row["score"]] += 1
            if row["score"] > 0:
                categories[row["category"]] += 1
    rejected = Counter()
    for path in sorted((folder / "rejected").glob("*.jsonl")):
        for row in read_jsonl(path):
            rejected[row["reason"]] += 1
    datatrove_stats = folder / "logs" / "stats.json"
    card = {
        "score_histogram": {src: {str(s): c[s] for s in range(6)} for src, c in sorted(hist.items())},
        "unsafe_categories": dict(categories.most_common()),
        "streams": stream_sizes,
        "rejected": {"total": sum(rejected.values()), "by_reason": dict(rejected)},
        "scorer": scorer_metrics,
        "datatrove_stats": str(datatrove_stats) if datatrove_stats.exists() else None,
    }
    write_json(folder / "report_card.json", card)
    write_text_atomic(folder / "report_card.md", to_markdown(card))
    return card


def to_markdown(card: dict) -> str:
    lines = ["# Data safety report card", "", "## Harmfulness scores (documents per score)", "",
             "| source | 0 | 1 | 2 | 3 | 4 | 5 | unsafe share |", "|---|---|---|---|---|---|---|---|"]
    for src, h in card["score_histogram"].items():
        total = sum(h.values()) or 1
        unsafe = sum(v for k, v in h.items() if k != "0") / total
        lines.append(f"| {src} | " + " | ".join(str(h[str(s)]) for s in range(6)) + f" | {unsafe:.1%} |")
    lines += ["", "## Streams", "", "| stream | documents | tokens |", "|---|---|---|"]
    lines += [f"| {s} | {v['docs']:,} | {v['tokens']:,} |" for s, v in card["streams"].items()]
    lines += ["", "## Harm categories of unsafe documents", ""]
    lines += [f"- {k}: {v}" for k, v in card["unsafe_categories"].items()] or ["- none"]
    rej = card["rejected"]
    lines += ["", f"## Rejected records: {rej['total']}", ""]
    lines += [f"- {k}: {v}" for k, v in rej["by_reason"].items()] or ["- none"]
    m = card["scorer"]
    lines += ["", "## Scorer (held-out split of the labelled examples)", "",
              f"macro F1 {m.get('f1_macro', float('nan')):.3f}, Recall@1 {m.get('recall@1', float('nan')):.3f}, "
              f"Recall@3 {m.get('recall@3', float('nan')):.3f}, false-positive rate on score 0 "
              f"{m.get('fpr@1', float('nan')):.3f} (n={m.get('n', 0)})", ""]
    return "\n".join(lines)
