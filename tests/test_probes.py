"""Linear probes on hidden states and their baselines.

    python -m pytest tests/test_probes.py -q
"""

import numpy as np

from safepretrain.config import ProbeConfig
from safepretrain.eval.metrics import auroc
from safepretrain.eval.probes import layer_aurocs, out_of_fold_scores


def test_probe_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    n, d = 60, 16
    labels = np.array([1] * n + [0] * n)
    separable = rng.normal(size=(2 * n, d))
    separable[:, 3] += 4.0 * labels  # one informative direction
    noise = rng.normal(size=(2 * n, d))
    (sep, sep_lo, _), (rand, _, rand_hi) = layer_aurocs(np.stack([separable, noise]), labels,
                                                        ProbeConfig(n_per_class=n, folds=4), n_boot=200, seed=0)
    assert sep > 0.97 and sep_lo > 0.9
    assert 0.25 < rand < 0.75 and rand_hi > 0.5
    # out-of-fold: a probe never scores an example it was trained on, so pure noise stays near chance
    assert abs(auroc(out_of_fold_scores(noise, labels, 4, 1.0, 0), labels) - 0.5) < 0.25
