"""serve's answers: a generation cut at the request's stop strings, and token log-probs in the two shapes OpenAI's
API uses (the completions API's `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` lists, the chat API's
`content` list of `{token, logprob, bytes, top_logprobs}`), the per-token text pieces of a stream, and the choice
bodies. Pure functions of the tokenizer and the numbers; `serve.py` computes the numbers (the decoders and
`eval.likelihood.sequence_logprobs`) and sends the bodies.

Tokens are byte-level BPE pieces, so one token may hold part of a UTF-8 character: `bytes` is always exact, and
`token` is those bytes decoded with replacement characters (as OpenAI does for such tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.decoders import Generation
from safepretrain.eval.likelihood import TokenLogprobs

FINISH = {"stop": "stop", "length": "length", "tag": "content_filter"}  # Generation.stopped → OpenAI


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


@dataclass
class Choice:
    """One answer: the decoder's generation, its text after the stop strings, and (when asked) the log-probs of
    the prompt and the answer's tokens."""
    generation: Generation
    answer: Answer
    scores: TokenLogprobs | None

    @property
    def finish_reason(self) -> str:
        return "stop" if self.answer.stopped_by_string else FINISH[self.generation.stopped]


def text_deltas(tok: TextTokenizer, tokens: list[int]) -> Iterator[str]:
    """Per-token text pieces whose concatenation is exactly `tok.decode(tokens)`. A byte-level BPE token can
    end inside a UTF-8 character; such a piece waits for the tokens that complete it."""
    sent = ""
    for i in range(1, len(tokens) + 1):
        text = tok.decode(tokens[:i])
        if text.startswith(sent) and not text.endswith("\ufffd") and len(text) > len(sent):
            yield text[len(sent):]
            sent = text
    final = tok.decode(tokens)
    if final != sent:
        yield final[len(sent):] if final.startswith(sent) else final  # (unreachable for byte-level BPE)


def answer_deltas(tok: TextTokenizer, answer: Answer) -> Iterator[str]:
    """`text_deltas` of an answer's tokens, ending where its text ends (a stop string's cut)."""
    sent = 0
    for piece in text_deltas(tok, answer.tokens):
        piece = piece[:len(answer.text) - sent]
        if piece:
            yield piece
            sent += len(piece)


def completion_choice(tok: TextTokenizer, index: int, prompt: list[int], c: Choice, echo: bool, top: int | None,
                      extra: dict) -> dict:
    """One choice of /v1/completions: with `echo`, the prompt's text and log-probs come first; `top` None: no
    log-probs asked, else the alternatives per token."""
    prompt_text = tok.decode(prompt)
    logprobs = None
    if top is not None:
        logprobs = completion_logprobs(tok, prompt + c.answer.tokens, c.scores, 0 if echo else len(prompt), top,
                                       0 if echo else len(prompt_text))
    return {"index": index, "text": (prompt_text if echo else "") + c.answer.text, "logprobs": logprobs,
            "finish_reason": c.finish_reason, "safepretrain": extra}


def chat_choice(tok: TextTokenizer, index: int, prompt: list[int], c: Choice, top: int | None, extra: dict) -> dict:
    logprobs = None if top is None else chat_logprobs(tok, prompt + c.answer.tokens, c.scores, len(prompt), top)
    return {"index": index, "message": {"role": "assistant", "content": c.answer.text}, "logprobs": logprobs,
            "finish_reason": c.finish_reason, "safepretrain": extra}
