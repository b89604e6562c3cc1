"""Seeded top-k sampling, batched and KV-cached: the papers' default decoder."""

from __future__ import annotations

import torch

from safepretrain.config.evaluation import TopKConfig
from safepretrain.eval.decoders.base import DecoderModel, Generation, fit_prompts, left_pad


def sample_next_token(logits: torch.Tensor, generator: torch.Generator, top_k: int,
                      temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) → sampled token ids (B,) from softmax(top-k logits / temperature), cut to its nucleus.

    top_k <= 0 samples from the whole vocabulary; top_k == 1 or temperature <= 0 is argmax. top_p < 1 keeps,
    of those, the most likely tokens whose probabilities first reach top_p (at least one), renormalised, as
    HF transformers' TopPLogitsWarper does after its top-k.
    """
    if top_k == 1 or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # (B, k), sorted descending
    elif top_p < 1:
        values, ids = logits.sort(dim=-1, descending=True)
    else:
        values, ids = logits, None
    probs = torch.softmax(values / temperature, dim=-1)
    if top_p < 1:  # probs are sorted: drop a token once the mass before it already reaches top_p
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,) index into values
    return choice if ids is None else ids.gather(1, choice[:, None]).squeeze(1)


def penalised(logits: torch.Tensor, counts: torch.Tensor, frequency_penalty: float,
              presence_penalty: float) -> torch.Tensor:
    """OpenAI's repetition penalties on logits (B, V): minus counts × frequency_penalty and minus presence_penalty
    where counts (B, V), each row's tokens generated so far, is above 0."""
    return logits - counts * frequency_penalty - (counts > 0).to(logits.dtype) * presence_penalty


@torch.inference_mode()
def generate_topk(model: DecoderModel, prompts: list[list[int]], *, max_new_tokens: int, top_k: int,
                  temperature: float, stop_ids: set[int], pad_id: int, seed: int, batch_size: int = 32,
                  tag_id: int | None = None, top_p: float = 1.0, frequency_penalty: float = 0.0,
                  presence_penalty: float = 0.0) -> list[Generation]:
    """Sample up to `max_new_tokens` per prompt with top-k sampling; a row ends at its first stop id.

    Reproducible for a fixed call (one generator seeded with `seed` serves the batches in order);
    a different `batch_size` changes which random numbers each prompt draws. `tag_id` only fills
    `Generation.tag_emitted`.
    """
    prompts = fit_prompts(model, prompts, max_new_tokens)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=model.device)
    penalties = bool(frequency_penalty or presence_penalty)
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        tokens, mask = left_pad(batch, pad_id, model.device)
        cache = model.new_cache(len(batch), tokens.shape[1] + max_new_tokens)
        logits = model.prefill(tokens, mask, cache)  # (B, V)
        B = len(batch)
        generated = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=model.device)
        n_tokens = torch.zeros(B, dtype=torch.long, device=model.device)  # kept tokens per row
        logprob = torch.zeros(B, dtype=torch.float32, device=model.device)
        done = torch.zeros(B, dtype=torch.bool, device=model.device)
        hit_stop = torch.zeros(B, dtype=torch.bool, device=model.device)
        counts = torch.zeros(logits.shape, dtype=torch.float32, device=model.device) if penalties else None
        for t in range(max_new_tokens):
            if penalties:  # the choice sees the penalties; the reported log-prob stays the model's own
                nxt = sample_next_token(penalised(logits.float(), counts, frequency_penalty, presence_penalty),
                                        generator, top_k, temperature, top_p)
                counts.scatter_add_(1, nxt[:, None], torch.ones(B, 1, device=model.device))
            else:
                nxt = sample_next_token(logits, generator, top_k, temperature, top_p)  # (B,)
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


def decode(model, prompts, *, settings: TopKConfig, max_new_tokens, stop_ids, pad_id, tag_id, seed, batch_size):
    """The registry's entry point (decoders/__init__.py)."""
    return generate_topk(model, prompts, max_new_tokens=max_new_tokens, top_k=settings.k,
                         temperature=settings.temperature, stop_ids=stop_ids, pad_id=pad_id, seed=seed,
                         batch_size=batch_size, tag_id=tag_id, top_p=settings.top_p,
                         frequency_penalty=settings.frequency_penalty, presence_penalty=settings.presence_penalty)
