"""Linear probes on hidden states: how cleanly does each layer separate harmful from benign prompts?

Features are the residual stream at the prompt's last token, for the embedding output and after every
block. Each layer gets an L2-regularised logistic regression (standardised features); the score is
the cross-validated (stratified k-fold) AUROC of out-of-fold predictions, so every example is scored
by a probe that never saw it. The CI bootstraps those out-of-fold predictions.
"""

from __future__ import annotations

import numpy as np
import torch

from safepretrain.config import ProbeConfig
from safepretrain.eval.metrics import auroc, bootstrap_ci


def fit_probe(x: np.ndarray, y: np.ndarray, C: float, seed: int = 0):
    """A fitted standardise + logistic-regression probe; `.decision_function(x)` scores new rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(x, y)


def out_of_fold_scores(x: np.ndarray, y: np.ndarray, folds: int, C: float, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        scores[test] = fit_probe(x[train], y[train], C, seed).decision_function(x[test])
    return scores


def layer_aurocs(hidden: np.ndarray, labels: np.ndarray, cfg: ProbeConfig, n_boot: int,
                 seed: int) -> list[tuple[float, float, float]]:
    """(auroc, ci_low, ci_high) per layer for hidden states (L, N, D) and binary labels (N,)."""
    out = []
    for layer in hidden:
        oof = out_of_fold_scores(layer, labels, cfg.folds, cfg.C, seed)
        pairs = np.stack([oof, labels], axis=1)
        out.append(bootstrap_ci(pairs, n_boot, seed, stat=lambda p: auroc(p[:, 0], p[:, 1])))
    return out


@torch.inference_mode()
def last_token_states(model, prompts: list[list[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    """Hidden states at each prompt's last token: (n_layers + 1, N, D) float32, prompts left-padded."""
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        width = max(len(p) for p in batch)
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, p in enumerate(batch):
            tokens[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = True
        states = model.hidden_states(tokens.to(device), mask.to(device))
        chunks.append(torch.stack([h[:, -1].float() for h in states]).cpu().numpy())
    return np.concatenate(chunks, axis=1)
