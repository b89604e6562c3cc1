"""`safepretrain data eval-scorer`: how well the configured scorers score, as the paper's Table 3 reports it.

Each in-process scorer of `data.scorer.kind` (and their max-ensemble, when there are several) scores:
- **held-out labels**: a stratified 20% of the world's labelled examples (plus `--labels FILE`), never seen by
  the embedding head, which is fitted on the other 80% here;
- **ground truth**: the world's documents that carry a truth label (the organism), minus any text the head
  was fitted on, at most `max_truth_docs` (seeded sample).

Metrics per (scorer, set): multiclass macro F1 over 0-5, Recall@1 and Recall@3 (recall of unsafe text with
labels and predictions binarised at 1 and at 3), and the false-positive rate on score-0 text (FPR@1). The
`llm_rubric` scorer needs a server and is not evaluated here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from safepretrain.config import StudyConfig
from safepretrain.data.scorers import SCORERS, in_process
from safepretrain.data.scoring import classification_metrics, score_documents
from safepretrain.utils import read_jsonl, write_json, write_text_atomic
from safepretrain.world import World

METRICS = ("f1_macro", "recall@1", "recall@3", "fpr@1", "n")


def load_labels(path: Path) -> list[dict]:
    rows = [r for r in read_jsonl(path)]
    bad = [i for i, r in enumerate(rows) if not isinstance(r.get("text"), str)
           or not isinstance(r.get("score"), int) or not 0 <= r["score"] <= 5]
    if bad:
        raise ValueError(f"{path}: line(s) {[i + 1 for i in bad[:5]]} are not {{\"text\": str, \"score\": 0-5}}")
    return rows


def evaluate_scorers(cfg: StudyConfig, world: World, labels_file: Path | None = None,
                     max_truth_docs: int = 2000) -> dict:

    sc, seed = cfg.data.scorer, cfg.data.seed
    labels = list(world.scorer_labels) + (load_labels(labels_file) if labels_file else [])
    y = np.asarray([int(r["score"]) for r in labels])
    counts = np.bincount(y, minlength=6)
    stratify = y if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=stratify)
    scorers = {}
    for kind in in_process(sc.kinds):  # a fitted scorer is fitted on the 80% here; the others are loaded
        fit = SCORERS[kind].options.get("fit")
        scorers[kind] = fit([labels[i]["text"] for i in train], y[train].tolist(), sc, seed=seed)[0] if fit \
            else SCORERS[kind].build(sc, None)
    if not scorers:
        raise ValueError(f"data.scorer.kind has no in-process scorer ({', '.join(in_process(list(SCORERS)))}) to "
                         "evaluate")

    seen = {labels[i]["text"] for i in train}
    truth = [d for d in world.documents if isinstance(d.get("truth"), int) and d["text"] not in seen]
    if len(truth) > max_truth_docs:
        truth = random.Random(seed).sample(truth, max_truth_docs)
    sets = {"held-out labels": ([labels[i]["text"] for i in test], y[test]),
            "ground truth": ([d["text"] for d in truth], np.asarray([d["truth"] for d in truth]))}
    table = []
    for set_name, (texts, gold) in sets.items():
        if not len(texts):
            continue
        preds = {k: np.asarray([r["score"] for r in score_documents(s, texts, sc.chunk_words)])
                 for k, s in scorers.items()}
        if len(preds) > 1:
            preds["max-ensemble"] = np.max(np.stack(list(preds.values())), axis=0)
        table += [{"set": set_name, "scorer": k, **classification_metrics(gold, p)} for k, p in preds.items()]
    return {"rows": table, "labels": {"train": len(train), "held_out": len(test), "file": str(labels_file or "")},
            "truth_docs": len(truth), "chunk_words": sc.chunk_words}


def markdown(result: dict) -> str:
    lines = ["# Scorer quality (paper Table 3 style)", "",
             f"Held-out labels: {result['labels']['held_out']} (head fitted on {result['labels']['train']}); "
             f"ground-truth documents: {result['truth_docs']}; chunk length {result['chunk_words']} words; "
             "document score = max over chunks.", "",
             "| set | scorer | macro F1 | Recall@1 | Recall@3 | FPR@1 | n |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{r[m]:.3f}" if isinstance(r[m], float) else str(r[m]) for m in METRICS]
        lines.append(f"| {r['set']} | {r['scorer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_scorer_eval(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scorer_eval.json", result)
    write_text_atomic(out / "scorer_eval.md", markdown(result))
    return out / "scorer_eval.json", out / "scorer_eval.md"
