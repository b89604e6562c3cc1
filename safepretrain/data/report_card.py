"""Data safety report card: what the scorer saw and what the interventions produced.

A light version of the paper's card (§2.6): the score histogram overall and per source, harm
categories of unsafe documents, per-category rates by phrase matching (all documents and those scored
>= 1), stream sizes, rejected records by reason, and the scorer's held-out quality. Written as JSON (for
code), Markdown (for people) and a PNG (score histogram per source, category rates); it reads only the
stage's outputs.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from matplotlib.figure import Figure

from safepretrain.data.records import read_stream
from safepretrain.utils import log, read_jsonl, write_json, write_text_atomic
from safepretrain.world.taxonomy import HARM_CATEGORIES, categories_by_phrases

# At most this many documents are phrase-matched for the card (an evenly spaced sample when there are more).
PHRASE_DOC_CAP = 200_000
# Where the documents' texts are read from when the stage has no `scored/` folder: every document is in
# exactly one of these (score 0 → safe or val, score >= 1 → unsafe).
REPORT_CARD = "report_card.json"  # in the data folder, beside report_card.png
FALLBACK_STREAMS = ("safe", "val", "unsafe")


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

    out = {}
    for s in streams:
        texts = [r["text"] for r in read_stream(folder, s)][:max_docs]
        if not texts:
            continue
        firsts = Counter(t.split(". ")[0][:80] for t in texts)
        out[s] = {"docs": len(texts), **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 4)},
                  "top_opening_share": round(firsts.most_common(1)[0][1] / len(texts), 4)}
    return out


def build_report_card(folder: Path, stream_sizes: dict, scorer_metrics: dict, scoring: Path | None = None) -> dict:
    """The card of the data stage in `folder`; `scoring` is the folder of its scoring pass (`scored/`, the
    reader's `rejected/`, its datatrove stats), by default `folder` itself."""
    scoring = folder if scoring is None else scoring
    hist: dict[str, Counter] = defaultdict(Counter)
    categories: Counter = Counter()
    rows = [row for path in sorted((folder / "scores").glob("*.jsonl.gz")) for row in read_jsonl(path)]
    for row in rows:
        hist[row["source"]][row["score"]] += 1
        hist["(all)"][row["score"]] += 1
        if row["score"] > 0:
            categories[row["category"]] += 1
    rejected = rejected_by_reason(scoring / "rejected")
    if scoring != folder:
        rejected += rejected_by_reason(folder / "rejected")
    datatrove_stats = scoring / "logs" / "score" / "stats.json"
    available = len(rows) or sum(stream_sizes.get(s, {}).get("docs", 0) for s in FALLBACK_STREAMS) or None
    card = {
        "score_histogram": {src: {str(s): c[s] for s in range(6)} for src, c in sorted(hist.items())},
        "unsafe_categories": dict(categories.most_common()),
        "harm_phrases": phrase_category_rates(scoring, available=available),
        "streams": stream_sizes,
        "rejected": {"total": sum(rejected.values()), "by_reason": dict(rejected.most_common())},
        # literal tag / chat-marker strings made inert at reading (data.steps.neutralise_special)
        "special_strings": {"documents": sum(1 for r in rows if r.get("special_strings")),
                            "occurrences": sum(r.get("special_strings", 0) for r in rows)},
        "scorer": scorer_metrics,
        "scorer_vs_truth": scorer_vs_truth(rows),
        "synthetic_diversity": stream_diversity(folder),
        # relative to the data folder, like every stored path, so a copied run points at its own file
        "datatrove_stats": os.path.relpath(datatrove_stats, folder) if datatrove_stats.exists() else None,
    }
    card["png"] = None
    try:
        plot_report_card(card, folder / "report_card.png")
        card["png"] = "report_card.png"  # relative to the data folder
    except Exception as e:  # a figure must never cost the data stage its outputs
        log.warning(f"data: report card figure not written ({type(e).__name__}: {e})")
        (folder / "report_card.png").unlink(missing_ok=True)  # never a stale figure beside a new card
    write_json(folder / REPORT_CARD, card)
    write_text_atomic(folder / "report_card.md", to_markdown(card))
    return card


def rejected_by_reason(folder: Path) -> Counter:
    """Rejected records by reason, from every `*.jsonl` and `*.jsonl.gz` under `folder` (subfolders too: the
    reader writes `rejected/<rank>.jsonl`, later steps their own subfolders)."""
    counts: Counter = Counter()
    if not folder.is_dir():
        return counts
    for path in sorted({*folder.rglob("*.jsonl"), *folder.rglob("*.jsonl.gz")}):
        if path.is_file():
            for row in read_jsonl(path):
                counts[row.get("reason", "unknown") if isinstance(row, dict) else "unknown"] += 1
    return counts


def _text_files(folder: Path) -> tuple[str | None, list[Path]]:
    """(where the texts come from, their files): `scored/*.jsonl.gz`, else the streams that hold every original
    document once (safe, val, unsafe)."""
    scored = sorted((folder / "scored").glob("*.jsonl.gz"))
    if scored:
        return "scored", scored
    files = [p for s in FALLBACK_STREAMS for p in sorted((folder / "streams" / s).glob("*.jsonl.gz"))]
    return ("streams/" + ",".join(FALLBACK_STREAMS) if files else None), files


def _doc_score(row: dict) -> int | None:
    s = row.get("harm_score", row.get("score"))
    return s if isinstance(s, int | float) else None


def phrase_category_rates(folder: Path, cap: int = PHRASE_DOC_CAP, available: int | None = None) -> dict:
    """Per harm category, the documents whose text contains one of its indicator phrases
    (`taxonomy.categories_by_phrases`; a document can match several): count and share of all documents read,
    and of those the scorer gave >= 1. At most `cap` documents are read; when `available` (the stage's document
    count) exceeds it, every k-th document is taken so the sample spans every file, not only the first ones."""
    source, files = _text_files(folder)
    every = max(1, math.ceil(available / cap)) if available and cap > 0 else 1
    n = n_unsafe = 0
    hits: Counter = Counter()
    hits_unsafe: Counter = Counter()
    capped = every > 1

    def rows() -> Iterator[dict]:
        for path in files:
            yield from read_jsonl(path)

    for i, row in enumerate(rows()):
        if i % every:
            continue
        if n >= cap:
            capped = True
            break
        text = row.get("text")
        if not isinstance(text, str):
            continue
        cats = categories_by_phrases(text)
        score = _doc_score(row)
        n += 1
        hits.update(cats)
        if score is not None and score >= 1:
            n_unsafe += 1
            hits_unsafe.update(cats)

    def share(k: int, total: int) -> float | None:
        return round(k / total, 4) if total else None

    return {"method": "indicator phrases per category (taxonomy.CATEGORY_PHRASES), whole words, case-insensitive; "
                      "a coarse indicator, not the scorer",
            "read_from": source, "docs": n, "docs_scored_ge1": n_unsafe, "cap": cap, "capped": capped,
            "every_nth": every, "docs_available": available,
            "categories": {c: {"docs": hits[c], "share": share(hits[c], n), "docs_scored_ge1": hits_unsafe[c],
                               "share_scored_ge1": share(hits_unsafe[c], n_unsafe)} for c in HARM_CATEGORIES}}


def plot_report_card(card: dict, path: Path) -> None:
    """Left: documents per harm score (0-5) per source, grouped bars (log y when counts span two orders of
    magnitude). Right: per harm category, the share of all documents and of documents scored >= 1 that match
    its phrases. Written atomically (a temporary name, then os.replace)."""

    hist = {s: h for s, h in card["score_histogram"].items() if s != "(all)"} or card["score_histogram"]
    if len(hist) > 10:  # keep the legend readable: the 9 largest sources and the rest together
        big = sorted(hist, key=lambda s: -sum(hist[s].values()))[:9]
        rest = {str(k): sum(h.get(str(k), 0) for s, h in hist.items() if s not in big) for k in range(6)}
        hist = {**{s: hist[s] for s in sorted(big)}, "(other sources)": rest}
    fig = Figure(figsize=(12, 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    width = 0.8 / max(1, len(hist))
    counts = [v for h in hist.values() for v in h.values() if v > 0]
    for j, (src, h) in enumerate(hist.items()):
        left.bar([k - 0.4 + width * (j + 0.5) for k in range(6)], [h.get(str(k), 0) for k in range(6)], width,
                 label=src, color=f"C{j % 10}")
    if counts and max(counts) / min(counts) >= 100:
        left.set_yscale("log")
    left.set_xticks(range(6))
    left.set_xlabel("harm score")
    left.set_ylabel("documents")
    left.set_title("Documents per harm score, by source")
    if hist:
        left.legend(fontsize=7, ncol=2 if len(hist) > 5 else 1)
    left.grid(axis="y", alpha=0.3)

    hp = card.get("harm_phrases") or {}
    cats = list(HARM_CATEGORIES)
    rates = hp.get("categories") or {}
    y = range(len(cats))
    for off, key, label, color in ((-0.2, "share", f"all documents (n={hp.get('docs', 0):,})", "C0"),
                                   (0.2, "share_scored_ge1", f"scored >= 1 (n={hp.get('docs_scored_ge1', 0):,})",
                                    "C3")):
        right.barh([i + off for i in y], [100 * ((rates.get(c) or {}).get(key) or 0) for c in cats], 0.4,
                   label=label, color=color)
    right.set_yticks(list(y), [c.replace("_", " ") for c in cats], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("% of documents matching the category's phrases")
    right.set_title("Harm categories by phrase matching (coarse)")
    right.legend(fontsize=7, loc="lower right")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    lines += harm_phrases_markdown(card)
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


def harm_phrases_markdown(card: dict) -> list[str]:
    hp = card.get("harm_phrases")
    if not hp:
        return []
    out = ["", "## Harm categories (phrase matching)", "",
           "Phrase matching is a coarse indicator, not the scorer: a category counts when one of its indicator "
           "words occurs (a document can count in several, and a word says nothing of intent).", ""]
    if not hp["docs"]:
        return out + ["No document texts to match (neither `scored/` nor the safe, val and unsafe streams)."]
    note = ""
    if hp["capped"]:
        note = (f" (capped at {hp['cap']:,}: one in every {hp['every_nth']} of the stage's "
                f"{hp['docs_available']:,} documents)" if hp["every_nth"] > 1 and hp.get("docs_available")
                else f" (capped at {hp['cap']:,}: the first documents only)")
    out += [f"Read from `{hp['read_from']}`: {hp['docs']:,} documents{note}, {hp['docs_scored_ge1']:,} of them "
            "scored >= 1.", "",
            "| category | documents | share of all | documents scored >= 1 | share of scored >= 1 |",
            "|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.1%}"

    out += [f"| {c} | {v['docs']:,} | {pct(v['share'])} | {v['docs_scored_ge1']:,} | {pct(v['share_scored_ge1'])} |"
            for c, v in hp["categories"].items()]
    if card.get("png"):
        out += ["", f"![score histogram per source and harm categories]({card['png']})"]
    return out
