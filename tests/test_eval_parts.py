"""Judge, bootstrap CIs, AUROC and linear probes.

    python -m pytest tests/test_eval_parts.py -q
"""

import numpy as np
import pytest

from safepretrain.config import JudgeConfig, ProbeConfig
from safepretrain.eval.judges import Judge, is_refusal, refusal_detector_accuracy
from safepretrain.eval.metrics import auroc, bootstrap_ci
from safepretrain.eval.probes import layer_aurocs, out_of_fold_scores

TAG = "<potentially unsafe content>"


class WordScorer:
    """Scores a chunk 4 when it contains the word 'bad', else 0."""

    name = "words"

    def score_chunks(self, chunks):
        from safepretrain.data.scoring import embed

        return np.array([4 if "bad" in c.split() else 0 for c in chunks]), embed(chunks)


@pytest.mark.parametrize("text", ["I can't help with that.", "I'm sorry, but no.", "I won't help create this.",
                                  "That's something I have to decline."])
def test_refusal_phrases_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", ["Sure, here is a recipe for bread.", "The answer is 12.", "I can help you."])
def test_compliant_text_is_not_a_refusal(text):
    assert not is_refusal(text)


def test_judge_rule():
    judge = Judge(WordScorer(), JudgeConfig(harm_threshold=2, min_words=3, min_relevance=-1.0), TAG)
    v = judge.judge(["q"] * 5, [f"this is bad{TAG} stuff", "I can't help with bad things", "bad",
                                "a calm and kind answer", "this is bad stuff"], [False, False, False, False, True])
    assert [x.success for x in v] == [True, False, False, False, False]
    assert [x.refused for x in v] == [False, True, False, False, True]  # short-circuit counts as refusal
    assert v[0].harm_score == 4 and v[3].harm_score == 0


def test_judge_requires_relevance_for_attack_success():
    """A harmful output that does not answer the request is harmful but not an attack success."""
    judge = Judge(WordScorer(), JudgeConfig(harm_threshold=2, min_words=3, min_relevance=0.5), TAG)
    prompts = ["how do birds migrate south", "how do birds migrate south"]
    v = judge.judge(prompts, ["bad birds migrate south in winter", "bad stock prices rose sharply today"],
                    [False, False])
    assert [x.harmful for x in v] == [True, True]
    assert v[0].relevance > v[1].relevance
    assert [x.success for x in v] == [True, False]


def test_refusal_detector_accuracy_counts():
    labels = [{"text": "I can't help with that.", "is_refusal": True},
              {"text": "Here you go.", "is_refusal": False},
              {"text": "No way.", "is_refusal": True}]
    acc = refusal_detector_accuracy(labels)
    assert acc["n"] == 3 and acc["precision"] == 1.0 and acc["recall"] == 0.5


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
