"""Decoding: seeded top-k sampling, plain beam search and SafeBeam (papers §6), batched, KV-cached.

The selection rules are pure functions over tensors (`sample_next_token`, `safebeam_select`); the
loops (`generate_topk`, and `_beam_batch` behind `beam_search` / `safe_beam_search`) only move tokens,
caches and bookkeeping around them. Any model implementing `DecoderModel` works, so tests drive the
loops with a hand-built toy. `decode` runs a decoder by name from `DECODERS` (the eval entry point).

SafeBeam (Safety Pretraining §4.1, Alg. 1/2), per prompt and step:
    candidates  = top-N next tokens of each live beam; cumulative log-prob = beam + log p(token)
    p_tag(y')   = p(tag | y') by one-token lookahead: run the candidate through the model
    drop the `drop_fraction` of the candidates with the highest p_tag
    keep the top `beam_size` of the rest by cumulative log-prob
and the answer is the finished hypothesis with the highest cumulative log-prob (Alg. 1's last line).
The lookahead forward that gives p_tag(y') is the forward that appends y' to the cache, and its
logits are the next step's distribution for y'. So a step costs exactly one batched decode over
prompts × beams × candidates rows: the cache is expanded to one row per candidate before it and
gathered back to the survivors (already expanded for the next step) after it.

Choices the paper leaves open (papers §6.2 marks them UNCONFIRMED): stop tokens and the tag are
candidates like any other token (their p_tag is the lookahead after them, as in Alg. 1); a kept stop
token ends its hypothesis; the drop count is floor(drop_fraction · valid candidates). Length
normalisation of the final pick is available (`length_penalty`) but off by default, as in the paper.

`beam_search` is the control of the same width: the same loop with nothing dropped and the tag an
ordinary token, so a SafeBeam-vs-beam comparison isolates the tag filter from beam search itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class DecoderCache(Protocol):
    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index] (index: LongTensor (R',), may repeat rows)."""
        ...


class DecoderModel(Protocol):
    """What the decoding loops need from a model (`safepretrain.train.model.Transformer` implements it)."""

    @property
    def max_seq_len(self) -> int:
        """Longest prompt + generation the model accepts (prompts are cut from the left to fit)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where prompts, caches and the sampling generator live."""
        ...

    def new_cache(self, rows: int, max_len: int) -> DecoderCache:
        """An empty cache for `rows` sequences of at most `max_len` tokens (prompt padding included)."""
        ...

    def prefill(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """tokens (B, T) left-padded, attention_mask (B, T) bool (False = padding) → logits (B, V) for
        the token after each prompt. Positions are cumsum(mask) − 1, so padding shifts nothing."""
        ...

    def decode(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Append one token per row, tokens (B,) → logits (B, V) for the following token."""
        ...


@dataclass
class Generation:
    tokens: list[int]  # generated tokens only; a stop token is not included (the tag is, if emitted)
    logprob: float  # sum of log p(token) under the model (temperature 1), the stop token's included
    stopped: str  # "stop" (a stop id), "length" (max_new_tokens) or "tag" (SafeBeam short-circuit)
    short_circuited: bool  # SafeBeam kept the tag as a candidate and ended the response there
    tag_emitted: bool  # the tag appears among `tokens`


# --------------------------------------------------------------------------- shared plumbing
def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts → tokens (B, T), mask (B, T) with padding on the left, so last tokens line up."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = True
    return tokens.to(device), mask.to(device)


def _fit_prompts(model: DecoderModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Keep each prompt's last `max_seq_len - max_new_tokens` tokens (the end holds the chat turn)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    room = model.max_seq_len - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                         f"max_seq_len={model.max_seq_len}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    return [list(p[-room:]) for p in prompts]


# --------------------------------------------------------------------------- top-k sampling
def sample_next_token(logits: torch.Tensor, generator: torch.Generator, top_k: int,
                      temperature: float) -> torch.Tensor:
    """logits (B, V) → sampled token ids (B,) from softmax(top-k logits / temperature).

    top_k <= 0 samples from the whole vocabulary; top_k == 1 or temperature <= 0 is argmax.
    """
    if top_k == 1 or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # (B, k)
    else:
        values, ids = logits, None
    probs = torch.softmax(values / temperature, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,) index into values
    return choice if ids is None else ids.gather(1, choice[:, None]).squeeze(1)


@torch.inference_mode()
def generate_topk(model: DecoderModel, prompts: list[list[int]], *, max_new_tokens: int, top_k: int,
                  temperature: float, stop_ids: set[int], pad_id: int, seed: int, batch_size: int = 32,
                  tag_id: int | None = None) -> list[Generation]:
    """Sample up to `max_new_tokens` per prompt with top-k sampling; a row ends at its first stop id.

    Reproducible for a fixed call (one generator seeded with `seed` serves the batches in order);
    a different `batch_size` changes which random numbers each prompt draws. `tag_id` only fills
    `Generation.tag_emitted`.
    """
    prompts = _fit_prompts(model, prompts, max_new_tokens)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=model.device)
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        tokens, mask = _left_pad(batch, pad_id, model.device)
        cache = model.new_cache(len(batch), tokens.shape[1] + max_new_tokens)
        logits = model.prefill(tokens, mask, cache)  # (B, V)
        B = len(batch)
        generated = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=model.device)
        n_tokens = torch.zeros(B, dtype=torch.long, device=model.device)  # kept tokens per row
        logprob = torch.zeros(B, dtype=torch.float32, device=model.device)
        done = torch.zeros(B, dtype=torch.bool, device=model.device)
        hit_stop = torch.zeros(B, dtype=torch.bool, device=model.device)
        for t in range(max_new_tokens):
            nxt = sample_next_token(logits, generator, top_k, temperature)  # (B,)
            token_lp = logits.float().log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
            is_stop = torch.isin(nxt, stop) & ~done
            logprob += torch.where(done, 0.0, token_lp)
            generated[:, t] = nxt
            n_tokens += (~done & ~is_stop).long()
            hit_stop |= is_stop
            done |= is_stop
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            # finished rows keep decoding (their tokens are ignored): cheaper than shrinking the cache
            logits = model.decode(nxt, cache)
        for toks, n, lp, s in zip(generated.tolist(), n_tokens.tolist(), logprob.tolist(), hit_stop.tolist()):
            toks = toks[:n]
            out.append(Generation(toks, lp, "stop" if s else "length", False, tag_id is not None and tag_id in toks))
    return out


# --------------------------------------------------------------------------- SafeBeam
def safebeam_select(cand_logprob: torch.Tensor, cand_ptag: torch.Tensor, valid: torch.Tensor, beam_size: int,
                    drop_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One SafeBeam selection for P prompts with C candidates each.

    cand_logprob (P, C) cumulative log-probs, cand_ptag (P, C) lookahead p(tag), valid (P, C) bool.
    Returns (index (P, beam_size) into C, kept (P, beam_size) bool); entries with kept False are
    filler (fewer than beam_size candidates survived) and point at candidate 0.

    Of a prompt's n valid candidates, floor(drop_fraction · n) with the highest p_tag are dropped:
    flooring never drops the last candidate (drop_fraction < 1), so a live search always goes on.
    Ties in p_tag drop the less likely candidate first; ties in log-prob keep the lower index.
    drop_fraction = 0 is plain beam search.
    """
    P, C = cand_logprob.shape
    lp = cand_logprob.float()
    ptag = cand_ptag.float().masked_fill(~valid, -math.inf)  # invalid ones rank after every valid one
    # drop order: p_tag descending, then log-prob ascending (two stable sorts = lexicographic order)
    by_lp = torch.argsort(lp.masked_fill(~valid, math.inf), dim=1, stable=True)
    by_tag = torch.argsort(ptag.gather(1, by_lp), dim=1, descending=True, stable=True)
    order = by_lp.gather(1, by_tag)  # (P, C) candidate ids, first to drop first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(C, device=order.device).expand(P, C))
    # (the 1e-6 keeps 0.3 · 10 = 2.9999… from flooring to 2)
    n_drop = torch.floor(drop_fraction * valid.sum(1, keepdim=True).float() + 1e-6).long()  # (P, 1)
    survive = valid & (rank >= n_drop)
    score = lp.masked_fill(~survive, -math.inf)
    k = min(beam_size, C)
    index = torch.argsort(score, dim=1, descending=True, stable=True)[:, :k]  # (P, k)
    kept = survive.gather(1, index) & torch.isfinite(score.gather(1, index))
    index = index.masked_fill(~kept, 0)
    if k < beam_size:  # fewer candidates than beams at all
        pad = beam_size - k
        index = torch.cat([index, index.new_zeros(P, pad)], dim=1)
        kept = torch.cat([kept, kept.new_zeros(P, pad)], dim=1)
    return index, kept


@torch.inference_mode()
def safe_beam_search(model: DecoderModel, prompts: list[list[int]], *, tag_id: int, beam_size: int = 4,
                     candidates_per_beam: int = 4, drop_fraction: float = 0.5, max_new_tokens: int,
                     stop_ids: set[int], pad_id: int, short_circuit: bool = True, length_penalty: float = 0.0,
                     batch_size: int = 16) -> list[Generation]:
    """SafeBeam for each prompt (module docstring); `batch_size` prompts are searched together.

    A kept candidate that is a stop id finishes its hypothesis (stopped="stop"); with `short_circuit`
    a kept tag finishes it as "tag" (short-circuited, the tag included in its tokens); live beams
    left at `max_new_tokens` finish as "length". Finished hypotheses leave the beam and are pooled;
    the search ends when no beam is live. The answer is the pooled hypothesis with the highest
    logprob / max(1, len(tokens)) ** length_penalty: 0 (default) is the paper's raw cumulative
    log-prob, 1 the per-token average. Within a step every candidate has the same length, so the
    penalty never changes the per-step selection, only the comparison of finished hypotheses.
    """
    if tag_id is None:
        raise ValueError("SafeBeam needs a tokenizer with the tag token (tag_id is None)")
    return _search(model, prompts, tag_id, beam_size, candidates_per_beam, drop_fraction, max_new_tokens,
                   stop_ids, pad_id, short_circuit, length_penalty, batch_size)


@torch.inference_mode()
def beam_search(model: DecoderModel, prompts: list[list[int]], *, beam_size: int, candidates_per_beam: int,
                max_new_tokens: int, stop_ids: set[int], pad_id: int, tag_id: int | None = None,
                length_penalty: float = 0.0, batch_size: int = 16) -> list[Generation]:
    """Plain beam search: SafeBeam's loop with drop_fraction=0 and no short-circuit (same width, same
    stop handling, same final pick), the control that SafeBeam's tag filter is measured against.

    The tag is an ordinary token here; `tag_id` only fills `Generation.tag_emitted`.
    """
    return _search(model, prompts, tag_id, beam_size, candidates_per_beam, 0.0, max_new_tokens, stop_ids,
                   pad_id, False, length_penalty, batch_size)


def _search(model, prompts, tag_id, beam_size, candidates_per_beam, drop_fraction, max_new_tokens, stop_ids,
            pad_id, short_circuit, length_penalty, batch_size) -> list[Generation]:
    prompts = _fit_prompts(model, prompts, max_new_tokens)
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        out += _beam_batch(model, prompts[start:start + batch_size], tag_id, beam_size, candidates_per_beam,
                           drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit, length_penalty)
    return out


def _beam_batch(model, prompts, tag_id, K, C, drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit,
                length_penalty) -> list[Generation]:
    """One batch of prompts; tag_id None (plain beam search) requires drop_fraction 0, no short-circuit."""
    device = model.device
    tokens, mask = _left_pad(prompts, pad_id, device)
    cache = model.new_cache(len(prompts), tokens.shape[1] + max_new_tokens)
    logits = model.prefill(tokens, mask, cache)  # (P, V)
    V = logits.shape[-1]
    C = min(C, V)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

    # Search state for the A prompts still searching (`owner` maps them back to the batch). Every
    # prompt has K beam slots; the paper starts from the prompt alone, so slots 1.. start dead.
    owner = torch.arange(len(prompts), device=device)  # (A,)
    A = len(prompts)
    next_logp = logits.float().log_softmax(-1)[:, None].expand(A, K, V)  # (A, K, V)
    beam_logp = torch.full((A, K), -math.inf, device=device)
    beam_logp[:, 0] = 0.0
    seqs = torch.empty(A, K, 0, dtype=torch.long, device=device)  # (A, K, t) generated so far
    cache.reorder(torch.arange(A, device=device).repeat_interleave(K * C))  # one cache row per candidate
    pool: list[list[Generation]] = [[] for _ in prompts]

    for step in range(max_new_tokens):
        top_lp, top_tok = next_logp.topk(C, dim=-1)  # (A, K, C)
        cand_lp = (beam_logp[..., None] + top_lp).view(A, K * C)  # cumulative log-prob
        cand_tok = top_tok.reshape(A, K * C)
        valid = torch.isfinite(cand_lp)  # dead slots (and zero-probability tokens) are not candidates
        # one-token lookahead: append every candidate to its beam's cache row → p(tag | y') and the
        # next-step distribution of y' in a single forward
        la_logp = model.decode(cand_tok.reshape(-1), cache).float().log_softmax(-1).view(A, K * C, V)
        # without a tag nothing is dropped (drop_fraction 0), so p_tag is only a placeholder
        ptag = la_logp[..., tag_id].exp() if tag_id is not None else torch.zeros_like(cand_lp)  # (A, K*C)
        index, kept = safebeam_select(cand_lp, ptag, valid, K, drop_fraction)  # (A, K)

        tok = cand_tok.gather(1, index)  # (A, K)
        new_lp = cand_lp.gather(1, index)
        parent = index // C  # beam slot each survivor extends
        seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, seqs.shape[2])), tok[..., None]], dim=2)
        is_stop = torch.isin(tok, stop)
        is_tag = (tok == tag_id) & ~is_stop & short_circuit if tag_id is not None else torch.zeros_like(is_stop)
        finish = kept & (is_stop | is_tag | (step == max_new_tokens - 1))
        live = kept & ~finish

        if bool(finish.any()):  # at most A·K per step: plain Python, one device→host copy per field
            for a, toks, lp, by_stop, by_tag in zip(owner[finish.nonzero()[:, 0]].tolist(), seqs[finish].tolist(),
                                                    new_lp[finish].tolist(), is_stop[finish].tolist(),
                                                    is_tag[finish].tolist()):
                toks = toks[:-1] if by_stop else toks  # the stop token is not part of the answer
                stopped = "stop" if by_stop else "tag" if by_tag else "length"
                pool[a].append(Generation(toks, lp, stopped, by_tag, tag_id is not None and tag_id in toks))
        searching = live.any(dim=1)  # (A,)
        if not bool(searching.any()):
            break
        # keep only prompts with a live beam; survivors' rows, each repeated C times for the next step
        rows = (torch.arange(A, device=device)[:, None] * (K * C) + index)[searching]  # (A', K)
        next_logp = la_logp.gather(1, index[..., None].expand(-1, -1, V))[searching]  # (A', K, V)
        beam_logp = new_lp.masked_fill(~live, -math.inf)[searching]
        seqs, owner = seqs[searching], owner[searching]
        A = int(searching.sum())
        cache.reorder(rows.reshape(-1).repeat_interleave(C))

    def score(g: Generation) -> float:
        return g.logprob / max(1, len(g.tokens)) ** length_penalty

    return [max(hyps, key=score) for hyps in pool]


# --------------------------------------------------------------------------- decoder registry
# Every decoder takes the same keyword arguments, so adding one is a function plus a DECODERS line.
# `settings` is any object with the decoder's attributes (e.g. the eval config's section for it).
# `batch_size` is the top-k batch in prompts; beam decoders search half as many prompts at a time
# because every prompt holds beam_size × candidates_per_beam cache rows (the eval code's choice).
def _beam_prompts_per_batch(batch_size: int) -> int:
    return max(1, batch_size // 2)


def _decode_topk(model, prompts, *, settings, max_new_tokens, stop_ids, pad_id, tag_id, seed, batch_size):
    return generate_topk(model, prompts, max_new_tokens=max_new_tokens, top_k=settings.k,
                         temperature=settings.temperature, stop_ids=stop_ids, pad_id=pad_id, seed=seed,
                         batch_size=batch_size, tag_id=tag_id)


def _decode_beam(model, prompts, *, settings, max_new_tokens, stop_ids, pad_id, tag_id, seed, batch_size):
    # deterministic: `seed` is unused
    return beam_search(model, prompts, beam_size=settings.beam_size,
                       candidates_per_beam=settings.candidates_per_beam, max_new_tokens=max_new_tokens,
                       stop_ids=stop_ids, pad_id=pad_id, tag_id=tag_id, length_penalty=settings.length_penalty,
                       batch_size=_beam_prompts_per_batch(batch_size))


def _decode_safebeam(model, prompts, *, settings, max_new_tokens, stop_ids, pad_id, tag_id, seed, batch_size):
    # deterministic: `seed` is unused
    return safe_beam_search(model, prompts, tag_id=tag_id, beam_size=settings.beam_size,
                            candidates_per_beam=settings.candidates_per_beam, drop_fraction=settings.drop_fraction,
                            max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                            short_circuit=settings.short_circuit, length_penalty=settings.length_penalty,
                            batch_size=_beam_prompts_per_batch(batch_size))


DECODERS: dict[str, Callable[..., list[Generation]]] = {
    "topk": _decode_topk,
    "beam": _decode_beam,
    "safebeam": _decode_safebeam,
}


def decode(name: str, model: DecoderModel, prompts: list[list[int]], *, settings: Any, max_new_tokens: int,
           stop_ids: set[int], pad_id: int, tag_id: int | None, seed: int, batch_size: int) -> list[Generation]:
    """Run decoder `name` from DECODERS on `prompts` (one Generation each, in order).

    Raises ValueError for an unknown name, and for "safebeam" when `tag_id` is None.
    """
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; known decoders: {', '.join(sorted(DECODERS))}")
    return DECODERS[name](model, prompts, settings=settings, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                          pad_id=pad_id, tag_id=tag_id, seed=seed, batch_size=batch_size)
