"""`safepretrain serve CHECKPOINT`: an OpenAI-compatible HTTP server over one checkpoint, so red-teaming tools
(garak, PyRIT, inspect_ai) can attack our models with our own decoders, SafeBeam included.

    GET  /v1/models              the one model, named after the checkpoint folder
    POST /v1/completions         raw prompt text (base models: the papers' "Question: …\\nAnswer:" layout is up to you)
    POST /v1/chat/completions    messages rendered in the training chat format (data/chat.py)

Extra body fields pick the decoder per request: `decoder` (a name from eval/decoders' registry: topk, beam,
safebeam, ...) and the fields of that decoder's settings model (`top_k` for `k`, `temperature`, `seed`;
`beam_size`, `candidates_per_beam`, `drop_fraction`, `short_circuit`, `length_penalty`); unset ones take the run's
eval settings. A SafeBeam answer that
short-circuited on the harmfulness tag has finish_reason "content_filter" and `safepretrain.short_circuit`
true on its choice.

Limits, because a server is an attack surface of its own: it binds loopback by default; bodies above
`max_request_bytes` get 413, `max_tokens` above `max_tokens_cap` 400, and at most `max_concurrency`
generations run at once while up to QUEUE_PER_SLOT × that many wait in line (beyond that: 429).
Generation runs in worker threads under `torch.inference_mode`, so the event loop keeps answering.

Streaming (`stream: true`) sends OpenAI chunks ending with `data: [DONE]`. The decoders are batch functions
(beam search cannot emit a token before the search ends), so chunks are sent once the answer is complete,
one per token; their text concatenates to exactly the non-streamed text.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import uvicorn
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from safepretrain.config import ConfigError
from safepretrain.data.chat import chat_prompt_ids
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.decoders import DECODERS, Generation, decode, decoder_settings
from safepretrain.rundir import RunDir, RunDirError

QUEUE_PER_SLOT = 4  # waiting requests per concurrency slot before 429: bounded memory, smooth bursts
MAX_PROMPTS = 16  # prompts per /v1/completions request
FINISH = {"stop": "stop", "length": "length", "tag": "content_filter"}  # Generation.stopped → OpenAI


class ServeError(Exception):
    """A request (or the checkpoint) cannot be served; becomes `{"error": {"message", "type"}}` with `status`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class ServedModel:
    name: str
    model: Any  # an eval.decoders.DecoderModel (safepretrain.train.model.Transformer)
    tok: TextTokenizer
    tag_id: int | None  # None: the tokenizer has no tag, so SafeBeam cannot run
    eval_cfg: Any  # the run's EvalConfig: default decoder settings and max_tokens


def load_served(checkpoint: Path, device: str = "cpu") -> ServedModel:
    """Model, tokenizer and eval settings of a checkpoint folder, located as `export` does (via its run)."""
    if not (checkpoint / "model.safetensors").is_file():
        raise ServeError(400, f"{checkpoint} is not a checkpoint folder (no model.safetensors); give e.g. "
                              "RUN/arms/raw/seed0/ift/ckpt/step_000064")
    try:
        rundir = RunDir.containing(checkpoint.resolve())
        cfg = rundir.load_config()
    except (RunDirError, ConfigError) as err:
        raise ServeError(400, str(err)) from None
    tok = rundir.tokenizer(cfg)
    model = rundir.model(cfg, checkpoint, device, tok)
    return ServedModel(checkpoint.resolve().name, model, tok, tok.tag_id, cfg.eval)


# --------------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    # unknown OpenAI fields (logprobs, stop, user, …) are ignored, as OpenAI-compatible servers do
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the chat API's newer name for max_tokens
    stream: bool = False
    n: int = Field(1, ge=1, le=1)  # one choice per prompt; ask again (another seed) for more samples
    decoder: str = "topk"
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch.Generator.manual_seed's range
    temperature: float | None = Field(None, ge=0)  # 0 = greedy (eval.decoders.sample_next_token)
    top_k: int | None = Field(None, ge=0)  # 0 = whole vocabulary
    # beam widths are bounded: each prompt holds beam_size × candidates_per_beam cache rows
    beam_size: int | None = Field(None, ge=1, le=16)
    candidates_per_beam: int | None = Field(None, ge=1, le=16)
    drop_fraction: float | None = Field(None, ge=0, lt=1)
    short_circuit: bool | None = None
    length_penalty: float | None = Field(None, ge=0)


class CompletionBody(_Body):
    prompt: str | list[str]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts mean anything to our models
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())


# --------------------------------------------------------------------------- prompts
def chat_ids(tok: TextTokenizer, messages: list[Message]) -> list[int]:
    """The training chat format for a conversation: earlier turns as `<|user|>…<|end|>` / `<|assistant|>…<|end|>`,
    the last user turn via `chat_prompt_ids` (ends with `<|assistant|>`). System/developer messages are dropped,
    as in the exported chat template: the models were never trained with one."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ServeError(400, "messages must end with a user message (the model answers as the assistant)")
    if not turns[-1].text().strip():
        raise ServeError(400, "the last user message is empty")
    ids: list[int] = []
    for m in turns[:-1]:
        ids += [tok.user_id if m.role == "user" else tok.assistant_id, *tok.encode(m.text()), tok.end_id]
    return ids + chat_prompt_ids(tok, turns[-1].text())


def completion_ids(tok: TextTokenizer, prompt: str | list[str]) -> list[list[int]]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or any(not p.strip() for p in prompts):
        raise ServeError(400, "empty prompt: give a non-empty string (or a list of them)")
    if len(prompts) > MAX_PROMPTS:  # one request is one batch: its size bounds the memory a request can take
        raise ServeError(400, f"{len(prompts)} prompts in one request; at most {MAX_PROMPTS}")
    return [tok.encode(p) for p in prompts]


# --------------------------------------------------------------------------- generation
@dataclass
class Plan:
    """A checked request: what to run, in a form the worker thread needs nothing else for."""
    decoder: str
    prompts: list[list[int]]
    max_tokens: int
    seed: int
    settings: BaseModel


def plan(served: ServedModel, body: _Body, prompts: list[list[int]], cap: int) -> Plan:
    if body.model is not None and body.model != served.name:
        raise ServeError(404, f"model {body.model!r} is not served here; this server serves {served.name!r}",
                         "not_found_error")
    if body.decoder not in DECODERS:
        raise ServeError(400, f"unknown decoder {body.decoder!r}; choose one of {', '.join(sorted(DECODERS))}")
    if DECODERS[body.decoder].options.get("needs_tag") and served.tag_id is None:
        raise ServeError(400, "SafeBeam needs the harmfulness tag token, and this checkpoint's tokenizer has none; "
                              "use decoder topk or beam")
    e = served.eval_cfg
    # default: the eval's length, kept inside the cap and leaving the prompt at least half the context
    max_tokens = body.max_tokens or body.max_completion_tokens or min(e.max_new_tokens, cap,
                                                                       served.model.max_seq_len // 2)
    if max_tokens > cap:
        raise ServeError(400, f"max_tokens={max_tokens} is above this server's cap of {cap} "
                              "(--max-tokens-cap); ask for fewer tokens")
    if max_tokens >= served.model.max_seq_len:
        raise ServeError(400, f"max_tokens={max_tokens} leaves no room for the prompt: the model's context is "
                              f"{served.model.max_seq_len} tokens")
    # the decoder's own settings model (the run's eval section), with the request's values for its fields
    asked = {"k": body.top_k, "temperature": body.temperature, "beam_size": body.beam_size,
             "candidates_per_beam": body.candidates_per_beam, "drop_fraction": body.drop_fraction,
             "short_circuit": body.short_circuit, "length_penalty": body.length_penalty}
    base = decoder_settings(body.decoder, e)
    fields = type(base).model_fields
    settings = base.model_copy(update={k: v for k, v in asked.items() if v is not None and k in fields})
    # no seed → a fresh one, so repeated requests sample differently (as OpenAI's API does); it is echoed back
    seed = body.seed if body.seed is not None else secrets.randbits(31)
    return Plan(body.decoder, prompts, max_tokens, seed, settings)


def run_plan(served: ServedModel, p: Plan) -> list[Generation]:
    """Blocking: runs in a worker thread. Each request has its own generator and caches, so threads share only
    the (read-only) weights."""
    tok = served.tok
    with torch.inference_mode():
        return decode(p.decoder, served.model, p.prompts, settings=p.settings, max_new_tokens=p.max_tokens,
                      stop_ids={tok.eos_id, tok.end_id}, pad_id=tok.pad_id, tag_id=served.tag_id, seed=p.seed,
                      batch_size=len(p.prompts))


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


def _extra(p: Plan, g: Generation) -> dict:
    return {"decoder": p.decoder, "short_circuit": g.short_circuited, "tag_emitted": g.tag_emitted,
            "seed": p.seed, "logprob": round(g.logprob, 4)}


def _usage(p: Plan, gens: list[Generation]) -> dict:
    prompt = sum(len(x) for x in p.prompts)
    completion = sum(len(g.tokens) for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --------------------------------------------------------------------------- the app
def create_app(served: ServedModel, *, max_concurrency: int = 4, max_tokens_cap: int = 256,
               max_request_bytes: int = 65536) -> FastAPI:
    app = FastAPI(title="safepretrain serve", docs_url=None, redoc_url=None, openapi_url=None)
    slots = asyncio.Semaphore(max_concurrency)
    waiting = 0  # requests holding or waiting for a slot (one event loop, so a plain counter is safe)
    created = int(time.time())

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError):
        return error(err.status, err.message, err.kind, {"Retry-After": "1"} if err.status == 429 else None)

    @app.exception_handler(HTTPException)  # unknown paths and methods: the same error shape as the rest
    async def _http_error(_: Request, err: HTTPException):
        return error(err.status_code, str(err.detail), "invalid_request_error" if err.status_code < 500 else
                     "server_error")

    async def read_body(request: Request, schema: type[_Body]) -> _Body:
        """The body as `schema`, read in chunks so that an oversized one is refused before it is all in memory."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_request_bytes:
            raise ServeError(413, f"request body is {declared} bytes; the limit is {max_request_bytes} "
                                  "(--max-request-bytes)", "request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_request_bytes:
                raise ServeError(413, f"request body is over the limit of {max_request_bytes} bytes "
                                      "(--max-request-bytes)", "request_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ServeError(400, f"request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ServeError(400, "request body must be a JSON object")
        try:
            return schema.model_validate(data)
        except ValidationError as err:
            raise ServeError(400, _validation_message(err)) from None

    async def generate(p: Plan) -> list[Generation]:
        nonlocal waiting
        if waiting >= max_concurrency * (1 + QUEUE_PER_SLOT):
            raise ServeError(429, f"server busy: {max_concurrency} generations running and the queue is full; "
                                  "retry shortly", "rate_limit_error")
        waiting += 1
        try:
            async with slots:
                return await asyncio.to_thread(run_plan, served, p)
        finally:
            waiting -= 1

    def sse(chunks: Iterator[dict]) -> StreamingResponse:
        def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": created,
                                            "owned_by": "safepretrain"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, CompletionBody)
        p = plan(served, body, completion_ids(served.tok, body.prompt), max_tokens_cap)
        if body.stream and len(p.prompts) > 1:
            raise ServeError(400, "stream: true takes a single prompt")
        gens = await generate(p)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name}
        if not body.stream:
            return {**head, "choices": [{"index": i, "text": served.tok.decode(g.tokens), "logprobs": None,
                                         "finish_reason": FINISH[g.stopped], "safepretrain": _extra(p, g)}
                                        for i, g in enumerate(gens)], "usage": _usage(p, gens)}
        g = gens[0]

        def chunks():
            for piece in text_deltas(served.tok, g.tokens):
                yield {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": FINISH[g.stopped],
                                        "safepretrain": _extra(p, g)}], "usage": _usage(p, gens)}
        return sse(chunks())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request, ChatBody)
        p = plan(served, body, [chat_ids(served.tok, body.messages)], max_tokens_cap)
        g = (await generate(p))[0]
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if not body.stream:
            return {**head, "object": "chat.completion", "usage": _usage(p, [g]), "choices": [{
                "index": 0, "message": {"role": "assistant", "content": served.tok.decode(g.tokens)},
                "logprobs": None, "finish_reason": FINISH[g.stopped], "safepretrain": _extra(p, g)}]}

        def chunks():
            def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}
            yield chunk({"role": "assistant", "content": ""})
            for piece in text_deltas(served.tok, g.tokens):
                yield chunk({"content": piece})
            yield {**chunk({}, FINISH[g.stopped], safepretrain=_extra(p, g)), "usage": _usage(p, [g])}
        return sse(chunks())

    return app


def serve(checkpoint: Path, *, host: str = "127.0.0.1", port: int = 8000, max_concurrency: int = 4,
          max_tokens_cap: int = 256, max_request_bytes: int = 65536, device: str = "cpu") -> None:
    """Load the checkpoint and serve it until interrupted (blocking)."""

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: the server has no authentication, so anyone who can reach this port can "
              "use it", file=sys.stderr, flush=True)
    served = load_served(checkpoint, device)
    app = create_app(served, max_concurrency=max_concurrency, max_tokens_cap=max_tokens_cap,
                     max_request_bytes=max_request_bytes)
    print(f"serving {served.name} on http://{host}:{port}/v1 (OpenAI API; decoders: {', '.join(sorted(DECODERS))})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
