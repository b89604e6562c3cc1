"""`safepretrain serve CHECKPOINT`: an OpenAI-compatible HTTP server over one checkpoint, so red-teaming tools
(garak, PyRIT, inspect_ai) can attack our models with our own decoders, SafeBeam included.

    GET  /v1/models              the one model, named by its path in the run (arms/raw/seed0/ift/ckpt/step_000064),
                                 with its context length
    POST /v1/completions         raw prompt text (base models: the papers' "Question: …\\nAnswer:" layout is up to you)
    POST /v1/chat/completions    messages rendered in the training chat format (data/chat.py)

Extra body fields pick the decoder per request: `decoder` (a name from eval/decoders' registry: topk, beam,
safebeam, ...) and the fields of that decoder's settings model (`top_k` for `k`, `temperature`, `seed`;
`beam_size`, `candidates_per_beam`, `drop_fraction`, `short_circuit`, `length_penalty`); unset ones take the run's
eval settings. A SafeBeam answer that short-circuited on the harmfulness tag has finish_reason "content_filter"
and `safepretrain.short_circuit` true on its choice.

Every text a request brings (prompts, every message) is external: literal special-token strings in it (`<|user|>`,
`<|end|>`, `<|assistant|>`, the tag, end-of-text) are made inert with the corpus's rule
(`data.read_step.neutralise_special`), so a user string can neither forge a turn nor plant the tag.

Limits, because a server is an attack surface of its own: it binds loopback by default; bodies above
`max_request_bytes` get 413; `max_tokens` above `max_tokens_cap` 400; a prompt that with `max_tokens` does not
fit the model's context 400 `context_length_exceeded` (never cut silently); a request whose estimated KV-cache
and activation memory (`train.memory.estimate_decode_memory`) is above `max_request_memory_mib` 400; at most
`max_concurrency` generations run at once while up to QUEUE_PER_SLOT × that many wait in line (beyond that:
429). Every error is OpenAI's body `{"error": {"message", "type", "param", "code"}}`: invalid bodies 400, and an
unexpected failure a JSON 500 that leaves the keep-alive connection usable. Generation runs in worker threads
under `torch.inference_mode`, so the event loop keeps answering, and stops at the next token once the client
has disconnected.

Streaming (`stream: true`) sends OpenAI chunks ending with `data: [DONE]`. The decoders are batch functions
(beam search cannot emit a token before the search ends), so chunks are sent once the answer is complete,
one per token; their text concatenates to exactly the non-streamed text.

OpenAI parameters (docs/clients.md has the table): `stop` (the text is cut before the first stop string, after
decoding), `n` (choices per prompt, each its own sample), `seed`, `temperature`, `top_p` (nucleus after top_k;
topk decoder), `frequency_penalty` and `presence_penalty` (topk decoder), `max_tokens` /
`max_completion_tokens`, `stream` and `stream_options`; log-probs, the model's
teacher-forced log-softmax over prompt + answer (`eval.likelihood.sequence_logprobs`): `logprobs` + `top_logprobs`
on chat, `logprobs` (0-5 alternatives) + `echo` on completions, where `max_tokens: 0` with `echo: true` scores the
prompt alone (lm-eval's loglikelihood requests); prompts as text or as token-id lists. Parameters clients send with
their neutral value (`logit_bias` {}, `best_of` = n, `tools` [],
`response_format` text, `user`) are taken; any other value, and any parameter not listed, is a 400 naming it:
nothing is silently ignored (`serve_requests.py`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from safepretrain.config import ConfigError
from safepretrain.eval.decoders import DECODERS, Generation, decode
from safepretrain.eval.likelihood import sequence_logprobs
from safepretrain.rundir import RunDir, RunDirError, relative_to_run
from safepretrain.serve_plan import MIB, Plan, ServedModel, plan, request_memory  # noqa: F401  (public names)
from safepretrain.serve_requests import (  # noqa: F401  (Message, inert: serve's public names)
    MAX_PROMPTS,
    ChatBody,
    CompletionBody,
    Message,
    ServeError,
    _Body,
    _validation_error,
    chat_ids,
    completion_ids,
    inert,
)
from safepretrain.serve_responses import (  # noqa: F401  (text_deltas: serve's public name)
    Choice,
    answer_deltas,
    chat_choice,
    completion_choice,
    cut_at_stop,
    text_deltas,
)

QUEUE_PER_SLOT = 4  # waiting requests per concurrency slot before 429: bounded memory, smooth bursts
DISCONNECT_POLL_S = 0.1  # how often a running generation checks that its client is still there
log = logging.getLogger("safepretrain.serve")


class Cancelled(Exception):
    """The client went away: its generation stopped at the next forward pass."""


def check_device(device: str) -> None:
    """Refuse, with the fix, a device this machine does not have (torch would fail deep inside loading)."""
    if device in ("auto", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()) or (kind == "mps" and index):
        raise ServeError(400, f"--device {device}: not a device name; use cpu, cuda, cuda:N, mps or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ServeError(400, "--device mps: this machine has no usable MPS device; use --device cpu or auto")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ServeError(400, f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}, "
                                  f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu, or auto to take "
                                  "a GPU when there is one")
        if index and int(index) >= torch.cuda.device_count():
            raise ServeError(400, f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                                  f"device(s), numbered from 0")


def load_served(checkpoint: Path, device: str = "cpu") -> ServedModel:
    """Model, tokenizer and eval settings of a checkpoint folder, located as `export` does (via its run)."""
    if not (checkpoint / "model.safetensors").is_file():
        raise ServeError(400, f"{checkpoint} is not a checkpoint folder (no model.safetensors); give e.g. "
                              "RUN/arms/raw/seed0/ift/ckpt/step_000064")
    check_device(device)
    try:
        rundir = RunDir.containing(checkpoint.resolve())
        cfg = rundir.load_config()
    except (RunDirError, ConfigError) as err:
        raise ServeError(400, str(err)) from None
    tok = rundir.tokenizer(cfg)
    model = rundir.model(cfg, checkpoint, device, tok)
    # the folder name alone (step_000064) is the same for every arm, seed and stage
    return ServedModel(relative_to_run(checkpoint, rundir.root), model, tok, tok.tag_id, cfg.eval)


# --------------------------------------------------------------------------- request bodies
# --------------------------------------------------------------------------- generation
class _Cancellable:
    """The served model as the decoders see it, except that every method call first checks the request's cancel
    flag: the decoding loops call the model once per token, so a gone client's search stops within a token
    without the decoders knowing about requests."""

    def __init__(self, model: Any, cancel: threading.Event):
        self._model, self._cancel = model, cancel

    def __call__(self, *args, **kwargs):  # a forward pass (the log-probs' teacher forcing)
        if self._cancel.is_set():
            raise Cancelled
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if not callable(value) or not hasattr(value, "__self__"):  # properties, tensors, submodules: as they are
            return value

        def checked(*args, **kwargs):
            if self._cancel.is_set():
                raise Cancelled
            return value(*args, **kwargs)
        return checked


def run_plan(served: ServedModel, p: Plan) -> list[Choice]:
    """Blocking: runs in a worker thread. Each request has its own generator and caches, so threads share only
    the (read-only) weights. Raises Cancelled once `p.cancel` is set. Log-probs, when asked, are the model's
    teacher-forced log-softmax over prompt + answer (temperature 1, whichever decoder chose the tokens)."""
    tok = served.tok
    model = _Cancellable(served.model, p.cancel)
    with torch.inference_mode():
        gens = decode(p.decoder, model, p.prompts, settings=p.settings, max_new_tokens=p.max_tokens,
                      stop_ids={tok.eos_id, tok.end_id}, pad_id=tok.pad_id, tag_id=served.tag_id, seed=p.seed,
                      batch_size=len(p.prompts)) if p.max_tokens else \
            [Generation([], 0.0, "length", False, False) for _ in p.prompts]
        answers = [cut_at_stop(tok, g.tokens, p.stops) for g in gens]
        scores = sequence_logprobs(model, [q + a.tokens for q, a in zip(p.prompts, answers)], p.logprobs) \
            if p.logprobs is not None else [None] * len(gens)
    return [Choice(g, a, s) for g, a, s in zip(gens, answers, scores)]


def _extra(p: Plan, g: Generation) -> dict:
    return {"decoder": p.decoder, "short_circuit": g.short_circuited, "tag_emitted": g.tag_emitted,
            "seed": p.seed, "logprob": round(g.logprob, 4)}


def _usage(p: Plan, choices: list[Choice], n: int) -> dict:
    prompt = sum(len(x) for x in p.prompts[::n])  # each prompt once, however many choices it has
    completion = sum(len(c.answer.tokens) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class CatchAll:
    """ASGI middleware: an exception no handler took becomes a JSON 500 here. Starlette's own last-resort handler
    answers plain text and re-raises, and uvicorn then drops the connection, so the client's next request on it
    fails; this one answers and returns, so the connection stays usable. The traceback goes to the log (the
    exception's type and place, not the request's text)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as err:
            log.error("%s %s failed with %s (a server bug; the client got a JSON 500)", scope.get("method"),
                      scope.get("path"), type(err).__name__, exc_info=True)
            if started:  # a stream already under way cannot change its status any more
                raise
            body = error_body(f"internal server error ({type(err).__name__}); the server log has the traceback",
                              "server_error")
            await JSONResponse(body, status_code=500)(scope, receive, send)


# --------------------------------------------------------------------------- the app
def create_app(served: ServedModel, *, max_concurrency: int = 4, max_tokens_cap: int = 256,
               max_request_bytes: int = 65536, max_request_memory_mib: int | None = 1024) -> FastAPI:
    """The OpenAI-compatible app over `served`; `max_request_memory_mib` None: no memory limit."""
    app = FastAPI(title="safepretrain serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CatchAll)
    slots = asyncio.Semaphore(max_concurrency)
    waiting = 0  # requests holding or waiting for a slot (one event loop, so a plain counter is safe)
    created = int(time.time())
    memory_limit = None if max_request_memory_mib is None else max_request_memory_mib * MIB

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError):
        return JSONResponse(error_body(err.message, err.kind, err.param, err.code), status_code=err.status,
                            headers={"Retry-After": "1"} if err.status == 429 else None)

    @app.exception_handler(HTTPException)  # unknown paths and methods: the same error shape as the rest
    async def _http_error(_: Request, err: HTTPException):
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(err.detail), kind), status_code=err.status_code)

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
            data = json.loads(raw, parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            raise ServeError(400, f"request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ServeError(400, "request body must be a JSON object")
        try:
            return schema.model_validate(data)
        except ValidationError as err:
            raise _validation_error(err) from None

    async def generate(request: Request, p: Plan) -> list[Choice]:
        nonlocal waiting
        if waiting >= max_concurrency * (1 + QUEUE_PER_SLOT):
            raise ServeError(429, f"server busy: {max_concurrency} generations running and the queue is full; "
                                  "retry shortly", "rate_limit_error")
        waiting += 1
        try:
            async with slots:
                work = asyncio.ensure_future(asyncio.to_thread(run_plan, served, p))
                try:
                    # the worker cannot be interrupted from here: watch the client, and let the decoding loop
                    # see the flag at its next token; the slot is held until the worker has really stopped
                    while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                        if not p.cancel.is_set() and await request.is_disconnected():
                            p.cancel.set()
                    return work.result()
                finally:
                    p.cancel.set()  # (a no-op once done; stops the worker if this handler itself is cancelled)
        except Cancelled:
            raise ServeError(499, "the client closed the request; its generation was stopped",
                             code="client_closed_request") from None
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
                                            "owned_by": "safepretrain",
                                            "context_length": served.model.max_seq_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, CompletionBody)
        p = plan(served, body, completion_ids(served.tok, body.prompt), max_tokens_cap, memory_limit)
        if body.stream and len(p.prompts) > 1:
            raise ServeError(400, "stream: true takes a single prompt", param="stream")
        choices = await generate(request, p)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name}
        if not body.stream:
            return {**head, "choices": [completion_choice(served.tok, i, p.prompts[i], c, body.echo, p.logprobs,
                                                          _extra(p, c.generation))
                                        for i, c in enumerate(choices)], "usage": _usage(p, choices, body.n)}
        c = choices[0]

        def chunks():
            for piece in answer_deltas(served.tok, c.answer):
                yield {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": c.finish_reason,
                                        "safepretrain": _extra(p, c.generation)}], "usage": _usage(p, choices, 1)}
        return sse(chunks())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request, ChatBody)
        p = plan(served, body, [chat_ids(served.tok, body.messages)], max_tokens_cap, memory_limit)
        choices = await generate(request, p)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if not body.stream:
            return {**head, "object": "chat.completion", "usage": _usage(p, choices, body.n),
                    "choices": [chat_choice(served.tok, i, p.prompts[i], c, p.logprobs, _extra(p, c.generation))
                                for i, c in enumerate(choices)]}
        c = choices[0]

        def chunks():
            def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}
            yield chunk({"role": "assistant", "content": ""})
            for piece in answer_deltas(served.tok, c.answer):
                yield chunk({"content": piece})
            yield {**chunk({}, c.finish_reason, safepretrain=_extra(p, c.generation)), "usage": _usage(p, choices, 1)}
        return sse(chunks())

    return app


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")  # Python's json reads NaN / Infinity unless told not to


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, made before the model loads: a busy port is a one-line error at once, not a
    traceback after loading (and no "serving on …" line for a server that never served)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ServeError(400, f"--host {host}: {err.strerror}; give an address such as 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a TIME_WAIT port is free
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ServeError(400, f"port {port} on {host} is already in use (another server?); stop it or pick "
                                  "another with --port") from None
        raise ServeError(400, f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def serve(checkpoint: Path, *, host: str = "127.0.0.1", port: int = 8000, max_concurrency: int = 4,
          max_tokens_cap: int = 256, max_request_bytes: int = 65536, max_request_memory_mib: int = 1024,
          device: str = "cpu") -> None:
    """Load the checkpoint and serve it until interrupted (blocking)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: the server has no authentication, so anyone who can reach this port can "
              "use it", file=sys.stderr, flush=True)
    sock = bind(host, port)
    try:
        served = load_served(checkpoint, device)
        app = create_app(served, max_concurrency=max_concurrency, max_tokens_cap=max_tokens_cap,
                         max_request_bytes=max_request_bytes, max_request_memory_mib=max_request_memory_mib)
        print(f"serving {served.name} on http://{host}:{port}/v1 (OpenAI API; decoders: "
              f"{', '.join(sorted(DECODERS))})", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
