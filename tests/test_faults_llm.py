"""LLM outages are retried, never a document's verdict (issue 21, items 1 and 4).

A loopback OpenAI-compatible server (tests/llm_server.py) goes down for a stretch of requests: HTTP 500, a body
that is not JSON, or no answer at all. The data stage must stop without a verdict for the unfinished documents
(no reject row, no `done.json`), name the server and the count, and a rerun after recovery must finish with
requests for the unfinished documents only. Every request is bounded by `request_timeout_s`, including
datatrove's raw-post path (loopback here; the same code serves its vLLM and SGLang servers).

    python -m pytest tests/test_faults_llm.py -q
"""

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
from datatrove.pipeline.inference.servers import InferenceServer
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from llm_server import FakeLLM, Outage

from safepretrain.config import load_config
from safepretrain.config.data import LLMConfig
from safepretrain.data import llm
from safepretrain.data.scoring import chunk_text
from safepretrain.run.study import prepare_data
from safepretrain.rundir import RunDir
from safepretrain.utils import read_jsonl
from safepretrain.world import world_for

ROOT = Path(__file__).parents[1]
ATTEMPTS, CONCURRENT = 2, 2
INFRA = re.compile(r"^(http_\d+|http_error|request_error|timeout|connection_error|malformed_body)$")


def config(run: Path, url: str, *extra: str):
    return load_config(str(ROOT / "configs" / "smoke.yaml"), [
        f"out_dir={run}", "world.max_docs_per_source=2", "data.tasks=1", "data.scorer.kind=llm_rubric",
        f"data.llm.endpoint_url={url}", f"data.llm.max_concurrent={CONCURRENT}", f"data.llm.max_attempts={ATTEMPTS}",
        "data.llm.retry_backoff_s=0", "data.llm.records_per_chunk=4", "data.llm.request_timeout_s=5", *extra])


def rows(folder: Path, pattern: str) -> list[dict]:
    return [r for p in sorted(folder.glob(pattern)) for r in read_jsonl(p)]


def rubric_keys(text: str, cfg) -> set[str]:
    """The fake server's log keys of a document's rubric requests (one per rated chunk)."""
    chunks = chunk_text(text, cfg.data.scorer.chunk_words)[: cfg.data.llm.max_chunks_per_doc]
    return {FakeLLM.key(llm.prompts()["rubric"].format(text=c)) for c in chunks}


@pytest.fixture
def server():
    s = FakeLLM()
    yield s
    s.close()


def test_an_outage_stops_scoring_and_the_rerun_sends_only_the_unfinished_documents(tmp_path, server):
    server.outage = Outage(start=6, kind="500")  # answers 6 requests, then 500 until it recovers
    cfg = config(tmp_path, server.url)
    world = world_for(cfg)
    scoring = tmp_path / "scoring"
    with pytest.raises(ServerError, match=rf"{re.escape(server.url)} failed {ATTEMPTS} rubric request\(s\) in a "
                                          r"row .*last: http_500.*failed request\(s\)") as err:
        prepare_data(cfg, world, RunDir(tmp_path))
    assert f"{ATTEMPTS} rubric request(s)" in str(err.value)
    assert not (scoring / "done.json").exists() and not (tmp_path / "data" / "done.json").exists()
    assert rows(scoring, "rejected/**/*.jsonl.gz") == []  # an outage is nobody's verdict
    # finished = what datatrove's checkpoints hold: a document the aborted pass was still writing (in scored/, its
    # checkpoint append cancelled) counts as unfinished and is redone, its answers replayed from the request cache
    finished = {json.loads(line)["id"] for f in (scoring / "llm_checkpoints").rglob("chunk_*.jsonl")
                for line in f.read_text().splitlines() if line.strip()}
    assert finished  # the documents answered before the outage are kept

    first = len(server.log)
    server.recover()
    prepare_data(cfg, world, RunDir(tmp_path))
    docs = {r["id"]: r["text"] for r in read_jsonl(scoring / "input" / "world.jsonl")}
    scored = rows(scoring, "scored/*.jsonl.gz")
    assert sorted(r["id"] for r in scored) == sorted(docs)  # every document scored once
    assert all(r["scores_by"]["llm_rubric"] == r["harm_score"] for r in scored)
    assert not [r for r in rows(scoring, "rejected/**/*.jsonl.gz") if INFRA.match(r["reason"])]
    resent = {r["key"] for r in server.log[first:]}
    unfinished = set().union(*(rubric_keys(docs[i], cfg) for i in set(docs) - finished))
    assert resent and resent <= unfinished  # the rerun asked only about documents the first run had not finished
    # no answer of a finished document was asked for twice; a request still in flight when the pass stopped was
    # cancelled unanswered (datatrove cancels the other documents' tasks), so its document may ask it again
    assert not {key for (key, _), n in server.served().items() if n > 1} - unfinished
    assert (scoring / "done.json").is_file() and (tmp_path / "data" / "done.json").is_file()


@pytest.mark.parametrize("kind", ["500", "malformed"])
def test_a_server_that_always_fails_never_leaves_a_done_marker(tmp_path, server, kind):
    server.outage = Outage(kind=kind)
    cfg = config(tmp_path, server.url)
    world = world_for(cfg)
    reason = {"500": "http_500", "malformed": "malformed_body"}[kind]
    with pytest.raises(ServerError, match=rf"{re.escape(server.url)} failed .*last: {reason}"):
        prepare_data(cfg, world, RunDir(tmp_path))
    assert not list(tmp_path.rglob("done.json"))
    assert rows(tmp_path / "scoring", "rejected/**/*.jsonl.gz") == []
    assert len(server.log) <= ATTEMPTS * CONCURRENT  # it stops at the first document out of attempts

    server.recover()  # a rerun against the healthy server scores everything: nothing stale was cached as done
    prepare_data(cfg, world, RunDir(tmp_path))
    docs = list(read_jsonl(tmp_path / "scoring" / "input" / "world.jsonl"))
    assert len(rows(tmp_path / "scoring", "scored/*.jsonl.gz")) == len(docs)
    assert rows(tmp_path / "scoring", "rejected/**/*.jsonl.gz") == []


def test_a_hanging_server_is_bounded_by_the_request_timeout(tmp_path, server):
    timeout = 1.0
    server.outage = Outage(kind="hang", count=ATTEMPTS * CONCURRENT, hang_s=20)  # then it answers again
    cfg = config(tmp_path, server.url, f"data.llm.request_timeout_s={timeout}")
    world = world_for(cfg)
    with pytest.raises(ServerError, match=rf"{re.escape(server.url)} failed {ATTEMPTS} .*last: timeout"):
        prepare_data(cfg, world, RunDir(tmp_path))
    ended = time.monotonic()
    hung = [r for r in server.log if r["outage"]]
    assert len(hung) == ATTEMPTS * CONCURRENT and len(server.log) == len(hung)  # no retry left in the background
    assert ended - hung[0]["t"] < ATTEMPTS * timeout + 3  # max_attempts x request_timeout_s, not 20 s per request
    assert not (tmp_path / "scoring" / "done.json").exists()

    prepare_data(cfg, world, RunDir(tmp_path))  # the server answers again: the rerun finishes
    docs = list(read_jsonl(tmp_path / "scoring" / "input" / "world.jsonl"))
    assert len(rows(tmp_path / "scoring", "scored/*.jsonl.gz")) == len(docs)


def test_an_outage_of_the_llm_generator_stops_the_data_stage_without_rejects(tmp_path, server):
    server.outage = Outage(family="rephrase", kind="500")  # scoring and refusals are answered
    cfg = config(tmp_path, server.url, "data.interventions.generator=llm")
    world = world_for(cfg)
    with pytest.raises(ServerError, match=rf"{re.escape(server.url)} failed {ATTEMPTS} rephrase request"):
        prepare_data(cfg, world, RunDir(tmp_path))
    data = tmp_path / "data"
    assert (tmp_path / "scoring" / "done.json").is_file() and not (data / "done.json").exists()
    assert rows(data, "rejected/llm_rephrase/*.jsonl.gz") == []

    first = len(server.log)
    server.recover()
    prepare_data(cfg, world, RunDir(tmp_path))
    assert (data / "done.json").is_file()
    assert {r["family"] for r in server.log[first:]} <= {"rephrase", "refusal", "moral_ed"}  # no rescoring
    rephrased = rows(data, "streams/rephrased/*.jsonl.gz")
    failed = rows(data, "rejected/llm_rephrase/*.jsonl.gz")
    assert rephrased and not [r for r in failed if INFRA.match(r["reason"])]


# ---------------------------------------------------------------------------- units, no server


def _bounded(outcome, timeout: float = 5.0):
    """What `llm.bound_requests` makes of a datatrove request that returns or raises `outcome`."""

    async def send(payload: dict) -> dict:
        if outcome == "hang":
            await asyncio.sleep(60)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return asyncio.run(llm.bound_requests(send, timeout)({}))


class _Status(Exception):
    status_code = 429  # like the openai client's RateLimitError, which datatrove re-raises as a ConnectionError


def _from_openai_429() -> ConnectionError:
    try:
        raise ConnectionError("rate limited") from _Status()
    except ConnectionError as e:
        return e


@pytest.mark.parametrize(("outcome", "reason"), [
    (ServerError("Got InternalServerError from server: boom"), "http_500"),  # datatrove's raw post, HTTP 500
    (InferenceError(None, "Error http status 429"), "http_429"),
    (InferenceError(None, "Error http status 503"), "http_503"),
    (ConnectionRefusedError(111, "refused"), "connection_error"),
    (_from_openai_429(), "http_429"),
    (json.JSONDecodeError("Unterminated string", '{"choices', 9), "malformed_body"),
    ({"choices": []}, "malformed_body"),
    ({"object": "error"}, "malformed_body"),
])
def test_infrastructure_failures_become_outages(outcome, reason):
    with pytest.raises(llm.LLMOutage) as err:
        _bounded(outcome)
    assert err.value.reason == reason


def test_a_request_is_bounded_and_a_refused_request_stays_the_documents():
    t0 = time.monotonic()
    with pytest.raises(llm.LLMOutage, match="timeout"):
        _bounded("hang", timeout=0.2)
    assert time.monotonic() - t0 < 2
    bad = InferenceError(None, "Got BadRequestError from server: prompt too long")
    with pytest.raises(InferenceError) as err:
        _bounded(bad)
    assert err.value is bad  # datatrove caches it as the document's, and the rollout rejects it
    ok = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}], "usage": {}}
    assert _bounded(ok) is ok


class _RawPostServer(InferenceServer):
    """The request path of datatrove's vLLM and SGLang servers (`InferenceServer._make_request`: a raw HTTP post
    with no timeout of its own), pointed at the fake server instead of a process it started."""

    def __init__(self, url: str):
        super().__init__(InferenceConfig(server_type="vllm", model_name_or_path="fake"), rank=0)
        self.url = url

    async def start_server(self):
        return None

    async def monitor_health(self):
        return None

    def get_base_url(self) -> str:
        return self.url


def test_the_raw_post_of_vllm_and_sglang_servers_is_bounded(server):
    server.outage = Outage(kind="hang", hang_s=20)

    async def ask() -> float:
        request = llm.bound_requests(_RawPostServer(server.url.removesuffix("/v1"))._make_request, 0.5)
        t0 = time.monotonic()
        with pytest.raises(llm.LLMOutage, match="timeout"):
            await request({"messages": [{"role": "user", "content": "hello"}]})
        return time.monotonic() - t0

    assert asyncio.run(ask()) < 3 and len(server.log) == 1


def _rubric(answers: list, attempts: int = 3):
    """Run the rubric rollout on a one-chunk document whose requests get `answers` in turn (an exception is
    raised, a string is the answer text); (result or the exception raised, requests sent)."""
    rollout = llm.RubricRollout(LLMConfig(endpoint_url="http://127.0.0.1:1/v1", max_attempts=attempts,
                                          retry_backoff_s=0), seed=0, chunk_words=120)
    sent = []

    async def generate(payload: dict) -> InferenceResult:
        sent.append(payload["seed"])
        answer = answers[len(sent) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return InferenceResult(text=answer, finish_reason="stop", usage={})

    doc = Document(text="a short document to rate", id="doc-1")
    try:
        asyncio.run(rollout(doc, generate))
    except ServerError as e:
        return e, sent
    return doc.metadata, sent


def test_outages_are_retried_and_only_answers_are_judged():
    outage = llm.LLMOutage("http_500", "down")
    good = '{"score": 2, "reason": "mild"}'
    meta, sent = _rubric([outage, outage, good])  # two outages, then an answer: scored
    assert meta["outcome"] == "ok" and meta["harm_score"] == 2 and len(set(sent)) == 3
    meta, sent = _rubric(["no idea", outage, "still no idea", outage, outage, "nothing"])
    assert meta["outcome"] == "rejected" and meta["reject_reason"] == "unparsable_score"  # 3 answers judged
    assert len(sent) == 6
    err, sent = _rubric([outage, "no idea", outage, outage, outage])  # 3 outages in a row: no verdict
    assert isinstance(err, llm.LLMUnavailable) and "http://127.0.0.1:1/v1 failed 3 rubric request(s)" in str(err)
    meta, sent = _rubric([InferenceError(None, "Got BadRequestError from server: too long")])
    assert meta["reject_reason"] == "bad_request" and len(sent) == 1  # refused whatever the seed


def test_a_generator_pass_with_nothing_to_read_finishes_empty(tmp_path, server):
    server.always_fail = "User and an Assistant"  # every refusal dialogue is empty: all rejected, none to educate
    cfg = config(tmp_path, server.url, "data.interventions.generator=llm")
    prepare_data(cfg, world_for(cfg), RunDir(tmp_path))
    data = tmp_path / "data"
    refused = rows(data, "rejected/llm_refusal/*.jsonl.gz")
    assert refused and {r["reason"] for r in refused} == {"empty_output"}
    assert rows(data, "streams/moral_ed/*.jsonl.gz") == [] and (data / "done.json").is_file()
