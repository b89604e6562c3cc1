"""Near-duplicate detection used to keep the world's train and eval sets disjoint."""

from collections import Counter

from safepretrain.world import dedup
from safepretrain.world.dedup import dedupe, near_duplicate_pairs, near_duplicates, normalize, shingles


def test_normalize_folds_case_unicode_punctuation_and_space():
    assert normalize("  Hello,   WORLD!\n") == "hello world"
    assert normalize("ｆｕｌｌ\u00a0width") == "full width"  # NFKC folds full-width letters and no-break space
    assert normalize("snake_case--and...dots") == "snake case and dots"


def test_shingles_of_short_and_long_texts():
    assert shingles("one two three", n=5) == {("one", "two", "three")}
    assert shingles("", n=5) == set()
    assert shingles("a b c d e f", n=5) == {("a", "b", "c", "d", "e"), ("b", "c", "d", "e", "f")}


def test_exact_duplicate_is_found():
    ref = ["The committee met on Tuesday to review the annual budget for the library."]
    assert near_duplicates(["The committee met on Tuesday to review the annual budget for the library."], ref) == {0}


def test_case_and_punctuation_changes_are_still_duplicates():
    ref = ["Write a short poem about the sea, the wind and the lighthouse keeper."]
    cand = ["write a SHORT poem about the sea -- the wind, and the lighthouse keeper!!"]
    assert near_duplicates(cand, ref) == {0}


def test_short_texts_match_only_when_equal_after_normalising():
    assert near_duplicates(["Hello there!"], ["hello, there"]) == {0}
    assert near_duplicates(["Hello there!"], ["hello there general"]) == set()


def test_candidate_quoted_inside_a_longer_reference_is_found():
    cand = ["Explain how the water cycle moves rain from the ocean to the mountains"]
    ref = ["Some intro text here. " + cand[0] + ". And then a long unrelated continuation follows for a while."]
    assert near_duplicates(cand, ref) == {0}


def test_unrelated_texts_are_not_duplicates():
    cand = ["Describe the rules of chess for a complete beginner who has never played."]
    ref = ["The recipe needs two cups of flour, one egg and a pinch of salt.",
           "Rainbows form when sunlight is refracted inside falling raindrops."]
    assert near_duplicates(cand, ref) == set()
    assert near_duplicates([""], ref) == set()


def test_threshold_controls_partial_overlap():
    base = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    half = "alpha beta gamma delta epsilon zeta omega psi chi phi"  # 2 of 6 shingles shared
    assert near_duplicates([half], [base], threshold=0.3) == {0}
    assert near_duplicates([half], [base], threshold=0.5) == set()


def test_pairs_list_every_matching_reference():
    cand = ["list the planets of the solar system in order"]
    ref = ["x", "List the planets of the Solar System, in order.",
           "please list the planets of the solar system in order"]
    assert near_duplicate_pairs(cand, ref) == {0: {1, 2}}


def test_dedupe_keeps_first_occurrences():
    texts = ["The cat sat on the warm mat all day long.", "the cat sat on the warm mat, all day long!",
             "A completely different sentence about ships and harbours.", "",
             "THE CAT SAT ON THE WARM MAT ALL DAY LONG"]
    assert dedupe(texts) == [0, 2]


class _CountedSet(set):
    """A shingle set that counts the passes over it and the set operations on it, failing past a budget."""

    ops, budget = 0, 0

    def _count(self):
        _CountedSet.ops += 1
        assert _CountedSet.ops <= _CountedSet.budget, "more than one pass per text: work is not linear"

    def __iter__(self):
        self._count()
        return super().__iter__()

    def __contains__(self, item):
        self._count()
        return super().__contains__(item)

    def __and__(self, other):
        self._count()
        return super().__and__(other)

    __rand__ = __and__

    def intersection(self, *others):
        self._count()
        return super().intersection(*others)


def test_near_duplicates_scales_to_thousands_by_tens_of_thousands(monkeypatch):
    cands = [f"candidate prompt number {i} asks about topic {i * 7} in detail" for i in range(5000)]
    ref = [f"reference document {j} talks about subject {j * 3} and many other words here" for j in range(50000)]
    # linear work: the candidates are indexed once and the reference streams through the index in one pass, each
    # text normalised and its shingles walked a bounded number of times (not once per candidate x reference pair)
    normalized = Counter()
    real_normalize, real_shingles = dedup.normalize, dedup._shingles_of_words

    def counting_normalize(text):
        normalized[text] += 1
        return real_normalize(text)

    monkeypatch.setattr(dedup, "normalize", counting_normalize)
    monkeypatch.setattr(dedup, "_shingles_of_words", lambda words, n: _CountedSet(real_shingles(words, n)))
    monkeypatch.setattr(_CountedSet, "ops", 0)
    monkeypatch.setattr(_CountedSet, "budget", len(cands) + len(ref))
    read = []

    def stream():  # a one-shot iterable: the reference need not fit in memory
        for j, text in enumerate(ref):
            read.append(j)
            yield text

    assert near_duplicates(cands, stream()) == set()
    assert read == list(range(len(ref)))  # every reference text read once, in order
    assert all(normalized[t] == 1 for t in ref) and all(normalized[t] <= 2 for t in cands)
    assert sum(normalized.values()) <= 2 * len(cands) + len(ref)
    assert _CountedSet.ops == len(cands) + len(ref)  # one walk over each text's shingles
