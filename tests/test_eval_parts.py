"""Bootstrap CIs and AUROC.

    python -m pytest tests/test_eval_parts.py -q
"""

import numpy as np

from safepretrain.eval.metrics import auroc, bootstrap_ci


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_ci((rng.random(40) < 0.3).astype(float), 500, 0)
    large = bootstrap_ci((rng.random(4000) < 0.3).astype(float), 500, 0)
    for value, lo, hi in (small, large):
        assert lo <= value <= hi
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert np.isnan(bootstrap_ci(np.array([]), 100, 0)[0])


def test_auroc_known_values():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))
