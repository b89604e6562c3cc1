"""serve's plan of a request: the served model (`ServedModel`), and a request checked against it and against the
server's limits (`plan`: model name, decoder, max_tokens within the cap and the context, n, log-probs, the decoder's
own settings, the estimated memory) into a `Plan` the worker thread runs with nothing else. Every refusal is a
`ServeError` with OpenAI's error shape. `serve.py` loads the model, runs plans and answers."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.decoders import DECODERS, decoder_settings
from safepretrain.serve_requests import MAX_PROMPTS, ChatBody, CompletionBody, ServeError, _Body
from safepretrain.train.memory import estimate_decode_memory

MIB = 2**20
# a decoder setting sent to a decoder that has no such field is refused, unless it asks for nothing
NEUTRAL = {"top_p": 1.0, "temperature": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
REQUEST_NAME = {"k": "top_k"}  # settings field → its name in a request body


def owners(setting: str) -> list[str]:
    """The decoders whose settings model has `setting`."""
    return sorted(name for name in DECODERS
                  if DECODERS[name].settings is not None and setting in DECODERS[name].settings.model_fields)


@dataclass
class ServedModel:
    name: str  # the checkpoint's path inside its run: unique per arm, seed, stage and step
    model: Any  # an eval.decoders.DecoderModel (safepretrain.train.model.Transformer)
    tok: TextTokenizer
    tag_id: int | None  # None: the tokenizer has no tag, so SafeBeam cannot run
    eval_cfg: Any  # the run's EvalConfig: default decoder settings and max_tokens


@dataclass
class Plan:
    """A checked request: what to run, in a form the worker thread needs nothing else for."""
    decoder: str
    prompts: list[list[int]]  # one per choice: each request prompt n times, in order
    max_tokens: int  # 0: no generation (completions with echo: the prompt's log-probs only)
    seed: int
    settings: BaseModel
    stops: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none asked; else the number of top alternatives per token
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop at the next forward pass


def request_memory(served: ServedModel, settings: BaseModel, prompts: list[list[int]], max_tokens: int) -> int:
    """`estimate_decode_memory` of a request: the served model's shape and dtype, its prompts, the decoder's rows."""
    m = served.model.cfg
    # a beam decoder's settings have a width: beam_size x candidates_per_beam rows per prompt, the widest layout
    # the beam loops have used (a bound for a narrower one); sampling holds one row per prompt
    rows = getattr(settings, "beam_size", 1) * getattr(settings, "candidates_per_beam", 1)
    return estimate_decode_memory(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
                                  n_kv_heads=m.n_kv_heads, ffn_hidden=m.ffn_hidden, vocab=served.tok.vocab_size,
                                  prompts=len(prompts), prompt_len=max(len(p) for p in prompts),
                                  max_new_tokens=max_tokens, rows_per_prompt=rows,
                                  dtype_bytes=next(served.model.parameters()).element_size())


def plan(served: ServedModel, body: _Body, prompts: list[list[int]], cap: int,
         memory_limit: int | None = None) -> Plan:
    """Check a request against the model and the server's limits; `memory_limit` in bytes (None: no limit)."""
    if body.model is not None and body.model != served.name:
        raise ServeError(404, f"model {body.model[:200]!r} is not served here; this server serves {served.name!r}",
                         "not_found_error", "model", "model_not_found")
    if body.decoder not in DECODERS:
        raise ServeError(400, f"unknown decoder {body.decoder[:40]!r}; choose one of {', '.join(sorted(DECODERS))}",
                         param="decoder")
    if DECODERS[body.decoder].options.get("needs_tag") and served.tag_id is None:
        raise ServeError(400, "SafeBeam needs the harmfulness tag token, and this checkpoint's tokenizer has none; "
                              "use decoder topk or beam", param="decoder")
    e = served.eval_cfg
    context = served.model.max_seq_len
    longest = max(len(p) for p in prompts)
    where = "messages" if isinstance(body, ChatBody) else "prompt"
    echo = isinstance(body, CompletionBody) and body.echo
    asked = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if asked is not None and asked > cap:
        raise ServeError(400, f"max_tokens={asked} is above this server's cap of {cap} (--max-tokens-cap); ask for "
                              "fewer tokens", param="max_tokens")
    if asked == 0 and not echo:
        raise ServeError(400, "max_tokens=0 asks for no completion, which only makes sense with echo: true on "
                              "/v1/completions (the prompt's log-probs); ask for at least 1 token", param="max_tokens")
    if len(prompts) * body.n > MAX_PROMPTS:
        raise ServeError(400, f"{len(prompts)} prompt(s) × n={body.n} choices is {len(prompts) * body.n} answers; "
                              f"at most {MAX_PROMPTS} per request", param="n")
    logprobs = body.logprobs if isinstance(body, CompletionBody) else \
        (body.top_logprobs or 0) if body.logprobs else None
    if body.stream and (body.n > 1 or echo or logprobs is not None):
        raise ServeError(400, "stream: true sends one choice's text only: leave out n, echo and logprobs, or ask "
                              "without streaming", param="stream")
    # default: the eval's length within the cap, shortened to what the context leaves (as OpenAI's API does)
    max_tokens = asked if asked is not None else max(1, min(e.max_new_tokens, cap, context - longest))
    if longest + max_tokens > context:  # never cut a prompt: its start holds the <|user|> marker
        raise ServeError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                              f"{longest + max_tokens} tokens ({longest} in the {where}, {max_tokens} in the "
                              f"completion). Please reduce the length of the {where} or max_tokens.",
                         param=where, code="context_length_exceeded")
    # the decoder's own settings model (the run's eval section), with the request's values for its fields; a
    # field another decoder owns is refused, unless it asks for nothing (top_p 1, temperature 1 for a beam search,
    # which ranks by the model's own log-probs): clients send those on every request
    fields_asked = {"k": body.top_k, "temperature": body.temperature, "top_p": body.top_p,
                    "beam_size": body.beam_size, "candidates_per_beam": body.candidates_per_beam,
                    "drop_fraction": body.drop_fraction, "short_circuit": body.short_circuit,
                    "length_penalty": body.length_penalty, "frequency_penalty": body.frequency_penalty,
                    "presence_penalty": body.presence_penalty}
    base = decoder_settings(body.decoder, e)
    fields = type(base).model_fields
    for name, value in fields_asked.items():
        if value is not None and name not in fields and NEUTRAL.get(name) != value:
            param = REQUEST_NAME.get(name, name)
            raise ServeError(400, f"{param} does not apply to decoder {body.decoder}; leave it out, or choose a "
                                  f"decoder that takes it ({', '.join(owners(name))})", param=param)
    settings = base.model_copy(update={k: v for k, v in fields_asked.items() if v is not None and k in fields})
    prompts = [p for p in prompts for _ in range(body.n)]
    memory = request_memory(served, settings, prompts, max_tokens)
    if memory_limit is not None and memory > memory_limit:
        raise ServeError(400, f"this request needs an estimated {memory / MIB:,.0f} MiB (KV cache and activations "
                              f"of {len(prompts)} prompt(s) of up to {longest} tokens, {max_tokens} new tokens, "
                              f"decoder {body.decoder}); this server allows {memory_limit / MIB:,.0f} MiB per "
                              "request (--max-request-memory-mib): send fewer or shorter prompts, fewer max_tokens "
                              "or a narrower beam (beam_size × candidates_per_beam)", code="request_too_large")
    # no seed → a fresh one, so repeated requests sample differently (as OpenAI's API does); it is echoed back
    seed = body.seed if body.seed is not None else secrets.randbits(31)
    return Plan(body.decoder, prompts, max_tokens, seed, settings, body.stops, logprobs)
