"""A toy `DecoderModel` for the decoding tests: the next token depends only on the last one (a bigram table), so
every beam's score and every lookahead p(tag) can be worked out by hand. It records how many rows each forward
ran and how many cache rows the search held, so tests can check what a step costs.
"""

import math

import torch

# Vocabulary of the toy.
PAD, EOS, TAG, S, A, B, X, Y = range(8)


class BigramCache:
    def __init__(self, rows: int, owner: "BigramToy"):
        self.last = torch.zeros(rows, dtype=torch.long)
        self.pending: torch.Tensor | None = None  # (rows, N) tokens of the last decode_candidates
        self.owner = owner
        owner.cache_rows.append(rows)

    def reorder(self, index, candidate=None):
        self.last = self.last[index] if candidate is None else self.pending[index, candidate]
        self.pending = None
        self.owner.cache_rows.append(len(index))


class BigramToy:
    """DecoderModel whose p(next | prefix) = table[last token].

    decode_rows: rows of every `decode` call; candidate_rows: (rows, candidates) of every `decode_candidates`
    call; cache_rows: the row count of the cache after creation and after every reorder.
    """

    max_seq_len = 1000
    device = torch.device("cpu")

    def __init__(self, table: dict[int, dict[int, float]]):
        self.logp = torch.full((8, 8), -math.inf)
        for prev, row in table.items():
            for nxt, p in row.items():
                self.logp[prev, nxt] = math.log(p)
        self.decode_rows: list[int] = []
        self.candidate_rows: list[tuple[int, int]] = []
        self.cache_rows: list[int] = []

    def new_cache(self, rows, max_len, candidates=1):
        return BigramCache(rows, self)

    def prefill(self, tokens, attention_mask, cache):
        cache.last = tokens[:, -1].clone()  # left padding: the last column is every prompt's last token
        return self.logp[cache.last]

    def decode(self, tokens, cache):
        self.decode_rows.append(len(tokens))
        cache.last = tokens.clone()
        return self.logp[cache.last]

    def decode_candidates(self, tokens, cache):
        self.candidate_rows.append(tuple(tokens.shape))
        cache.pending = tokens.clone()
        return self.logp[tokens]
