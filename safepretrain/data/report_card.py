"""Data safety report card: what the scorer saw and what the interventions produced.

A light version of the paper's card (§2.6): the score histogram overall and per source, harm
categories of unsafe documents, stream sizes, rejected records by reason, and the scorer's held-out
quality. Written as JSON (for code) and Markdown (for people); it reads only the stage's outputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from safepretrain.utils import read_jsonl, write_json, write_text_atomic


def scorer_vs_truth(rows: list[dict]) -> dict | None:
    """The scorer against the truth labels (the organism): the 6x6 confusion matrix, and what matters for
    routing: recall of truly harmful documents (truth >= 4) at score >= 4 and at score >= 1, leakage (truth
    >= 4 scored 0, i.e. routed into the safe stream) and false alarms (truth 0 scored >= 1)."""
    rows = [r for r in rows if r.get("truth") is not None]
    if not rows:
        return None
    confusion = [[0] * 6 for _ in range(6)]
    for r in rows:
        confusion[r["truth"]][r["score"]] += 1
    harmful = [r for r in rows if r["truth"] >= 4]
    safe = [r for r in rows if r["truth"] == 0]

    def share(xs, cond):
        return round(sum(1 for r in xs if cond(r)) / len(xs), 4) if xs else None

    return {"n": len(rows), "confusion_truth_by_score": confusion,
            "exact_agreement": share(rows, lambda r: r["score"] == r["truth"]),
            "recall_truth4_at_score4": share(harmful, lambda r: r["score"] >= 4),
            "recall_truth4_at_score1": share(harmful, lambda r: r["score"] >= 1),
            "leakage_truth4_scored0": share(harmful, lambda r: r["score"] == 0),
            "leaked_docs": sum(1 for r in harmful if r["score"] == 0),
            "false_alarm_truth0_scored1": share(safe, lambda r: r["score"] >= 1)}


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct word n-grams / all word n-grams over `texts` (1 = no n-gram repeats; template text is low)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [t.lower().split()] for i in range(len(ws) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


def stream_diversity(folder: Path, streams=("rephrased", "refusal", "moral_ed"), max_docs: int = 2000) -> dict:
    """Distinct-1/2/4 of the synthetic streams and the share of their most common opening sentence: how
    template-like the intervention text is (a model can learn a single dominant template as a trigger)."""
    from safepretrain.data.pipeline import read_stream

    out = {}
    for s in streams:
        texts = [r["text"] for r in read_stream(folder, s)][:max_docs]
        if not texts:
            continue
        firsts = Counter(t.split(". ")[0][:80] for t in texts)
        out[s] = {"docs": len(texts), **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 4)},
                  "top_opening_share": round(firsts.most_common(1)[0][1] / len(texts), 4)}
    return out


def build_report_card(folder: Path, stream_sizes: dict, scorer_metrics: dict) -> dict:
    hist: dict[str, Counter] = defaultdict(Counter)
    categories: Counter = Counter()
    rows = [row for path in sorted((folder / "scores").glob("*.jsonl.gz")) for row in read_jsonl(path)]
    for row in rows:
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
        # literal tag / chat-marker strings made inert at reading (data.steps.neutralise_special)
        "special_strings": {"documents": sum(1 for r in rows if r.get("special_strings")),
                            "occurrences": sum(r.get("special_strings", 0) for r in rows)},
        "scorer": scorer_metrics,
        "scorer_vs_truth": scorer_vs_truth(rows),
        "synthetic_diversity": stream_diversity(folder),
        # relative to the data folder, like every stored path, so a copied run points at its own file
        "datatrove_stats": str(datatrove_stats.relative_to(folder)) if datatrove_stats.exists() else None,
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
    sp = card.get("special_strings") or {"documents": 0, "occurrences": 0}
    lines += ["", f"Special-token strings made inert (tag, chat markers, end of text as literal text): "
              f"{sp['occurrences']} in {sp['documents']} documents (a leading `<` became `‹`; a tag without one got a "
              "word joiner after its first character)."]
    m = card["scorer"]
    lines += ["", "## Scorer (held-out split of the labelled examples)", "",
              f"macro F1 {m.get('f1_macro', float('nan')):.3f}, Recall@1 {m.get('recall@1', float('nan')):.3f}, "
              f"Recall@3 {m.get('recall@3', float('nan')):.3f}, false-positive rate on score 0 "
              f"{m.get('fpr@1', float('nan')):.3f} (n={m.get('n', 0)})", ""]
    t = card.get("scorer_vs_truth")
    if t:
        lines += ["## Scorer against the truth labels (every document of the organism)", "",
                  f"Recall of truly harmful documents (truth >= 4) at score >= 4: {t['recall_truth4_at_score4']:.3f}, "
                  f"at score >= 1: {t['recall_truth4_at_score1']:.3f}; leaked into the safe stream (scored 0): "
                  f"{t['leaked_docs']} ({t['leakage_truth4_scored0']:.3f}); false alarms (truth 0 scored >= 1): "
                  f"{t['false_alarm_truth0_scored1']:.3f}; exact agreement {t['exact_agreement']:.3f} "
                  f"(n={t['n']}).", "",
                  "| truth \\ score | 0 | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {i} | " + " | ".join(str(c) for c in row) + " |"
                  for i, row in enumerate(t["confusion_truth_by_score"])]
        lines.append("")
    div = card.get("synthetic_diversity") or {}
    if div:
        lines += ["## Synthetic text diversity", "", "| stream | documents | distinct-1 | distinct-2 | distinct-4 | "
                  "top opening share |", "|---|---|---|---|---|---|"]
        lines += [f"| {s} | {v['docs']} | {v['distinct_1']} | {v['distinct_2']} | {v['distinct_4']} | "
                  f"{v['top_opening_share']:.1%} |" for s, v in div.items()]
        lines.append("")
    return "\n".join(lines)
