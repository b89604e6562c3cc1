"""The LLM backend of the data stage against an OpenAI-compatible server on loopback (tests/llm_server.py):
datatrove's InferenceRunner with its `endpoint` server, through the real data stage, with injected faults.

    python -m pytest tests/test_llm_data.py -q
"""

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from llm_server import FakeLLM, Faults, respond

from safepretrain.config import ConfigError, load_config
from safepretrain.config.data import LLMConfig
from safepretrain.data import llm
from safepretrain.data.pipeline import sample_world_documents
from safepretrain.data.records import read_stream
from safepretrain.data.scoring import chunk_text
from safepretrain.run.checks import load_study
from safepretrain.run.study import prepare_data
from safepretrain.rundir import RunDir
from safepretrain.utils import read_jsonl
from safepretrain.world import world_for

ROOT = Path(__file__).parents[1]
# content failures only: an HTTP error or a malformed body is retried, never a reason (tests/test_faults_llm.py)
REASONS = {"empty_output", "leaked_prompt", "too_short", "too_long", "not_a_dialogue", "unparsable_score"}


def llm_config(run: Path, url: str, *extra: str):
    return load_config(str(ROOT / "configs" / "smoke.yaml"), [
        f"out_dir={run}", "world.max_docs_per_source=6", "data.tasks=2",
        "data.scorer.kind=[embedding,llm_rubric]", "data.interventions.generator=llm", f"data.llm.endpoint_url={url}",
        "data.llm.retry_backoff_s=0", "data.llm.max_concurrent=8", "data.llm.records_per_chunk=5",
        "data.scorer.max_label_examples=300", "data.scorer.degenerate_negatives=50", *extra])


def rejected_rows(folder: Path, name: str) -> list[dict]:
    return [r for p in sorted((folder / "rejected" / name).glob("*.jsonl.gz")) for r in read_jsonl(p)]


def scored_rows(folder: Path) -> list[dict]:
    return [r for p in sorted((folder / "scored").glob("*.jsonl.gz")) for r in read_jsonl(p)]


@pytest.fixture
def server():
    s = FakeLLM()
    yield s
    s.close()


@pytest.mark.slow
def test_every_document_is_written_or_rejected_with_a_reason_under_injected_faults(tmp_path, server):
    server.faults = Faults(latency_s=0.02, rate_429=0.08, rate_500=0.05, rate_malformed=0.05, rate_empty=0.05,
                           rate_leak=0.05)
    cfg = llm_config(tmp_path, server.url, "data.llm.max_attempts=6")  # 18% outages: none runs 6 in a row here
    world = world_for(cfg)
    sample = sample_world_documents(world, None, cfg.world.max_docs_per_source, cfg.data.seed)
    victim = next(d for d in sample if d["source"] == "organism_article")
    server.always_fail = " ".join(victim["text"].split()[:8])  # one document the LLM never answers
    data = prepare_data(cfg, world, RunDir(tmp_path)).folder

    scoring = tmp_path / "scoring"  # the scoring pass: every document read, scored once
    read = [r for r in read_jsonl(scoring / "input" / "world.jsonl")]
    scored, rubric_rejects = scored_rows(scoring), rejected_rows(scoring, "llm_rubric")
    assert len(scored) + len(rubric_rejects) == len(read)  # scored once, or set aside with its reason
    assert sorted(r["id"] for r in scored + rubric_rejects) == sorted(r["id"] for r in read)
    assert {"scores_by", "harm_score", "chunk_scores"} <= set(scored[0])
    assert all(r["harm_score"] >= r["scores_by"]["embedding"] for r in scored)  # max-ensemble
    assert all(r["harm_score"] >= r["scores_by"].get("llm_rubric", 0) for r in scored)

    streams = {s: read_stream(data, s) for s in ("safe", "val", "unsafe", "rephrased", "refusal", "moral_ed",
                                                 "tagged")}
    assert len(streams["safe"]) + len(streams["val"]) + len(streams["unsafe"]) == len(scored)
    unsafe = streams["unsafe"]
    lo, hi = cfg.data.routing.rephrase_scores
    to_rephrase = {r["id"].rsplit(":", 1)[0] for r in unsafe if lo <= r["routed_score"] <= hi}
    to_refuse = {r["id"].rsplit(":", 1)[0] for r in unsafe if r["routed_score"] >= cfg.data.routing.refusal_scores[0]}
    for stream, name, wanted in (("rephrased", "llm_rephrase", to_rephrase), ("refusal", "llm_refusal", to_refuse)):
        made = {r["id"].rsplit(":", 1)[0] for r in streams[stream]}
        failed = {r["id"].rsplit(":", 1)[0] for r in rejected_rows(data, name)}
        assert made | failed == wanted and not made & failed, stream
        assert len(streams[stream]) == len(made)  # one product per document
    dialogues = {r["id"].rsplit(":", 1)[0] for r in streams["refusal"]}
    moral = {r["id"].rsplit(":", 1)[0] for r in streams["moral_ed"]} | \
        {r["id"].rsplit(":", 1)[0] for r in rejected_rows(data, "llm_moral_ed")}
    assert moral == dialogues

    all_rejects = [r for f in (scoring, data) for p in (f / "rejected").rglob("*.jsonl.gz") for r in read_jsonl(p)]
    assert all_rejects and all(r["reason"] in REASONS for r in all_rejects)
    # the document the LLM never answers: its empty rubric answers are retried, then it is set aside
    assert [r["reason"] for r in rubric_rejects if r["id"] == victim["id"]] == ["unparsable_score"]
    statuses = Counter(r["status"] for r in server.log)
    assert statuses[429] and statuses[500]  # the faults were exercised, and survived
    for stream in ("rephrased", "refusal", "moral_ed"):
        for r in streams[stream]:
            assert llm.find_scaffolding(r["text"]) is None and r["text"].strip()
            assert r["stream"] == stream and r["source_id"]
    assert all(r["style"] in llm.prompts()["rephrase_styles"] for r in streams["rephrased"])
    roles = {tuple(line.split(":", 1)[0] for line in r["text"].splitlines()[:2]) for r in streams["refusal"]}
    assert len(roles) > 1  # speakers renamed with varied role pairs
    assert data.joinpath("shards").is_dir() and (data / "logs" / "llm_rephrase" / "stats.json").is_file()


KILL_RUN = """
import sys
from pathlib import Path
from safepretrain.config import load_config
from safepretrain.data.scoring import chunk_text
from safepretrain.run.study import prepare_data
from safepretrain.rundir import RunDir
from safepretrain.world import world_for
if __name__ == "__main__":
    run = Path(sys.argv[1])
    cfg = load_config(sys.argv[2], [f"out_dir={run}", *sys.argv[3:]])
    prepare_data(cfg, world_for(cfg), RunDir(run))
"""


def _run_stage(run: Path, url: str, kill_when=None) -> int:
    args = [f"out_dir={run}", "world.max_docs_per_source=6", "data.tasks=1", "data.scorer.kind=llm_rubric",
            f"data.llm.endpoint_url={url}", "data.llm.max_concurrent=2", "data.llm.records_per_chunk=4"]
    proc = subprocess.Popen([sys.executable, "-c", KILL_RUN, str(run), str(ROOT / "configs" / "smoke.yaml"), *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_when is None:
        return proc.wait(timeout=300)
    deadline = time.time() + 200
    while not kill_when() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def _finished_texts(data: Path) -> list[str]:
    """Documents the killed run had finished: in its checkpoint chunks or in closed output chunks."""
    ckpt = data / "llm_checkpoints" / "llm_rubric"
    texts = [json.loads(line)["text"] for p in ckpt.glob("00000/chunk_*.jsonl") for line in p.read_text().splitlines()
             if line.strip()]
    last = int((ckpt / "last_chunk" / "00000.txt").read_text())
    for k in range(last + 1):
        with gzip.open(data / "scored" / f"00000_chunk_{k}.jsonl.gz", "rt") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


@pytest.mark.slow
def test_a_killed_llm_pass_resumes_without_resending_requests_of_finished_documents(tmp_path, server):
    server.faults = Faults(latency_s=0.4)
    run = tmp_path / "killed"
    last_chunk = run / "scoring" / "llm_checkpoints" / "llm_rubric" / "last_chunk" / "00000.txt"
    assert _run_stage(run, server.url, kill_when=last_chunk.exists) == -signal.SIGKILL
    finished = _finished_texts(run / "scoring")
    assert finished
    assert _run_stage(run, server.url) == 0

    served = server.served()
    for text in finished:
        for chunk in chunk_text(text, 120):
            key = hashlib.sha256(llm.prompts()["rubric"].format(text=chunk).encode()).hexdigest()[:16]
            sent = sum(n for (k, _), n in served.items() if k == key)
            assert sent == 1, "a finished document was sent again after the resume"
    def rubric(text):  # what the server answers for a document: its deterministic score, max over chunks
        return max(json.loads(respond(llm.prompts()["rubric"].format(text=c)))["score"] for c in chunk_text(text, 120))

    resumed = scored_rows(run / "scoring")
    read = read_jsonl(run / "scoring" / "input" / "world.jsonl")
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in read)  # every document once
    assert all(r["harm_score"] == rubric(r["text"]) for r in resumed)  # with the score it was given
    assert sum(served.values()) < 1.5 * len(resumed)


def test_rubric_answers_are_parsed_or_refused():
    assert llm.parse_rubric('{"score": 4, "reason": "illegal activity"}') == (4, "illegal activity")
    assert llm.parse_rubric('Sure! {"score": "2", "reason": "mild"} hope this helps') == (2, "mild")
    assert llm.parse_rubric('3, "reason": "violence"}') == (3, "violence")  # continuation of the forced prefix
    assert llm.parse_rubric('"score": 5 and more') == (5, "")
    for bad in ("", "no idea", '{"score": 9}', '{"score": true}', '{"score": -1}'):
        assert llm.parse_rubric(bad) is None, bad


def test_generations_are_checked_for_emptiness_leaks_and_length():
    cfg = LLMConfig(min_output_words=5, max_output_ratio=2.0)
    ok = "a safe and friendly lesson about the subject for everyone"
    assert llm.check_generation(ok, 10, cfg) is None
    assert llm.check_generation("   ", 10, cfg) == "empty_output"
    assert llm.check_generation("Rewrite the text below for the audience " + ok, 10, cfg) == "leaked_prompt"
    assert llm.check_generation("too short", 10, cfg) == "too_short"
    assert llm.check_generation("word " * 300, 10, cfg) == "too_long"


def test_an_unreachable_endpoint_fails_fast_with_its_url():

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        llm.check_endpoint(LLMConfig(endpoint_url=url), timeout=2)
    assert llm.endpoint_base(url) == f"http://127.0.0.1:{port}"  # datatrove adds /v1 itself on loopback
    assert llm.endpoint_base("https://api.example.org/v1") == "https://api.example.org/v1"


def test_llm_settings_are_validated_at_start():
    with pytest.raises(ConfigError, match="endpoint_url"):
        load_config(str(ROOT / "configs" / "smoke.yaml"), ["data.interventions.generator=llm"])
    with pytest.raises(ConfigError, match="hf_model"):
        load_study(str(ROOT / "configs" / "smoke.yaml"), ["data.scorer.kind=hf_classifier"])
    with pytest.raises(ConfigError, match="endpoint_url"):
        load_study(str(ROOT / "configs" / "smoke.yaml"), ["data.scorer.kind=llm_rubric"])


@pytest.mark.slow
def test_one_scoring_pass_serves_a_routing_ablation_without_new_requests(tmp_path, server):
    base = ["world.max_docs_per_source=4", "data.tasks=1", "data.scorer.kind=llm_rubric",
            f"data.llm.endpoint_url={server.url}"]
    first = load_config(str(ROOT / "configs" / "smoke.yaml"), [f"out_dir={tmp_path / 'a'}", *base])
    world = world_for(first)
    a = prepare_data(first, world, RunDir(tmp_path / "a")).folder
    assert server.log and all(r["family"] == "rubric" for r in server.log)
    server.log.clear()
    reuse = f"data.scores_from={tmp_path / 'a' / 'scoring'}"
    ablation = load_config(str(ROOT / "configs" / "smoke.yaml"),
                           [f"out_dir={tmp_path / 'b'}", *base, "data.routing.tag_min_score=4", reuse])
    b = prepare_data(ablation, world, RunDir(tmp_path / "b")).folder
    assert server.log == [] and not (tmp_path / "b" / "scoring").exists()  # no rescoring: no request at all
    assert read_stream(a, "unsafe") == read_stream(b, "unsafe")  # the same scores route the same documents
    assert all(r["routed_score"] >= 4 for r in read_stream(b, "tagged"))
    assert len(read_stream(b, "tagged")) < len(read_stream(a, "tagged"))
    other = load_config(str(ROOT / "configs" / "smoke.yaml"),
                        [f"out_dir={tmp_path / 'c'}", *base, "data.scorer.chunk_words=60", reuse])
    with pytest.raises(ValueError, match="another world or scorer config"):
        prepare_data(other, world, RunDir(tmp_path / "c"))
