"""SafeBeam (papers §6) and plain beam search of the same width, batched and KV-cached.

SafeBeam (Safety Pretraining §4.1, Alg. 1/2), per prompt and step:
    candidates  = top-N next tokens of each live beam; cumulative log-prob = beam + log p(token)
    p_tag(y')   = p(tag | y') by one-token lookahead: run the candidate through the model
    drop the `drop_fraction` of the candidates with the highest p_tag
    keep the top `beam_size` of the rest by cumulative log-prob
and the answer is the finished hypothesis with the highest cumulative log-prob (Alg. 1's last line).
The lookahead forward that gives p_tag(y') is the forward that appends y' to the cache, and its
logits are the next step's distribution for y'. So a step costs one batched forward of prompts ×
beams × candidates tokens, but over one cache row per beam: a beam's C candidates are C query
positions that attend to the beam's prefix and to themselves only (`decode_candidates`, the tree
attention of speculative decoding's verification step), and only the survivors are appended
(`cache.reorder(rows, candidate)`).

Choices the paper leaves open (papers §6.2 marks them UNCONFIRMED): stop tokens and the tag are
candidates like any other token (their p_tag is the lookahead after them, as in Alg. 1); a kept stop
token ends its hypothesis; the drop count is floor(drop_fraction · valid candidates). Length
normalisation of the final pick is available (`length_penalty`) but off by default, as in the paper.

`beam_search` is the control of the same width: the same selection with nothing dropped and the tag an
ordinary token, so a SafeBeam-vs-beam comparison isolates the tag filter from beam search itself. It
needs no lookahead, so it is textbook beam search: K cache rows per prompt and one forward of the K
survivors per step. Its candidates are each beam's top min(C, K) tokens: the K best extensions of K
beams over the whole vocabulary are always among them (a token outside its beam's top K has K better
ones), so for C ≥ K it returns what the same loop over all K·C candidates would, at 1/C of the rows.
"""

from __future__ import annotations

import math

import torch

from safepretrain.config.evaluation import SafeBeamConfig
from safepretrain.eval.decoders.base import DecoderModel, Generation, fit_prompts, left_pad


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
                   stop_ids, pad_id, short_circuit, length_penalty, batch_size, lookahead=True)


@torch.inference_mode()
def beam_search(model: DecoderModel, prompts: list[list[int]], *, beam_size: int, candidates_per_beam: int,
                max_new_tokens: int, stop_ids: set[int], pad_id: int, tag_id: int | None = None,
                length_penalty: float = 0.0, batch_size: int = 16) -> list[Generation]:
    """Plain beam search, the control that SafeBeam's tag filter is measured against: SafeBeam's selection
    with drop_fraction=0 and no short-circuit (same width, same stop handling, same final pick), run as
    textbook beam search without the lookahead (module docstring).

    The tag is an ordinary token here; `tag_id` only fills `Generation.tag_emitted`.
    """
    return _search(model, prompts, tag_id, beam_size, candidates_per_beam, 0.0, max_new_tokens, stop_ids,
                   pad_id, False, length_penalty, batch_size, lookahead=False)


def _search(model, prompts, tag_id, beam_size, candidates_per_beam, drop_fraction, max_new_tokens, stop_ids,
            pad_id, short_circuit, length_penalty, batch_size, lookahead) -> list[Generation]:
    prompts = fit_prompts(model, prompts, max_new_tokens)
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        out += _beam_batch(model, prompts[start:start + batch_size], tag_id, beam_size, candidates_per_beam,
                           drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit, length_penalty,
                           lookahead)
    return out


def _beam_batch(model, prompts, tag_id, K, C, drop_fraction, max_new_tokens, stop_ids, pad_id, short_circuit,
                length_penalty, lookahead) -> list[Generation]:
    """One batch of prompts, K cache rows per prompt (one per beam slot).

    lookahead (SafeBeam): each beam's top-C candidates go through the model before the selection, as C
    tree-attention queries over the beam's row (p_tag and their next-step distributions); the survivors
    are then appended. Without it (plain beam search: drop_fraction 0, no short-circuit, tag_id may be
    None) each beam offers its top min(C, K) tokens and the K survivors are decoded after the selection.
    """
    device = model.device
    tokens, mask = left_pad(prompts, pad_id, device)
    cache = model.new_cache(len(prompts), tokens.shape[1] + max_new_tokens, C if lookahead else 1)
    logits = model.prefill(tokens, mask, cache)  # (P, V)
    V = logits.shape[-1]
    C = min(C, V)
    N = C if lookahead else min(C, K)  # candidates per beam
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

    # Search state for the A prompts still searching (`owner` maps them back to the batch). Every
    # prompt has K beam slots; the paper starts from the prompt alone, so slots 1.. start dead.
    owner = torch.arange(len(prompts), device=device)  # (A,)
    A = len(prompts)
    next_logp = logits.float().log_softmax(-1)[:, None].expand(A, K, V)  # (A, K, V)
    beam_logp = torch.full((A, K), -math.inf, device=device)
    beam_logp[:, 0] = 0.0
    seqs = torch.empty(A, K, 0, dtype=torch.long, device=device)  # (A, K, t) generated so far
    cache.reorder(torch.arange(A, device=device).repeat_interleave(K))  # one cache row per beam slot
    pool: list[list[Generation]] = [[] for _ in prompts]

    for step in range(max_new_tokens):
        # top-C then its first N: the same candidates, in the same order, as the top-C loop had
        top_lp, top_tok = (t[..., :N] for t in next_logp.topk(C, dim=-1))  # (A, K, N)
        cand_lp = (beam_logp[..., None] + top_lp).view(A, K * N)  # cumulative log-prob
        cand_tok = top_tok.reshape(A, K * N)
        valid = torch.isfinite(cand_lp)  # dead slots (and zero-probability tokens) are not candidates
        if lookahead:
            # one-token lookahead: every candidate as a query over its beam's cache row → p(tag | y') and the
            # next-step distribution of y' in a single forward
            la_logp = model.decode_candidates(top_tok.reshape(A * K, N), cache).float().log_softmax(-1)
            la_logp = la_logp.view(A, K * N, V)  # (the fused log_softmax beats logsumexp for p_tag alone on CPU)
            ptag = la_logp[..., tag_id].exp()  # (A, K*N)
        else:  # nothing is dropped (drop_fraction 0), so p_tag is only a placeholder
            ptag = torch.zeros_like(cand_lp)
        index, kept = safebeam_select(cand_lp, ptag, valid, K, drop_fraction)  # (A, K)

        tok = cand_tok.gather(1, index)  # (A, K)
        new_lp = cand_lp.gather(1, index)
        parent = index // N  # beam slot each survivor extends
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
        # keep only prompts with a live beam (a view, not a copy, while all are): each survivor's row is its
        # parent beam's row
        keep = slice(None) if bool(searching.all()) else searching
        rows = (torch.arange(A, device=device)[:, None] * K + parent)[keep].reshape(-1)  # (A'·K,)
        beam_logp = new_lp.masked_fill(~live, -math.inf)[keep]
        seqs, owner, index = seqs[keep], owner[keep], index[keep]
        A = int(searching.sum())
        if lookahead:  # append the survivor, already run: its lookahead logits are the next distribution
            next_logp = la_logp[keep].gather(1, index[..., None].expand(-1, -1, V))  # (A', K, V)
            cache.reorder(rows, (index % N).reshape(-1))
        else:
            cache.reorder(rows)
            next_logp = model.decode(tok[keep].reshape(-1), cache).float().log_softmax(-1).view(A, K, V)

    def score(g: Generation) -> float:
        return g.logprob / max(1, len(g.tokens)) ** length_penalty

    return [max(hyps, key=score) for hyps in pool]


# The registry's entry points (decoders/__init__.py). `batch_size` is the top-k batch in prompts; beam decoders
# search half as many prompts at a time because every prompt runs beam_size × candidates_per_beam lookahead
# tokens per step (SafeBeam; the control keeps the same batches so both see the same prompts together).
# Both are deterministic: `seed` is unused.
def _prompts_per_batch(batch_size: int) -> int:
    return max(1, batch_size // 2)


def decode_beam(model, prompts, *, settings: SafeBeamConfig, max_new_tokens, stop_ids, pad_id, tag_id, seed,
                batch_size):
    return beam_search(model, prompts, beam_size=settings.beam_size,
                       candidates_per_beam=settings.candidates_per_beam, max_new_tokens=max_new_tokens,
                       stop_ids=stop_ids, pad_id=pad_id, tag_id=tag_id, length_penalty=settings.length_penalty,
                       batch_size=_prompts_per_batch(batch_size))


def decode_safebeam(model, prompts, *, settings: SafeBeamConfig, max_new_tokens, stop_ids, pad_id, tag_id, seed,
                    batch_size):
    return safe_beam_search(model, prompts, tag_id=tag_id, beam_size=settings.beam_size,
                            candidates_per_beam=settings.candidates_per_beam, drop_fraction=settings.drop_fraction,
                            max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                            short_circuit=settings.short_circuit, length_penalty=settings.length_penalty,
                            batch_size=_prompts_per_batch(batch_size))
