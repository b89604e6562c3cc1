"""The LLM backend of the data stage, on datatrove's `InferenceRunner` (`datatrove.pipeline.inference`).

datatrove owns the server (vLLM / SGLang started on this node, or any OpenAI-compatible endpoint), the bounded
concurrency, the request cache and the checkpoints; this module owns what the papers specify: the prompts
(assets/llm_prompts.yaml), the checks a generation must pass, and bounded retries. Each rollout is a picklable
callable, so the same pass runs under the local, Slurm or Ray executor.

A document never disappears: a rollout that finally fails marks it `outcome: rejected` with its reason, and the
writer (`outcome_writer`) sends it to `rejected/` instead of its stream. Each retry changes the request's
`seed`, so datatrove's request cache (keyed by the payload) never replays a failed answer, while a rerun after
a kill replays every answer it already has and sends no request twice for finished documents.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import urllib.error
import urllib.request
from importlib import resources
from urllib.parse import urlparse

import yaml
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
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
        """(accepted value or None, last reject reason, attempts used)."""

        reason = "no_attempt"
        for attempt in range(1, self.llm.max_attempts + 1):
            try:
                result = await generate(self.payload(prompt, attempt))
            except InferenceError as e:
                reason = "http_" + (m.group(1) if (m := re.search(r"status (\d{3})", str(e.error))) else "error")
            except ServerError:
                reason = "http_500"
            else:
                value, reason = self.accept(result.text, doc)
                if reason is None:
                    return value, "", attempt
            if attempt < self.llm.max_attempts:
                await asyncio.sleep(self.llm.retry_backoff_s * 2 ** (attempt - 1))
        return None, reason, self.llm.max_attempts

    async def __call__(self, doc: Document, generate) -> dict:
        prompt, meta = self.prompt(doc)
        value, reason, attempts = await self.ask(prompt, generate, doc)
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
