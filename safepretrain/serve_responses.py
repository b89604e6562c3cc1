"""serve's answers: a generation cut at the request's stop strings, and token log-probs in the two shapes OpenAI's
API uses (the completions API's `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` lists, the chat API's
`content` list of `{token, logprob, bytes, top_logprobs}`). Pure functions of the tokenizer and the numbers;
`serve.py` computes the numbers (`eval.likelihood.sequence_logprobs`) and sends the bodies.

Tokens are byte-level BPE pieces, so one token may hold part of a UTF-8 character: `bytes` is always exact, and
`token` is those bytes decoded with replacement characters (as OpenAI does for such tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.likelihood import TokenLogprobs


@dataclass
class Answer:
    """One choice's completion after its stop strings: the text sent and the tokens that produced it."""
    text: str
    tokens: list[int]  # up to and including the token that completed a stop string (as vLLM counts them)
    stopped_by_string: bool


def cut_at_stop(tok: TextTokenizer, tokens: list[int], stops: list[str]) -> Answer:
    """The decoded `tokens` cut before the earliest occurrence of any of `stops` (OpenAI: the stop string is not
    returned). The decoders run to a stop id or max_tokens; the cut happens here, on the finished text."""
    text = tok.decode(tokens)
    found = [(text.find(s), -len(s)) for s in stops if s in text]
    if not found:
        return Answer(text, tokens, False)
    start, minus_len = min(found)
    end = start - minus_len  # where the matched stop string ends: the token reaching it is the last one counted
    used = next(i for i in range(1, len(tokens) + 1) if len(tok.decode(tokens[:i])) >= end)
    return Answer(text[:start], tokens[:used], True)


def token_text(tok: TextTokenizer, token_id: int) -> str:
    return tok.token_bytes(token_id).decode("utf-8", errors="replace")


def completion_logprobs(tok: TextTokenizer, ids: list[int], scores: TokenLogprobs, first: int, top: int,
                        offset_base: int = 0) -> dict:
    """The completions API's `logprobs` for `ids[first:]`, where `scores` scored all of `ids` (so position t's
    log-prob is `scores.logprobs[t - 1]`; the very first token of a sequence has none: null, as OpenAI's echo).
    `text_offset` counts characters of the decoded text from `offset_base`."""
    tokens, lps, tops, offsets = [], [], [], []
    for t in range(first, len(ids)):
        tokens.append(token_text(tok, ids[t]))
        offsets.append(offset_base + len(tok.decode(ids[first:t])))
        if t == 0:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(scores.logprobs[t - 1])
        tops.append({token_text(tok, i): lp for i, lp in zip(scores.top_ids[t - 1][:top], scores.top_logprobs[t - 1])}
                    if top else None)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops if top else None, "text_offset": offsets}


def chat_logprobs(tok: TextTokenizer, ids: list[int], scores: TokenLogprobs, first: int, top: int) -> dict:
    """The chat API's `logprobs` for the generated tokens `ids[first:]` (`scores` scored all of `ids`)."""
    def entry(token_id: int, lp: float) -> dict:
        raw = tok.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}
    content = [{**entry(ids[t], scores.logprobs[t - 1]),
                "top_logprobs": [entry(i, lp) for i, lp in zip(scores.top_ids[t - 1][:top],
                                                                scores.top_logprobs[t - 1][:top])]}
               for t in range(first, len(ids))]
    return {"content": content, "refusal": None}
