"""How far to trust each judge: agreement with human labels and with each other, as accuracy and Cohen's κ.

- against the world's human-labelled responses: refusal labels (pyrit; the organism's generated ones) and,
  on the registry-text pack, human harm ratings (the held-out "check" half);
- against each other, on the study's own samples: every pair of judges, on attack success (harmful prompts)
  and on refusal (benign prompts). On the organism the exact judge is ground truth, so its row is each judge's
  accuracy.
"""

from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

import numpy as np

from safepretrain.eval.judges.response_harm import human_harm_labels
from safepretrain.rundir import RunDir
from safepretrain.utils import read_jsonl


def cohen_kappa(a, b) -> float:
    """Cohen's κ of two binary labelings: (observed − chance agreement) / (1 − chance); nan when undefined."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.size == 0:
        return float("nan")
    observed = float((a == b).mean())
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return float("nan") if chance == 1.0 else (observed - chance) / (1 - chance)


def _stats(gold, pred) -> dict:
    gold, pred = np.asarray(gold, bool), np.asarray(pred, bool)
    return {"accuracy": round(float((gold == pred).mean()), 4) if gold.size else float("nan"),
            "kappa": round(cohen_kappa(gold, pred), 4), "n": int(gold.size)}


def human_agreement(judges: dict, world, harm_labels: int = 200, seed: int = 0) -> dict:
    """Judge name → {set: {accuracy, kappa, n}} on the world's human-labelled responses (no prompts)."""


    refusal = world.refusal_labels
    try:
        harm = human_harm_labels(world, "check")
        harm = random.Random(seed).sample(harm, min(harm_labels, len(harm)))
    except KeyError:  # the organism has no human harm ratings
        harm = []
    out = {}
    for name, judge in judges.items():
        row = {}
        if refusal:
            texts = [r["text"] for r in refusal]
            v = judge.judge([""] * len(texts), texts, [False] * len(texts), kind="benign")
            # a verdict the judge could not give (unparsable: None) is left out, as in the rates
            kept = [(r["is_refusal"], x.refused) for r, x in zip(refusal, v) if x.refused is not None]
            row["human_refusal"] = _stats([g for g, _ in kept], [p for _, p in kept])
        if harm:
            v = judge.judge([""] * len(harm), [r["text"] for r in harm], [False] * len(harm), kind="harmful")
            kept = [(r["harmful"], x.harmful) for r, x in zip(harm, v) if x.harmful is not None]
            row["human_harm"] = _stats([g for g, _ in kept], [p for _, p in kept])
        out[name] = row
    return out


def sample_verdicts(run_dir: Path) -> dict[str, list[dict]]:
    """"harmful" / "benign" → every sample's per-judge verdicts in the run's generative evaluations."""
    out: dict[str, list[dict]] = {"harmful": [], "benign": []}
    for path in RunDir(run_dir).samples_files():
        task = path.parent.name
        kind = "benign" if task == "overrefusal" else "harmful" if task.startswith("asr") else None
        if kind:
            out[kind] += [s["verdicts"] for s in read_jsonl(path) if s.get("verdicts")]
    return out


def pairwise_agreement(run_dir: Path) -> list[dict]:
    """Every pair of judges on the same samples: attack success on harmful prompts, refusal on benign ones."""
    rows = []
    for kind, field in (("harmful", "success"), ("benign", "refused")):
        verdicts = sample_verdicts(run_dir)[kind]
        names = sorted({j for v in verdicts for j in v})
        for a, b in combinations(names, 2):
            # a verdict either judge could not give (None: unparsable, an unplaced prompt) is no agreement either way
            both = [v for v in verdicts if a in v and b in v and v[a][field] is not None and v[b][field] is not None]
            if both:
                st = _stats([v[a][field] for v in both], [v[b][field] for v in both])
                rows.append({"prompts": kind, "verdict": field, "judge_a": a, "judge_b": b,
                             "rate_a": round(float(np.mean([v[a][field] for v in both])), 4),
                             "rate_b": round(float(np.mean([v[b][field] for v in both])), 4), **st})
    return rows
