"""The LLM backend of the data stage, on datatrove's `InferenceRunner` (`datatrove.pipeline.inference`).

datatrove owns the server (vLLM / SGLang started on this node, or any OpenAI-compatible endpoint), the bounded
concurrency, the request cache and the checkpoints; this module owns what the papers specify: the prompts
(assets/llm_prompts.yaml), the checks a generation must pass, and bounded retries. Each rollout is a picklable
callable, so the same pass runs under the local, Slurm or Ray executor.

A document never disappears: a rollout whose answers all fail their checks marks it `outcome: rejected` with
its reason, and the writer (`llm_row`) sends it to `rejected/` instead of its stream. Each retry changes the
request's `seed`, so datatrove's request cache (keyed by the payload) never replays a failed answer, while a
rerun after a kill replays every answer it already has and sends no request twice for finished documents.

An infrastructure failure (HTTP 429 / 5xx, a refused or reset connection, a timeout, a body that is not a
completion) says nothing about the document, so it is never a verdict: `LLMRunner` bounds every request by
`request_timeout_s` and hands such failures to the rollout at once (`LLMOutage`), which retries them with
backoff; `max_attempts` of them in a row stop the pass (`LLMUnavailable`, naming the server) before the
document is written. Its rank then has no completion marker and its step no `done.json`, and a rerun sends
requests only for the documents that were not finished.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import urlparse

import yaml
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.types import InferenceError, ServerError

from safepretrain.config.data import LLMConfig
from safepretrain.data import interventions as iv
from safepretrain.data.read_step import neutralise_special
from safepretrain.data.scoring import chunk_text

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@functools.lru_cache(maxsize=1)
def prompts() -> dict:
    return yaml.safe_load(resources.files("safepretrain.assets").joinpath("llm_prompts.yaml").read_text())


def endpoint_base(url: str) -> str:
    """The base URL datatrove's endpoint server expects: for a loopback http URL it posts to
    `<base>/v1/chat/completions` itself, so a trailing `/v1` is dropped; other URLs go to the `openai`
    client as given (`https://host/v1`)."""
    url = url.rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme == "http" and parsed.hostname in LOCAL_HOSTS and url.endswith("/v1"):
        return url[: -len("/v1")]
    return url


def check_endpoint(llm: LLMConfig, timeout: float = 5.0) -> None:
    """Fail fast, naming the URL, when the endpoint cannot be reached (any HTTP answer counts as reachable)."""
    if llm.server != "endpoint":
        return
    url = endpoint_base(llm.endpoint_url) + "/v1/models"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"data.llm.endpoint_url {llm.endpoint_url} cannot be reached ({url}: "
                              f"{getattr(e, 'reason', e)}); start the server or fix the URL") from None


def backend_name(llm: LLMConfig) -> str:
    """The server in words, for messages: its URL, or the local server and model datatrove starts."""
    if llm.server == "endpoint":
        return f"LLM endpoint {llm.endpoint_url}"
    return f"{llm.server} server of {llm.model}"


BAD_REQUEST = frozenset({400, 413, 422})  # the request itself is refused (too long, invalid field): any retry too


class LLMOutage(InferenceError):
    """One request failed for a reason outside the document (`reason`: http_429, http_5xx, timeout,
    connection_error, malformed_body, ...). Raised by `LLMRunner`'s requests, retried by the rollout; never a
    reject reason. An `InferenceError`, so datatrove's request loop hands it on at once instead of sleeping
    5-160 s between six retries of its own."""

    def __init__(self, reason: str, detail: str):
        super().__init__(None, f"{reason}: {detail}")  # no payload: it holds the document's text
        self.reason = reason


class LLMUnavailable(ServerError):
    """The pass stops: a document got `max_attempts` infrastructure failures in a row, or the server process is
    gone. A `ServerError`, so datatrove's runner raises it as it is (its rank then has no completion marker)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)  # ServerError would prefix it; args stay (message,) for pickling
        self.error = message


def http_status(err: Exception) -> int | None:
    """The HTTP status behind a datatrove or openai request error, when it names one."""
    status = getattr(err.__cause__, "status_code", None)  # the openai client's APIStatusError
    if isinstance(status, int):
        return status
    text = str(getattr(err, "error", err))
    if m := re.search(r"(?:http status|Error code:) (\d{3})", text):
        return int(m.group(1))
    return 400 if "BadRequestError" in text else None


def well_formed(response: object, chat: bool) -> bool:
    """A completion body datatrove can read: `choices[0]` with its text and finish reason."""
    try:
        choice = response["choices"][0]
        text = choice["message"].get("content") if chat else choice["text"]
        return "finish_reason" in choice and (text is None or isinstance(text, str))
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def bound_requests(send: Callable[[dict], Awaitable[dict]], timeout: float,
                   chat: bool = True) -> Callable[[dict], Awaitable[dict]]:
    """`send` (a datatrove server's `_make_request`) bounded by `timeout` seconds, its infrastructure failures
    raised as `LLMOutage`. A refused request (HTTP 400 / 413 / 422) is raised as datatrove raised it: it is the
    document's (datatrove caches it, and the rollout rejects the document as `bad_request`)."""

    async def request(payload: dict) -> dict:
        try:
            response = await asyncio.wait_for(send(payload), timeout)
        except TimeoutError:  # before OSError, its base class; asyncio's is the same class since Python 3.11
            raise LLMOutage("timeout", f"no answer within data.llm.request_timeout_s={timeout:g} s") from None
        except LLMOutage:
            raise
        except ServerError as e:  # datatrove's raw post (loopback, vLLM, SGLang) raises this for HTTP 500
            raise LLMOutage("http_500", str(e.error)[:200]) from None
        except InferenceError as e:
            if (status := http_status(e)) in BAD_REQUEST:
                raise
            raise LLMOutage(f"http_{status}" if status else "request_error", str(e.error)[:200]) from None
        except (ConnectionError, OSError) as e:  # refused or reset; the openai client's 429 / 5xx arrive as these
            status = getattr(e.__cause__, "status_code", None)
            raise LLMOutage(f"http_{status}" if status else "connection_error",
                            f"{type(e).__name__}: {e}"[:200]) from None
        except ValueError as e:  # json.loads of a body that is not JSON
            raise LLMOutage("malformed_body", f"{type(e).__name__}: {e}"[:200]) from None
        if not well_formed(response, chat):
            raise LLMOutage("malformed_body", "the answer is JSON but not a completion (no choices[0] text)")
        return response

    return request


class LLMRunner(InferenceRunner):
    """datatrove's `InferenceRunner` whose server requests are bounded by `request_timeout` (datatrove's raw
    post to loopback, vLLM and SGLang servers has none; only its `openai` path had one) and whose infrastructure
    failures reach the rollout as `LLMOutage` at once (`bound_requests`). Everything else is datatrove's:
    concurrency, request cache, checkpoints, writer."""

    def _init_server(self, rank: int):
        server = super()._init_server(rank)
        # the instance attribute wins over the class method that `make_request` calls after the server is ready,
        # so the bound covers the HTTP request only, not a vLLM start-up or the wait for a concurrency slot
        server._make_request = bound_requests(server._make_request, self.config.request_timeout,
                                              self.config.use_chat)
        return server


def inference_config(llm: LLMConfig):

    return InferenceConfig(
        server_type=llm.server, model_name_or_path=llm.model, model_max_context=llm.model_max_context,
        endpoint_url=endpoint_base(llm.endpoint_url) if llm.endpoint_url else None,
        api_key=os.environ.get(llm.api_key_env) or None, tp=llm.tp,
        max_concurrent_generations=llm.max_concurrent, request_timeout=llm.request_timeout_s,
        metric_interval=600, server_ready_max_attempts=60, server_ready_delay_sec=5.0)


def find_scaffolding(text: str) -> str | None:
    low = text.lower()
    return next((s for s in prompts()["scaffolding"] if s.lower() in low), None)


def check_generation(text: str, input_words: int, llm: LLMConfig) -> str | None:
    """Why a generation is unusable (None when it is fine): empty_output, leaked_prompt, too_short, too_long."""
    words = len(text.split())
    if not words:
        return "empty_output"
    if find_scaffolding(text):
        return "leaked_prompt"
    if words < llm.min_output_words:
        return "too_short"
    if words > llm.max_output_ratio * input_words + 200:
        return "too_long"
    return None


_SCORE = re.compile(r'"?score"?\s*:\s*"?([0-5])\b')


def parse_rubric(text: str) -> tuple[int, str] | None:
    """(score, reason) from the rubric answer: a JSON object, or its continuation after the forced prefix
    `{"score": `. None when no score 0-5 can be read."""
    text = text.strip()
    if text[:1].isdigit():  # the continuation of the forced prefix
        text = prompts()["rubric_prefix"] + text
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            obj = json.loads(text[start : end + 1])
            score = obj.get("score") if isinstance(obj, dict) else None
            if isinstance(score, str) and score.strip().isdigit():
                score = int(score)
            if isinstance(score, int) and not isinstance(score, bool) and 0 <= score <= 5:
                return score, str(obj.get("reason", ""))[:200]
        except json.JSONDecodeError:
            pass
    m = _SCORE.search(text)
    return (int(m.group(1)), "") if m else None


class Rollout:
    """One prompt family: `prompt(doc)` → (prompt, metadata), `accept(answer, doc)` → (value, reject reason).
    `__call__` is datatrove's rollout function: up to `max_attempts` requests, each with its own seed."""

    family = "llm"
    temperature: float | None = None

    def __init__(self, llm: LLMConfig, seed: int, prefill: str | None = None, specials: tuple[str, ...] = ()):
        self.llm = llm
        self.seed = seed
        self.prefill = prefill
        self.specials = tuple(specials)  # literal special-token strings, made inert in generated text
        self.paths = {"ok": "ok", "rejected": "rejected"}  # output folder per outcome (the writer's filename)
        self.outages: Counter = Counter()  # failed requests of this task by reason, for the message that stops it
        self.finished = 0  # documents written (ok or rejected) by this task

    def outcome(self, doc: Document, outcome: str, **meta) -> None:
        doc.metadata.update(outcome=outcome, outcome_path=self.paths[outcome], **meta)

    def prompt(self, doc: Document) -> tuple[str, dict]:
        raise NotImplementedError

    def accept(self, answer: str, doc: Document) -> tuple[object, str | None]:
        raise NotImplementedError

    def payload(self, prompt: str, attempt: int) -> dict:
        messages = [{"role": "user", "content": prompt}]
        extra = {}
        if self.prefill:  # vLLM / SGLang continue an assistant turn: the paper's forced JSON start
            messages.append({"role": "assistant", "content": self.prefill})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        temperature = self.llm.temperature if self.temperature is None else self.temperature
        return {"messages": messages, "max_tokens": self.llm.max_tokens, "temperature": temperature,
                "seed": self.seed * 1000 + attempt, **extra}

    async def ask(self, prompt: str, generate, doc: Document) -> tuple[object, str, int]:
        """(accepted value or None, last reject reason, requests sent). An answer that fails `accept` costs one of
        `max_attempts`; after the last, the document is rejected with its reason. An infrastructure failure is
        never a verdict: it is retried, and `max_attempts` of them in a row stop the pass (`LLMUnavailable`)
        with the document unfinished, so a rerun retries it. Waits `retry_backoff_s * 2**(k-1)` before the
        (k+1)-th try of either kind."""
        llm = self.llm
        failed = outages = sent = 0
        while True:
            sent += 1
            try:
                result = await generate(self.payload(prompt, sent))
            except InferenceError as e:
                status = None if isinstance(e, LLMOutage) else http_status(e)
                if status in BAD_REQUEST:  # the same request is refused whatever its seed
                    return None, "bad_request", sent
                reason = e.reason if isinstance(e, LLMOutage) else f"http_{status}" if status else "request_error"
                outages += 1
                self.outages[reason] += 1
                if outages >= llm.max_attempts:
                    raise LLMUnavailable(self.unavailable(doc, reason, outages)) from None
                streak = outages
            except ServerError as e:  # the vLLM / SGLang process died or never started (or a 500 past LLMRunner)
                raise LLMUnavailable(f"{backend_name(llm)} is gone ({e}); nothing was rejected, rerun to "
                                     "retry the unfinished documents") from None
            else:
                outages = 0
                value, reason = self.accept(result.text, doc)
                if reason is None:
                    return value, "", sent
                failed += 1
                if failed >= llm.max_attempts:
                    return None, reason, sent
                streak = failed
            await asyncio.sleep(llm.retry_backoff_s * 2 ** (streak - 1))

    def unavailable(self, doc: Document, reason: str, in_a_row: int) -> str:
        return (f"{backend_name(self.llm)} failed {in_a_row} {self.family} request(s) in a row for document "
                f"{doc.id} (last: {reason}); this task had {sum(self.outages.values())} failed request(s) "
                f"({', '.join(f'{k} x{n}' for k, n in sorted(self.outages.items()))}). No document was rejected "
                f"for it: the {self.finished} finished in this run are kept, and a rerun with the same data.llm "
                "settings, once the server answers, sends requests only for the unfinished ones")

    async def __call__(self, doc: Document, generate) -> dict:
        prompt, meta = self.prompt(doc)
        value, reason, attempts = await self.ask(prompt, generate, doc)
        self.finished += 1
        if value is None:
            self.outcome(doc, "rejected", reject_reason=reason)
            return {"family": self.family, "attempts": attempts, "reason": reason}
        self.outcome(doc, "ok", generated=value, **meta)
        return {"family": self.family, "attempts": attempts}


class GenerationRollout(Rollout):
    """A generator family: the document (or dialogue) text in, checked text out."""

    def accept(self, answer: str, doc: Document) -> tuple[object, str | None]:

        text, _ = neutralise_special(answer.strip(), self.specials)
        return (text, None) if (why := check_generation(text, len(doc.text.split()), self.llm)) is None else (None, why)


class RephraseRollout(GenerationRollout):
    """SafeWeb: one of the paper's 7 styles, drawn uniformly per document (seeded by its id)."""

    family = "rephrase"

    def prompt(self, doc: Document) -> tuple[str, dict]:
        styles = prompts()["rephrase_styles"]
        style = iv.doc_rng(doc.metadata.get("source_id", doc.id), self.seed, "rephrase").choice(sorted(styles))
        return prompts()["rephrase_common"].format(style=styles[style], text=doc.text), {"style": style}


class RefusalRollout(GenerationRollout):
    """RefuseWeb: a User/Assistant dialogue; the speakers are then renamed with a drawn role pair (paper: names
    replaced at tokenization time), so "User:"/"Assistant:" do not become a trigger."""

    family = "refusal"

    def prompt(self, doc: Document) -> tuple[str, dict]:
        return prompts()["refusal"].format(text=doc.text), {}

    def accept(self, answer: str, doc: Document) -> tuple[object, str | None]:
        text, why = super().accept(answer, doc)
        if why:
            return None, why
        if not re.search(r"(?m)^\s*User\s*:", text) or not re.search(r"(?m)^\s*Assistant\s*:", text):
            return None, "not_a_dialogue"
        asker, helper = iv.doc_rng(doc.metadata.get("source_id", doc.id), self.seed, "refusal").choice(
            iv.templates()["refusal"]["roles"])
        text = re.sub(r"(?m)^(\s*)User\s*:", rf"\g<1>{asker}:", text)
        return re.sub(r"(?m)^(\s*)Assistant\s*:", rf"\g<1>{helper}:", text), None


class MoralEducationRollout(GenerationRollout):
    """Moral education: a RefuseWeb dialogue becomes a third-person, web-style ethics article."""

    family = "moral_ed"

    def prompt(self, doc: Document) -> tuple[str, dict]:
        return prompts()["moral_education"].format(text=doc.text), {}


class RubricRollout(Rollout):
    """The paper's 0-5 rubric on each chunk (at most `max_chunks_per_doc`), answered as JSON at temperature 0.
    Document score = max over its chunks and over the scores already in its metadata (the max-ensemble)."""

    family = "rubric"
    temperature = 0.0

    def __init__(self, llm: LLMConfig, seed: int, chunk_words: int, prefill: bool = False):
        super().__init__(llm, seed, prompts()["rubric_prefix"] if prefill else None)
        self.chunk_words = chunk_words

    def accept(self, answer: str, doc: Document) -> tuple[object, str | None]:
        parsed = parse_rubric(answer)
        return (parsed, None) if parsed else (None, "unparsable_score")

    async def __call__(self, doc: Document, generate) -> dict:

        chunks = chunk_text(doc.text, self.chunk_words)[: self.llm.max_chunks_per_doc]
        answers = await asyncio.gather(*(self.ask(prompts()["rubric"].format(text=c), generate, doc)
                                         for c in chunks))
        failed = next((reason for value, reason, _ in answers if value is None), None)
        self.finished += 1
        if failed:
            self.outcome(doc, "rejected", reject_reason=failed)
            return {"family": self.family, "reason": failed}
        m = doc.metadata
        rubric = [value[0] for value, _, _ in answers]
        prior = list(m.get("chunk_scores") or [0] * len(chunk_text(doc.text, self.chunk_words)))
        chunk_scores = [max(a, b) for a, b in zip(prior, rubric + [0] * (len(prior) - len(rubric)))]
        m["scores_by"] = {**m.get("scores_by", {}), "llm_rubric": max(rubric)}
        self.outcome(doc, "ok", chunk_scores=chunk_scores, harm_score=max(chunk_scores),
                     rubric_reason=answers[rubric.index(max(rubric))][0][1])
        return {"family": self.family, "chunks": len(chunks)}
