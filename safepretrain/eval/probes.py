"""Linear probes on hidden states, and the baselines that say what a probe score is worth.

Features (`probe_features`) are the residual stream for the embedding output and after every block,
taken two ways over the prompt's *content* tokens only (never the chat/format markers around them):
`last` = the state at the last content token, `mean` = the mean over the content tokens. The caller
says where the content is: for every prompt the index of its last content token (`last_content`) and
of its first (`first_content`, default 0), both indices into the unpadded prompt, Python-style
negatives allowed. A chat prompt `[<|user|>, *content, <|end|>, <|assistant|>]` has
`first_content=1, last_content=-3`. The trailing marker is the same token for every prompt, so the
state at the prompt's very last token says nothing at layer 0 (AUROC 0.5) and little above it.

Each layer gets an L2-regularised logistic regression (standardised features); the score is the AUROC
of out-of-fold predictions (stratified k-fold), so every example is scored by a probe that never saw
it. With `groups` (e.g. a pair id shared by a harmful prompt and its content-matched benign twin) the
folds are group-aware (StratifiedGroupKFold): both sides of a pair are always in the same fold, and
the bootstrap CI resamples whole groups. Without groups the CI bootstraps the out-of-fold rows.

What a probe score is worth is read against baselines run through the identical CV/AUROC procedure:
- text only (`text_baselines`): TF-IDF word 1-2-grams, MiniLM sentence embeddings, surface features
  (length, final '?', punctuation counts). If these separate the sets as well as the model does, the
  probe measures the prompt sets, not what the model learned;
- a randomly initialised model of the same shape (`random_init_like`): what the architecture and
  token identities alone give.
`probe_report` runs all of it and returns metric rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safepretrain.config import ProbeConfig
from safepretrain.data.scoring import embed
from safepretrain.eval.metrics import auroc_ci, metric_row

POOLINGS = ("last", "mean")
BASELINES = ("tfidf", "minilm", "surface")


# ------------------------------------------------------------------ probes and cross-validation
def fit_probe(x: np.ndarray, y: np.ndarray, C: float, seed: int = 0):
    """A fitted standardise + logistic-regression probe; `.decision_function(x)` scores new rows."""

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(x, y)


def cv_splits(labels: np.ndarray, folds: int, seed: int,
              groups: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of stratified k-fold; group-aware (no group split across train and
    test) when `groups` (N,) is given."""

    y = np.asarray(labels)
    placeholder = np.zeros(len(y))
    if groups is None:
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(placeholder, y))
    groups = np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} labels")
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ValueError(f"{n_groups} groups cannot fill {folds} folds")
    return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(placeholder, y, groups))


def _oof(fit: Callable, x, y: np.ndarray, splits) -> np.ndarray:
    """Out-of-fold decision scores; `fit(x_train, y_train)` returns a model with decision_function."""
    scores = np.zeros(len(y))
    for train, test in splits:
        scores[test] = fit(x[train], y[train]).decision_function(x[test])
    return scores


def out_of_fold_scores(x: np.ndarray, y: np.ndarray, folds: int, C: float, seed: int,
                       groups: Sequence | None = None) -> np.ndarray:
    """Probe score of every row from a probe fitted on the other folds (group-aware with `groups`)."""
    y = np.asarray(y)
    return _oof(lambda a, b: fit_probe(a, b, C, seed), np.asarray(x), y, cv_splits(y, folds, seed, groups))


def layer_aurocs(hidden: np.ndarray, labels: np.ndarray, cfg: ProbeConfig, n_boot: int, seed: int,
                 groups: Sequence | None = None) -> list[tuple[float, float, float]]:
    """(auroc, ci_low, ci_high) per layer for hidden states (L, N, D) and binary labels (N,)."""
    labels = np.asarray(labels)
    splits = cv_splits(labels, cfg.folds, seed, groups)  # the same folds for every layer
    out = []
    for layer in hidden:
        oof = _oof(lambda a, b: fit_probe(a, b, cfg.C, seed), np.asarray(layer), labels, splits)
        out.append(auroc_ci(oof, labels, n_boot, seed, groups))
    return out


# ------------------------------------------------------------------ features
def _resolve(index: int | Sequence[int], n: int, name: str) -> list[int]:
    values = [index] * n if isinstance(index, (int, np.integer)) else list(index)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} prompts")
    return [int(v) for v in values]


@torch.inference_mode()
def probe_features(model, prompts: list[list[int]], pad_id: int, last_content: int | Sequence[int] = -1,
                   first_content: int | Sequence[int] = 0, batch_size: int = 32) -> dict[str, np.ndarray]:
    """{"last": (n_layers + 1, N, D), "mean": (n_layers + 1, N, D)} float32 residual-stream features.

    `last` is the state at each prompt's last content token, `mean` the mean over its content tokens
    `first_content..last_content` (inclusive). Both are indices into the unpadded prompt, per prompt
    or one int for all, negatives counted from the end (chat prompts: first 1, last -3). Prompts are
    left-padded in batches; padding never enters the features (the model masks it and positions come
    from the mask), so a prompt's features do not depend on its batch.
    """
    n = len(prompts)
    lasts, firsts = _resolve(last_content, n, "last_content"), _resolve(first_content, n, "first_content")
    spans = []
    for i, (p, first, last) in enumerate(zip(prompts, firsts, lasts)):
        a, b = first + len(p) if first < 0 else first, last + len(p) if last < 0 else last
        if not 0 <= a <= b < len(p):
            raise ValueError(f"prompt {i} ({len(p)} tokens): content span {first}..{last} is empty or out of range")
        spans.append((a, b))
    device = next(model.parameters()).device
    last_chunks, mean_chunks = [], []
    for i in range(0, n, batch_size):
        batch, batch_spans = prompts[i : i + batch_size], spans[i : i + batch_size]
        width = max(len(p) for p in batch)
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        content = torch.zeros((len(batch), width), dtype=torch.bool)
        last_col = torch.zeros(len(batch), dtype=torch.long)
        for r, (p, (a, b)) in enumerate(zip(batch, batch_spans)):
            off = width - len(p)
            tokens[r, off:] = torch.tensor(p)
            mask[r, off:] = True
            content[r, off + a : off + b + 1] = True
            last_col[r] = off + b
        states = model.hidden_states(tokens.to(device), mask.to(device))
        content, last_col = content.to(device), last_col.to(device)
        rows = torch.arange(len(batch), device=device)
        count = content.sum(1, keepdim=True).float()
        lasts_b, means_b = [], []
        for h in states:
            h = h.float()
            lasts_b.append(h[rows, last_col])
            # where(), not a multiply by a 0/1 weight: a non-finite value at padding cannot leak in
            means_b.append(torch.where(content[..., None], h, 0.0).sum(1) / count)
        last_chunks.append(torch.stack(lasts_b).cpu().numpy())
        mean_chunks.append(torch.stack(means_b).cpu().numpy())
    return {"last": np.concatenate(last_chunks, axis=1), "mean": np.concatenate(mean_chunks, axis=1)}


def random_init_like(model, seed: int = 0):
    """A freshly initialised model of the same class, config, device and dtype, in eval mode.

    Seeds a forked RNG, so the caller's global torch RNG state is left as it was."""
    base = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    param = next(base.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(base)(base.cfg)
    fresh = fresh.to(param.device)
    if param.dtype != torch.float32:
        fresh = fresh.to(param.dtype)
    return fresh.eval()


# ------------------------------------------------------------------ text-only baselines
def surface_features(texts: Sequence[str]) -> np.ndarray:
    """(N, 9) float: words, characters, ends with '?', ends with '.', ends with '!', and the counts of
    '?', ',', '.', and other punctuation."""
    rows = []
    for t in texts:
        s = t.strip()
        q, comma, dot = s.count("?"), s.count(","), s.count(".")
        other = sum(not c.isalnum() and not c.isspace() for c in s) - q - comma - dot
        rows.append([len(s.split()), len(s), s.endswith("?"), s.endswith("."), s.endswith("!"), q, comma, dot, other])
    return np.asarray(rows, dtype=float)


def _fit_tfidf(C: float, seed: int) -> Callable:
    def fit(x, y):

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        return make_pipeline(vec, LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(list(x), y)

    return fit


def text_baselines(texts: Sequence[str], labels: np.ndarray, groups: Sequence | None = None, folds: int = 5,
                   C: float = 1.0, n_boot: int = 1000, seed: int = 0,
                   kinds: Sequence[str] = BASELINES) -> dict[str, tuple[float, float, float]]:
    """{kind: (auroc, ci_low, ci_high)} of text-only classifiers under the probes' CV/AUROC procedure
    (same folds for the same labels, groups and seed; logistic regression with the same C).

    kinds: `tfidf` (word 1-2-grams, the vectoriser fitted inside each training fold), `minilm`
    (MiniLM sentence embeddings, offline) and `surface` (`surface_features`)."""
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
    unknown = set(kinds) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    splits = cv_splits(labels, folds, seed, groups)
    out = {}
    for kind in kinds:
        if kind == "tfidf":
            oof = _oof(_fit_tfidf(C, seed), np.asarray(list(texts), dtype=object), labels, splits)
        else:
            if kind == "minilm":

                x = embed(list(texts))
            else:
                x = surface_features(texts)
            oof = _oof(lambda a, b: fit_probe(a, b, C, seed), x, labels, splits)
        out[kind] = auroc_ci(oof, labels, n_boot, seed, groups)
    return out


# ------------------------------------------------------------------ everything, as metric rows
def _layer_rows(prefix: str, per_layer: list[tuple[float, float, float]], n: int) -> list[dict]:
    rows = [metric_row(f"{prefix}_layer_{i}", *v, n) for i, v in enumerate(per_layer)]
    best = int(np.nanargmax([v[0] for v in per_layer]))
    rows.append({**metric_row(f"{prefix}_best", *per_layer[best], n), "layer": best})
    return rows


def _best_row(metric: str, rows: list[dict], prefixes: Sequence[str]) -> dict:
    """The best of the `{prefix}_best` rows, renamed, with the pooling it came from."""
    candidates = [(r, p) for r in rows for p in prefixes if r["metric"] == f"{p}_best"]
    row, prefix = max(candidates, key=lambda rp: rp[0]["value"] if np.isfinite(rp[0]["value"]) else -1.0)
    return {**row, "metric": metric, "pooling": prefix.rsplit("_", 1)[-1]}


def probe_report(model, prompts_ids: list[list[int]], texts: Sequence[str], labels: np.ndarray, *, pad_id: int,
                 last_content: int | Sequence[int] = -1, first_content: int | Sequence[int] = 0,
                 groups: Sequence | None = None, folds: int = 5, C: float = 1.0, n_boot: int = 1000, seed: int = 0,
                 batch_size: int = 32, random_init: bool = True, random_init_seed: int = 12345,
                 baselines: Sequence[str] = BASELINES) -> list[dict]:
    """Metric rows: per-layer probe AUROC for each pooling (`auroc_{last,mean}_layer_{i}`), the best
    layer per pooling (`auroc_{last,mean}_best`, with "layer") and overall (`auroc_best`, with "layer"
    and "pooling"); the same for a random-init model of the same shape (`auroc_random_init_...`,
    `auroc_random_init_best`); and the text-only baselines (`baseline_{tfidf,minilm,surface}`).

    `texts` are the prompts' content (what the baselines see), aligned with `prompts_ids` and `labels`.
    The best-layer rows pick the maximum over layers, an optimistic choice made the same way for the
    trained and the random model; compare per-layer rows for an unbiased read."""
    labels = np.asarray(labels)
    n = len(labels)
    if not len(prompts_ids) == len(texts) == n:
        raise ValueError(f"{len(prompts_ids)} prompts, {len(texts)} texts and {n} labels must align")
    cfg = ProbeConfig(folds=folds, C=C)
    models = [("auroc", model)]
    if random_init:
        models.append(("auroc_random_init", random_init_like(model, random_init_seed)))
    rows: list[dict] = []
    for name, m in models:
        feats = probe_features(m, prompts_ids, pad_id, last_content, first_content, batch_size)
        own: list[dict] = []
        for pooling in POOLINGS:
            own += _layer_rows(f"{name}_{pooling}", layer_aurocs(feats[pooling], labels, cfg, n_boot, seed, groups), n)
        own.append(_best_row(f"{name}_best", own, [f"{name}_{p}" for p in POOLINGS]))
        rows += own
    for kind, value in text_baselines(texts, labels, groups, folds, C, n_boot, seed, baselines).items():
        rows.append(metric_row(f"baseline_{kind}", *value, n))
    return rows
